"""The data that flows through portwatch: kernel settings, sockets, snapshots, findings.

Standard library only. Everything here is immutable. The per-socket records
(:class:`Endpoint`, :class:`Socket`) are ``NamedTuple``\\ s rather than frozen
dataclasses: a busy host has hundreds of thousands of them per scan and a
NamedTuple is immutable, hashable and costs half as much to build. Everything
else is a frozen dataclass.

Addresses are strings in canonical form (``ipaddress`` ``compressed`` form);
IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``) are stored as their IPv4
form, so that a dual-stack socket and an IPv4 socket compare equal. Use
:func:`normalize_ip` to build them.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple, Protocol as TypingProtocol


class Protocol(str, enum.Enum):
    """Transport protocol of a socket."""

    TCP = "tcp"
    UDP = "udp"


class Family(str, enum.Enum):
    """Address family of a socket (as opened, before IPv4-mapped normalisation)."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"


class SocketState(str, enum.Enum):
    """Socket state, with the kernel's TCP state names.

    UDP sockets are ``ESTABLISHED`` when connected (they have a remote
    endpoint) and ``UNCONN`` otherwise, as ``ss`` shows them.
    """

    ESTABLISHED = "ESTABLISHED"
    SYN_SENT = "SYN_SENT"
    SYN_RECV = "SYN_RECV"
    FIN_WAIT1 = "FIN_WAIT1"
    FIN_WAIT2 = "FIN_WAIT2"
    TIME_WAIT = "TIME_WAIT"
    CLOSE = "CLOSE"
    CLOSE_WAIT = "CLOSE_WAIT"
    LAST_ACK = "LAST_ACK"
    LISTEN = "LISTEN"
    CLOSING = "CLOSING"
    NEW_SYN_RECV = "NEW_SYN_RECV"
    UNCONN = "UNCONN"


#: Kernel TCP state numbers (include/net/tcp_states.h) to :class:`SocketState`.
KERNEL_TCP_STATES: Mapping[int, SocketState] = {
    1: SocketState.ESTABLISHED,
    2: SocketState.SYN_SENT,
    3: SocketState.SYN_RECV,
    4: SocketState.FIN_WAIT1,
    5: SocketState.FIN_WAIT2,
    6: SocketState.TIME_WAIT,
    7: SocketState.CLOSE,
    8: SocketState.CLOSE_WAIT,
    9: SocketState.LAST_ACK,
    10: SocketState.LISTEN,
    11: SocketState.CLOSING,
    12: SocketState.NEW_SYN_RECV,
}


class Severity(str, enum.Enum):
    """How bad a finding is. Ordered: ``info < warning < critical``."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for info, 1 for warning, 2 for critical."""
        return _SEVERITY_RANK[self]

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank >= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank > other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank <= other.rank

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank < other.rank


_SEVERITY_RANK: Mapping[Severity, int] = {
    Severity.INFO: 0,
    Severity.WARNING: 1,
    Severity.CRITICAL: 2,
}


class Kind(str, enum.Enum):
    """The kinds of finding (see DESIGN.md)."""

    SELF_CONNECT = "self_connect"
    LOOP_PAIR = "loop_pair"
    LISTENER_IN_EPHEMERAL_RANGE = "listener_in_ephemeral_range"
    PORT_TAKEN = "port_taken"
    SERVICE_PORT_AT_RISK = "service_port_at_risk"
    EPHEMERAL_EXHAUSTION = "ephemeral_exhaustion"
    CLOSE_WAIT_BUILDUP = "close_wait_buildup"
    RANGE_MISCONFIGURED = "range_misconfigured"


class Endpoint(NamedTuple):
    """One end of a socket: a canonical address string and a port (0 = none)."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


class Socket(NamedTuple):
    """One inet socket as the kernel reports it.

    ``remote`` is ``None`` for listeners and unconnected UDP sockets.
    ``inode`` identifies the socket for attribution: the kernel's socket inode
    where the source can see it, else a negative number unique within one
    snapshot (the psutil source). ``uid`` is the owning user id where the
    source reports it, else ``None``.
    """

    protocol: Protocol
    family: Family
    state: SocketState
    local: Endpoint
    remote: Endpoint | None
    inode: int
    uid: int | None = None

    @property
    def is_listener(self) -> bool:
        """True for a TCP listener or an unconnected (bound) UDP socket."""
        if self.protocol is Protocol.TCP:
            return self.state is SocketState.LISTEN
        return self.remote is None

    def describe(self) -> str:
        """A short human form: ``tcp 127.0.0.1:40001 -> 127.0.0.1:8080 ESTABLISHED``."""
        remote = f" -> {self.remote}" if self.remote is not None else ""
        return f"{self.protocol.value} {self.local}{remote} {self.state.value}"


@dataclass(frozen=True)
class PortRange:
    """An inclusive port range, ``low <= high``."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    @property
    def size(self) -> int:
        """Number of ports in the range."""
        return self.high - self.low + 1

    def __str__(self) -> str:
        return f"{self.low}-{self.high}" if self.low != self.high else str(self.low)


@dataclass(frozen=True)
class KernelSettings:
    """The per-network-namespace sysctls that decide which ports connect() may pick.

    ``reserved`` holds every port of ``ip_local_reserved_ports`` (not only those
    inside the range).
    """

    port_range: PortRange
    reserved: frozenset[int] = frozenset()
    unprivileged_port_start: int = 1024

    @property
    def usable_ports(self) -> int:
        """Ports connect() may pick: the range minus the reserved ports inside it."""
        low, high = self.port_range.low, self.port_range.high
        inside = sum(1 for p in self.reserved if low <= p <= high)
        return self.port_range.size - inside

    def is_ephemeral(self, port: int) -> bool:
        """True if connect() may pick ``port``: inside the range and not reserved."""
        return port in self.port_range and port not in self.reserved


@dataclass(frozen=True)
class ProcessInfo:
    """A process that owns a socket.

    ``gone`` is True when the process exited between finding its socket and
    describing it; then only ``pid`` (and whatever was read before) is known.
    Fields the privileges did not allow reading are ``None`` (or empty).
    """

    pid: int
    name: str | None = None
    cmdline: tuple[str, ...] = ()
    user: str | None = None
    unit: str | None = None
    gone: bool = False

    def label(self) -> str:
        """``name[pid]``, or ``pid N`` when the name is unknown."""
        return f"{self.name}[{self.pid}]" if self.name else f"pid {self.pid}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape documented in the README)."""
        return {
            "pid": self.pid,
            "name": self.name,
            "cmdline": list(self.cmdline),
            "user": self.user,
            "unit": self.unit,
            "gone": self.gone,
        }


@dataclass(frozen=True)
class Snapshot:
    """Everything one scan saw.

    ``sockets`` is every inet socket of the namespace. ``owners`` maps a
    socket's ``inode`` to the pids holding it, for those sockets whose owners
    are known (all of them with the psutil source, only those that were asked
    for with lazy attribution). ``processes`` describes those pids.
    ``taken_at`` is a Unix timestamp. ``notes`` are things a reader must know
    to trust the result (e.g. "attribution is partial: not running as root").
    """

    settings: KernelSettings
    sockets: tuple[Socket, ...]
    taken_at: float = 0.0
    owners: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    processes: Mapping[int, ProcessInfo] = field(default_factory=dict)
    source: str = "unknown"
    notes: tuple[str, ...] = ()

    def processes_of(self, sock: Socket) -> tuple[ProcessInfo, ...]:
        """The known owners of ``sock`` (empty when unknown)."""
        pids = self.owners.get(sock.inode, ())
        return tuple(self.processes.get(pid, ProcessInfo(pid=pid)) for pid in pids)


@dataclass(frozen=True)
class Finding:
    """One problem, explained.

    ``key`` is stable across scans for the same problem (kind plus the tuple it
    is about) and is what history and alerting track. ``port`` is the port the
    finding is about, where there is one. ``details`` holds kind-specific
    figures (e.g. ``ratio``, ``count``, ``threshold``), JSON-ready.
    """

    kind: Kind
    severity: Severity
    key: str
    summary: str
    port: int | None = None
    protocol: Protocol | None = None
    addresses: tuple[str, ...] = ()
    sockets: tuple[Socket, ...] = ()
    processes: tuple[ProcessInfo, ...] = ()
    remediation: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape documented in the README)."""
        return {
            "kind": self.kind.value,
            "severity": self.severity.value,
            "key": self.key,
            "summary": self.summary,
            "port": self.port,
            "protocol": self.protocol.value if self.protocol else None,
            "addresses": list(self.addresses),
            "sockets": [socket_to_dict(s) for s in self.sockets],
            "processes": [p.to_dict() for p in self.processes],
            "remediation": self.remediation,
            "details": dict(self.details),
        }


def socket_to_dict(sock: Socket) -> dict[str, Any]:
    """A JSON-ready dict of one socket."""
    return {
        "protocol": sock.protocol.value,
        "family": sock.family.value,
        "state": sock.state.value,
        "local": {"ip": sock.local.ip, "port": sock.local.port},
        "remote": (
            {"ip": sock.remote.ip, "port": sock.remote.port} if sock.remote is not None else None
        ),
        "inode": sock.inode,
        "uid": sock.uid,
    }


_MAPPED_PREFIX = "::ffff:"


def normalize_ip(ip: str) -> str:
    """Canonical form of an address string; IPv4-mapped IPv6 becomes IPv4.

    Takes any textual IPv4 or IPv6 address (a ``%zone`` suffix is dropped).
    Returns the ``compressed`` form. Raises ``ValueError`` for text that is not
    an address.
    """
    if "%" in ip:
        ip = ip.split("%", 1)[0]
    if ":" not in ip:
        return str(ipaddress.IPv4Address(ip))
    addr = ipaddress.IPv6Address(ip)
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return addr.compressed


WILDCARDS: frozenset[str] = frozenset({"0.0.0.0", "::"})


def is_wildcard(ip: str) -> bool:
    """True for the any-address of either family."""
    return ip in WILDCARDS


@dataclass(frozen=True)
class SocketTable:
    """What a socket source read: every inet socket, and the owners it happened to learn.

    ``owners`` maps ``Socket.inode`` to owning pids; it is empty for sources
    that cannot tell (netlink), complete for those that walk processes anyway
    (psutil).
    """

    sockets: tuple[Socket, ...]
    owners: Mapping[int, tuple[int, ...]] = field(default_factory=dict)


class SourceUnavailable(Exception):
    """A socket source cannot work on this host (e.g. no NETLINK_SOCK_DIAG); use another."""


class SocketSource(TypingProtocol):
    """Something that reads the namespace's socket table.

    ``read()`` returns a :class:`SocketTable`. It raises
    :class:`SourceUnavailable` when the mechanism is missing on this host and
    ``OSError`` (or a subclass of ``ValueError`` for malformed kernel data) for
    other failures of one read.
    """

    @property
    def name(self) -> str:
        """A short name of the mechanism (``netlink``, ``psutil``), shown in reports."""
        ...

    def read(self) -> SocketTable:
        """Read every TCP and UDP, IPv4 and IPv6 socket of the current network namespace."""
        ...


def format_port_set(ports: Iterable[int]) -> str:
    """Ports in ``ip_local_reserved_ports`` syntax: sorted, runs collapsed (``80,8080-8082``).

    Takes any collection of ints; returns ``""`` for an empty one.
    """
    ordered = sorted(set(ports))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
