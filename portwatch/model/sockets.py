"""Sockets as the kernel reports them: protocol, family, state, endpoints; socket tables and sources.

Addresses are strings in canonical form (``ipaddress`` ``compressed`` form);
IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``) are stored as their IPv4
form, so that a dual-stack socket and an IPv4 socket compare equal. Use
:func:`normalize_ip` to build them. The per-socket records are ``NamedTuple``\\ s:
a busy host has hundreds of thousands of them per scan and a NamedTuple is
immutable, hashable and costs half as much to build as a frozen dataclass.
"""

from __future__ import annotations

import enum
import ipaddress
from portwatch.model.records import NamedTuple, Protocol as TypingProtocol, dataclass, field

from portwatch.model.text import host_port

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping


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


class Endpoint(NamedTuple):
    """One end of a socket: a canonical address string and a port (0 = none)."""

    ip: str
    port: int

    def __str__(self) -> str:
        return host_port(self.ip, self.port)


class Socket(NamedTuple):
    """One inet socket as the kernel reports it.

    ``remote`` is ``None`` for listeners and unconnected UDP sockets.
    ``inode`` identifies the socket for attribution: the kernel's socket inode
    where the source can see it, else a negative number unique within one
    snapshot (the psutil source). ``uid`` is the owning user id where the
    source reports it, else ``None``. ``cgroup_id`` is the cgroup v2 id
    (``INET_DIAG_CGROUP_ID``: the inode of the cgroup directory the creating
    process was in at ``socket()`` time) where the source reports it (netlink
    on Linux 5.8+, full sockets only), else ``None``.
    """

    protocol: Protocol
    family: Family
    state: SocketState
    local: Endpoint
    remote: Endpoint | None
    inode: int
    uid: int | None = None
    cgroup_id: int | None = None

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
