"""What every detector shares: the detector declaration, finding construction and wording, the socket index.

The bottom of :mod:`portwatch.detect`: the modules of the finding kinds
(``self_connect``, ``loop_pair``, ...) import this one; it imports none of
them, nor the registry or the loop. It may import :mod:`portwatch.model`,
the configuration types (:mod:`portwatch.config`) and the standard
library's pure modules; no I/O, no clock, no logging.

A finding kind's module declares one :class:`Detector`: its kind, default
severity, alert name, the owners it needs before detection, how it finds,
how it words its summary, and which processes a finding involves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from portwatch.model.records import dataclass, replace

# Re-exported: the detectors take the configuration type from here, so that
# this is the one module of the kinds' side that imports the config package.
from portwatch.config.types import Config as Config
from portwatch.model import (
    Destination,
    Finding,
    KernelSettings,
    Kind,
    Listening,
    ProcessInfo,
    Protocol,
    RememberedPort,
    Severity,
    Snapshot,
    Socket,
    SocketState,
    format_port_set,
    is_wildcard,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Collection, Iterable, Mapping

#: States in which a socket no longer belongs to any process (kernel mini
#: sockets): never a holder, never a self-connect worth reporting.
ORPHAN_STATES = frozenset({SocketState.TIME_WAIT, SocketState.NEW_SYN_RECV})

#: At most this many sockets are kept as examples in one finding (exhaustion
#: and CLOSE_WAIT findings can involve thousands); ``details["sockets_total"]``
#: has the full count. Processes are attributed from these examples.
MAX_EXAMPLE_SOCKETS = 32

SYSCTL_RESERVED = "net.ipv4.ip_local_reserved_ports"
SYSCTL_RANGE = "net.ipv4.ip_local_port_range"


# --------------------------------------------------------------------------- socket index


@dataclass(frozen=True)
class SocketIndex:
    """What several detectors look for in the socket table, gathered in one pass.

    ``listening``: listeners (TCP LISTEN, unconnected UDP) by (protocol,
    port), port 0 left out; ``close_wait``: the CLOSE_WAIT sockets;
    ``self_connected``: the sockets whose local endpoint equals their remote
    one. Valid for every snapshot with the same ``sockets``.
    """

    listening: dict[tuple[Protocol, int], list[Socket]]
    close_wait: list[Socket]
    self_connected: list[Socket]


def index(snapshot: Snapshot) -> SocketIndex:
    """The :class:`SocketIndex` of ``snapshot``'s sockets (one pass over them)."""
    listening: dict[tuple[Protocol, int], list[Socket]] = defaultdict(list)
    close_wait: list[Socket] = []
    self_connected: list[Socket] = []
    listen, udp, cw = SocketState.LISTEN, Protocol.UDP, SocketState.CLOSE_WAIT
    for s in snapshot.sockets:
        state = s.state
        remote = s.remote
        if remote is None:
            # Socket.is_listener, inlined: this runs over every socket.
            if (state is listen or s.protocol is udp) and s.local.port:
                listening[(s.protocol, s.local.port)].append(s)
        elif state is cw:
            close_wait.append(s)
        elif remote == s.local:
            self_connected.append(s)
    # (a CLOSE_WAIT self-connect is left to the CLOSE_WAIT count: it is closing)
    return SocketIndex(dict(listening), close_wait, self_connected)


def listeners(snapshot: Snapshot) -> dict[tuple[Protocol, int], list[Socket]]:
    """Listeners (TCP LISTEN, unconnected UDP) by (protocol, port); port 0 left out."""
    return index(snapshot).listening


def tcp_listen_ports(listening: Listening) -> set[int]:
    """Ports with a TCP listener: their accepted connections take no ephemeral port."""
    return {port for (proto, port) in listening if proto is Protocol.TCP}


def covers(listener_ip: str, ip: str | None) -> bool:
    """True if a listener bound to ``listener_ip`` serves address ``ip`` (None = any)."""
    return ip is None or is_wildcard(listener_ip) or listener_ip == ip


def by_protocol_and_port(item: tuple[tuple[Protocol, int], object]) -> tuple[str, int]:
    """Sort key of a ``((protocol, port), value)`` item: protocol name, then port."""
    (protocol, port), _value = item
    return protocol.value, port


# --------------------------------------------------------------------------- wording


def configured_severity(kind: Kind, default: Severity, config: Config | None) -> Severity:
    """The severity of ``kind``'s findings: ``config.severities``' override, else ``default``."""
    return config.severities.get(kind, default) if config is not None else default


def with_configured_severities(findings: list[Finding], config: Config) -> list[Finding]:
    """``findings`` with ``config.severities``' override of each one's kind (``findings`` itself without any)."""
    if not config.severities:
        return findings
    return [replace(f, severity=config.severities.get(f.kind, f.severity)) for f in findings]


def who(processes: tuple[ProcessInfo, ...]) -> str:
    """``a[1], b[2]`` or ``owner unknown``."""
    if not processes:
        return "owner unknown"
    labels = [p.label() + (" (exited)" if p.gone else "") for p in processes[:5]]
    more = f" and {len(processes) - 5} more" if len(processes) > 5 else ""
    return ", ".join(labels) + more


def reserve_hint(settings: KernelSettings, ports: Iterable[int]) -> str:
    """The sysctl line that reserves ``ports`` on top of what is reserved already."""
    merged = format_port_set(set(settings.reserved) | set(ports))
    return (
        f"reserve it: `sysctl -w {SYSCTL_RESERVED}={merged}` and persist "
        f"`{SYSCTL_RESERVED} = {merged}` in /etc/sysctl.d/ (or `portwatch reserve`)"
    )


def move_or_reserve_hint(settings: KernelSettings, port: int, what: str = "the service") -> str:
    """``move WHAT to a port outside RANGE, or reserve it: ...``: the remediation of a port inside the range."""
    return f"move {what} to a port outside {settings.port_range}, or " + reserve_hint(settings, [port])


def protocol_upper(finding: Finding) -> str:
    """``TCP``, ``UDP``, or empty when the finding has no protocol."""
    return finding.protocol.value.upper() if finding.protocol else ""


def port_slash_protocol(finding: Finding) -> str:
    """``40100/tcp`` (the protocol left empty when the finding has none)."""
    return f"{finding.port}/{finding.protocol.value if finding.protocol else ''}"


# --------------------------------------------------------------------------- the processes a finding involves


def socket_owners(finding: Finding, snapshot: Snapshot) -> tuple[ProcessInfo, ...]:
    """The distinct known owners of ``finding``'s sockets in ``snapshot``, ordered by pid."""
    found: dict[int, ProcessInfo] = {}
    for s in finding.sockets:
        for p in snapshot.processes_of(s):
            found.setdefault(p.pid, p)
    return tuple(found[pid] for pid in sorted(found))


def no_owners_needed(snapshot: Snapshot, config: Config, idx: SocketIndex) -> set[int]:
    """The owners most detectors need before detection: none."""
    return set()


# --------------------------------------------------------------------------- the declaration


@dataclass(frozen=True)
class DetectionInput:
    """Everything a detector may look at in one scan.

    ``snapshot``: the socket table and kernel settings; ``config``:
    services, thresholds; ``remembered``: the ports of earlier scans'
    listeners; ``usage``: sockets per destination (see
    ``destination_usage``); ``index``: :func:`index` of the snapshot.
    """

    snapshot: Snapshot
    config: Config
    remembered: Collection[RememberedPort]
    usage: Mapping[Destination, int]
    index: SocketIndex


#: ``(snapshot, config, listening) -> findings``: a kind that looks at the listeners only.
ListeningFinder = Callable[[Snapshot, Config, Listening], list[Finding]]


def on_listening(find: ListeningFinder) -> Callable[[DetectionInput], list[Finding]]:
    """A detector's ``find`` calling ``find`` with the scan's snapshot, configuration and listeners."""
    def find_in(inp: DetectionInput) -> list[Finding]:
        return find(inp.snapshot, inp.config, inp.index.listening)
    return find_in


#: ``(finding, processes) -> summary``: the one-line summary naming ``processes``.
Summarize = Callable[[Finding, tuple[ProcessInfo, ...]], str]
#: ``(finding, snapshot) -> processes``: whom the finding involves, with what ``snapshot`` knows.
Involves = Callable[[Finding, Snapshot], tuple[ProcessInfo, ...]]
#: ``(snapshot, config, index) -> inodes`` whose owners detection needs before it runs.
OwnersNeeded = Callable[[Snapshot, Config, SocketIndex], set[int]]


@dataclass(frozen=True)
class Detector:
    """One finding kind, declared once.

    ``kind``: the :class:`~portwatch.model.Kind` it reports; ``severity``:
    its default severity (before configuration overrides; a detector may
    pick another per finding); ``alertname``: the Alertmanager
    ``alertname`` label of its alerts; ``find``: its findings of one scan
    (processes filled from the owners the snapshot knows); ``summarize``:
    the summary of a finding naming given processes; ``involves``: the
    processes a finding involves in a snapshot, or None when the kind
    involves no process (its findings are then never re-explained);
    ``owners_needed``: the inodes whose owners ``find`` needs.
    """

    kind: Kind
    severity: Severity
    alertname: str
    find: Callable[[DetectionInput], list[Finding]]
    summarize: Summarize
    involves: Involves | None = socket_owners
    owners_needed: OwnersNeeded = no_owners_needed

    def explain(self, finding: Finding, snapshot: Snapshot) -> Finding:
        """``finding`` with the processes it involves in ``snapshot`` and the summary naming them."""
        if self.involves is None:
            return finding
        processes = self.involves(finding, snapshot)
        return replace(finding, processes=processes, summary=self.summarize(finding, processes))

    def make(
        self,
        key: str,
        snapshot: Snapshot,
        sockets: tuple[Socket, ...],
        details: dict[str, object],
        *,
        severity: Severity | None = None,
        port: int | None = None,
        protocol: Protocol | None = None,
        remediation: str | None = None,
    ) -> Finding:
        """A finding of this kind about ``sockets``, its processes and summary filled from ``snapshot``.

        ``addresses`` are the sockets' local and remote addresses; ``severity``
        defaults to :attr:`severity`.
        """
        addresses = tuple(sorted({s.local.ip for s in sockets} | {s.remote.ip for s in sockets if s.remote}))
        finding = Finding(
            kind=self.kind,
            severity=severity or self.severity,
            key=key,
            summary="",
            port=port,
            protocol=protocol,
            addresses=addresses,
            sockets=sockets,
            remediation=remediation,
            details=details,
        )
        return self.explain(finding, snapshot)


def no_scan_findings(inp: DetectionInput) -> list[Finding]:
    """The ``find`` of an event kind: its findings come from events, never from a scan."""
    return []


def event_detector(kind: Kind, severity: Severity, alertname: str, summarize: Summarize) -> Detector:
    """The declaration of an event kind (``connect_failed``, ``bind_failed``).

    Its ``find`` yields nothing in a scan (a function of its module makes
    its findings from events) and its findings are never re-explained
    (``involves`` None): they name the processes of the events.
    """
    return Detector(kind=kind, severity=severity, alertname=alertname, find=no_scan_findings,
                    summarize=summarize, involves=None)
