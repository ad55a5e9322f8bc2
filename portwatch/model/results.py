"""What one scan produced: the snapshot, the findings kept and ignored, destination usage; per namespace."""

from __future__ import annotations

from portwatch.model.records import dataclass, field

from portwatch.model.findings import Finding
from portwatch.model.namespaces import NamespaceInfo
from portwatch.model.snapshot import Destination, Listening, Snapshot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping


@dataclass(frozen=True)
class ScanResult:
    """What one scan found.

    ``findings`` are those the ignore rules kept, most severe first;
    ``ignored`` those they dropped. ``usage`` is the per-destination count of
    sockets on usable ephemeral ports (for the top-K metric); ``listening``
    the listeners by (protocol, port) (what the daemon remembers). ``duration`` is
    in seconds, from the monotonic clock given to :func:`run_scan`.
    """

    snapshot: Snapshot
    findings: tuple[Finding, ...]
    ignored: tuple[Finding, ...]
    usage: Mapping[Destination, int]
    duration: float
    listening: Listening = field(default_factory=dict)

    def top_destinations(self, k: int) -> list[tuple[Destination, int, float]]:
        """The ``k`` destinations using most ephemeral ports: (destination, count, ratio of usable)."""
        usable = self.snapshot.settings.usable_ports
        ranked = sorted(self.usage.items(), key=lambda kv: (-kv[1], kv[0]))[: max(k, 0)]
        return [(dest, n, (n / usable) if usable > 0 else 1.0) for dest, n in ranked]


@dataclass(frozen=True)
class NamespacesResult:
    """What one scan of several network namespaces found (``portwatch scan -A`` / ``--netns``).

    ``results`` holds one :class:`ScanResult` per namespace read, in the
    order scanned (the host namespace first); each one's
    ``snapshot.namespace`` says which. ``skipped`` are the namespaces that
    could not be read (denied, failed; those that vanished are left out
    quietly), ``notes`` what the reader must know (one line per such
    namespace, and the discovery's notes, e.g. that only the own namespace
    could be scanned). ``duration`` covers the whole pass, in seconds.
    ``left_out``: the inodes of the namespaces found but not selected (the
    daemon's ``namespaces.include``/``exclude``): their failed calls are not
    reported either.
    """

    results: tuple[ScanResult, ...]
    notes: tuple[str, ...] = ()
    skipped: tuple[NamespaceInfo, ...] = ()
    duration: float = 0.0
    left_out: tuple[int, ...] = ()

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Every namespace's kept findings, namespace by namespace."""
        return tuple(f for r in self.results for f in r.findings)

    @property
    def ignored(self) -> tuple[Finding, ...]:
        """Every namespace's ignored findings."""
        return tuple(f for r in self.results for f in r.ignored)
