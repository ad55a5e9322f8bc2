"""What one scan produced: the snapshot, the findings kept and ignored, destination usage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from portwatch.model.findings import Finding
from portwatch.model.snapshot import Destination, Listening, Snapshot


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
