"""The loop over the registry: detect, owners needed, explain, sort, ignore.

The top of :mod:`portwatch.detect`: imports :mod:`portwatch.detect.registry`,
:mod:`portwatch.detect.base`, :mod:`portwatch.detect.ephemeral_exhaustion`
(for the usage it computes), :mod:`portwatch.model` and the configuration
types; nothing imports it but the package's ``__init__``. Pure: no I/O,
no clock, no logging.
"""

from __future__ import annotations

from portwatch.model.records import Protocol as TypingProtocol, replace

from portwatch.config.types import Config, IgnoreRule, ignore_matches
from portwatch.detect.base import DetectionInput, SocketIndex, index, with_configured_severities
from portwatch.detect.ephemeral_exhaustion import destination_usage
from portwatch.detect.registry import REGISTRY, Registry
from portwatch.model import (
    Destination,
    Finding,
    Listening,
    NamespaceInfo,
    NamespaceKind,
    Protocol,
    RememberedPort,
    ScanResult,
    Snapshot,
)
from portwatch.model.failures import DEFAULT_FAILURE_WINDOW, FailureEvent

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Collection, Iterable, Mapping, Sequence


def detect(
    snapshot: Snapshot,
    config: Config,
    remembered: Collection[RememberedPort] = (),
    usage: Mapping[Destination, int] | None = None,
    idx: SocketIndex | None = None,
    registry: Registry = REGISTRY,
) -> list[Finding]:
    """Every finding of ``snapshot``, before ignore rules, sorted by severity then key.

    Takes the snapshot, the configuration (services, thresholds, severity
    overrides), the ports remembered from earlier scans' listeners, and the
    per-destination usage and the socket index if the caller computed them
    already (:func:`destination_usage`, :func:`index`), and the detectors to
    run (every kind by default). Processes are filled from what the
    snapshot's owners already cover; see :func:`explain`.
    """
    if idx is None:
        idx = index(snapshot)
    if usage is None:
        usage = destination_usage(snapshot, idx.listening)
    inp = DetectionInput(snapshot, config, remembered, usage, idx)
    findings: list[Finding] = []
    for detector in registry:
        findings += detector.find(inp)
    return sort_findings(with_configured_severities(findings, config))


def owners_needed(snapshot: Snapshot, config: Config, idx: SocketIndex | None = None,
                  registry: Registry = REGISTRY) -> set[int]:
    """Inodes whose owners :func:`detect` needs before it runs: what any detector of ``registry`` needs.

    Today only CLOSE_WAIT sockets, and only when there are more of them in
    total than one process may hold (else no process can cross the threshold).
    """
    if idx is None:
        idx = index(snapshot)
    needed: set[int] = set()
    for detector in registry:
        needed |= detector.owners_needed(snapshot, config, idx)
    return needed


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first, then by kind and key (a stable, readable order)."""
    return sorted(findings, key=lambda f: (-f.severity.rank, f.kind.value, f.key))


def involved_inodes(findings: Iterable[Finding]) -> set[int]:
    """Inodes of every socket the findings involve (to attribute before :func:`explain`)."""
    return {s.inode for f in findings for s in f.sockets}


def in_namespace(findings: Iterable[Finding], namespace_key: str | None) -> list[Finding]:
    """``findings`` keyed for the network namespace whose stable key is ``namespace_key``.

    ``None`` (the host namespace, or a scan of the own namespace only)
    leaves every key as it is; otherwise each key gets ``@`` and the
    namespace's key appended (``self_connect:tcp:127.0.0.1:40005@blue``), so
    equal findings in two namespaces differ and survive a restart of
    portwatch when the namespace's key does.
    """
    if namespace_key is None:
        return list(findings)
    return [replace(f, key=f"{f.key}@{namespace_key}") for f in findings]


def explain_one(finding: Finding, snapshot: Snapshot, registry: Registry = REGISTRY) -> Finding:
    """``finding`` with processes and summary from the owners ``snapshot`` knows.

    Its kind's detector says which processes it involves; raises KeyError for
    a kind ``registry`` does not hold.
    """
    return registry.get(finding.kind).explain(finding, snapshot)


def explain(findings: Iterable[Finding], snapshot: Snapshot, registry: Registry = REGISTRY) -> list[Finding]:
    """Every finding re-explained with the owners ``snapshot`` knows (see :func:`explain_one`)."""
    return [explain_one(f, snapshot, registry) for f in findings]


def apply_ignores(findings: Iterable[Finding], rules: Collection[IgnoreRule],
                  matches: Callable[[IgnoreRule, Finding], bool] = ignore_matches,
                  ) -> tuple[list[Finding], list[Finding]]:
    """Split findings into (kept, ignored) by the configuration's ignore rules."""
    kept: list[Finding] = []
    ignored: list[Finding] = []
    for f in findings:
        (ignored if any(matches(rule, f) for rule in rules) else kept).append(f)
    return kept, ignored


def listening_ports(listening: Listening) -> set[RememberedPort]:
    """The (protocol, port) of every TCP listener in ``listening`` (:attr:`SocketIndex.listening`).

    What the daemon remembers for ``port_taken``. Only TCP: an unconnected UDP
    socket is as often a client's random source port (used with sendto()) as
    a service, and remembering those would turn every later reuse of the port
    into a finding. UDP services are covered when declared.
    """
    return {RememberedPort(p, port) for (p, port) in listening if p is Protocol.TCP}


class FailureFinder(TypingProtocol):
    """What turns one namespace's failure events into findings (:func:`~portwatch.detect.find_connect_failures`)."""

    def __call__(self, events: Iterable[FailureEvent], result: ScanResult | None = None, *,
                 namespace: NamespaceInfo | None = None, config: Config | None = None,
                 window: float = DEFAULT_FAILURE_WINDOW) -> list[Finding]: ...


def failure_findings(events: Iterable[FailureEvent], results_by_inode: Mapping[int, ScanResult],
                     config: Config, window: float = DEFAULT_FAILURE_WINDOW, *,
                     finders: Sequence[FailureFinder]) -> list[Finding]:
    """The failure findings of ``events`` (``connect_failed``, ``bind_failed``), ignore rules applied, sorted.

    Takes the failure events of the window (any namespace), the latest
    pass's result of each network namespace by its inode, the configuration
    (severities, ignore rules), the window's length (seconds, for the
    wording) and the detectors of the failure kinds
    (:data:`~portwatch.detect.FAILURE_FINDERS`; the kinds' modules sit beside
    this one, not below it). Events are grouped by their caller's namespace
    (``netns_inode``); each group is detected with that namespace's result,
    so the findings link its exhaustion and ``port_taken`` findings and are
    keyed like its scan's. A namespace no result covers is named
    ``netns:INODE`` (a namespace created since the pass, or not selected);
    an event whose process was gone before its namespace was read (inode
    ``None``) has no namespace. Returns the kept findings. Pure.
    """
    groups: dict[int | None, list[FailureEvent]] = {}
    for e in events:
        groups.setdefault(e.netns_inode, []).append(e)
    found: list[Finding] = []
    for inode, group in groups.items():
        result = results_by_inode.get(inode) if inode is not None else None
        namespace = None
        if result is None and inode is not None:
            namespace = NamespaceInfo(inode, 0, NamespaceKind.PROCESS, f"netns:{inode}", stable=False)
        for find in finders:
            found += find(group, result, namespace=namespace, config=config, window=window)
    kept, _ignored = apply_ignores(found, config.ignore)
    return sort_findings(kept)
