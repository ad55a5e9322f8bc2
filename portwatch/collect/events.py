"""The sock_diag socket-destroy listener: every inet socket the kernel frees, as a :class:`DestroyEvent`.

Job: :func:`open_destroy_socket` (the default socket factory: a
``NETLINK_SOCK_DIAG`` socket; events are per network namespace, so a caller
that watches another namespace makes the socket in a thread inside it, and the
socket keeps that namespace's events after the thread ends),
:class:`DestroyListener` (joins the four destroy groups ``ss -E`` joins, sizes
its receive buffer, reads non-blocking batches, counts ENOBUFS) and
:func:`parse_destroy_events`, the pure parser of one receive buffer (public so
that tests can feed it crafted bytes). May import the standard library,
:mod:`portwatch.model` and the wire constants of
:mod:`portwatch.collect.netlink`.

Wire layout of one event (``include/uapi/linux/sock_diag.h``, ``inet_diag.h``)::

    struct nlmsghdr      { u32 len; u16 type (SOCK_DIAG_BY_FAMILY); u16 flags; u32 seq; u32 pid; }
    struct inet_diag_msg { u8 family, state, timer, retrans; be16 sport, dport;
                           be32 src[4], dst[4]; u32 if; u32 cookie[2];
                           u32 expires, rqueue, wqueue, uid, inode; }        72 bytes
    struct nlattr        { u16 len; u16 type; } + payload, 4-byte aligned:
        INET_DIAG_INFO (2): struct tcp_info (TCP only)
        INET_DIAG_PROTOCOL (10): u8 IPPROTO_TCP / IPPROTO_UDP

Cost: one ``recv_into`` and one ``struct`` unpack per event, a few
microseconds (``benchmarks/run.py --events`` measures it).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Callable, Final

from portwatch.collect.netlink import (
    OVERRUN,
    recv_nowait,
    NETLINK_SOCK_DIAG,
    SOCK_DIAG_BY_FAMILY,
    NetlinkError,
    build_request,
    fast_ip,
    parse_messages,
    run_dump,
)
from portwatch.model import (
    KERNEL_TCP_STATES,
    DestroyEvent,
    Endpoint,
    EventBatch,
    Family,
    Protocol,
    SocketState,
    TcpInfo,
)

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "DESTROY_GROUPS",
    "DestroyListener",
    "SocketFactory",
    "listening_tcp_ports",
    "open_destroy_socket",
    "open_query_socket",
    "parse_destroy_events",
]

# include/uapi/linux/sock_diag.h: enum sknetlink_groups (SKNLGRP_NONE = 0).
SKNLGRP_INET_TCP_DESTROY: Final = 1
SKNLGRP_INET_UDP_DESTROY: Final = 2
SKNLGRP_INET6_TCP_DESTROY: Final = 3
SKNLGRP_INET6_UDP_DESTROY: Final = 4
#: The bind() group mask of the four destroy groups (bit n-1 for group n), as ``ss -E`` joins them.
DESTROY_GROUPS: Final = sum(1 << (g - 1) for g in (
    SKNLGRP_INET_TCP_DESTROY, SKNLGRP_INET_UDP_DESTROY,
    SKNLGRP_INET6_TCP_DESTROY, SKNLGRP_INET6_UDP_DESTROY))

#: Receive buffer asked for: 16 MiB held 30,000 events of a burst without a drop.
DEFAULT_BUFFER_BYTES: Final = 16 << 20
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)

INET_DIAG_INFO: Final = 2
INET_DIAG_PROTOCOL: Final = 10

# nlmsghdr + inet_diag_msg: len, type, family, state, sport, dport, src, dst, cookie (2 x u32).
_EVENT: Final = struct.Struct("=IH10x" "BBxx" "HH16s16s" "4xII" "20x")
_EVENT_LEN: Final = _EVENT.size  # 16 + 72
_HEADER: Final = struct.Struct("=IH")
_ATTR: Final = struct.Struct("=HH")
# struct tcp_info: tcpi_total_retrans at 100, bytes_acked / bytes_received at 120, bytes_sent at 200.
_TI_RETRANS: Final = struct.Struct("=I")
_TI_BYTES: Final = struct.Struct("=QQ")
_TI_SENT: Final = struct.Struct("=Q")
_TI_MIN_LEN: Final = 136
_TI_SENT_END: Final = 208

_PROTOCOLS: Final = {int(socket.IPPROTO_TCP): Protocol.TCP, int(socket.IPPROTO_UDP): Protocol.UDP}
_FAMILIES: Final = {int(socket.AF_INET): Family.IPV4, int(socket.AF_INET6): Family.IPV6}
_UDP_STATES: Final = {1: SocketState.ESTABLISHED, 7: SocketState.UNCONN}
_ZERO16: Final = bytes(16)

#: Makes the bare netlink socket (in the namespace whose events are wanted).
SocketFactory = Callable[[], socket.socket]


def open_destroy_socket() -> socket.socket:
    """A new non-blocking, close-on-exec ``NETLINK_SOCK_DIAG`` socket of the calling thread's namespace.

    The default :data:`SocketFactory`. Raises ``OSError`` when the kernel has
    no netlink sock_diag (or the process may not create sockets).
    """
    kind = socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    return socket.socket(socket.AF_NETLINK, kind, NETLINK_SOCK_DIAG)


def open_query_socket() -> socket.socket:
    """A new close-on-exec ``NETLINK_SOCK_DIAG`` datagram socket for dumps of the calling thread's namespace.

    Raises ``OSError`` when the kernel has no netlink sock_diag.
    """
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)


_TCP_LISTEN_MASK: Final = 1 << 10
_query_seq = 0


def listening_tcp_ports(sock: socket.socket, timeout: float = 1.0) -> frozenset[int]:
    """The local ports of every TCP listener (IPv4 and IPv6) of the namespace ``sock`` was made in.

    ``sock`` is an :func:`open_query_socket` socket (it may be kept and used
    again). A dump of the LISTEN state only: what the transient detector asks
    before it calls two mirrored sockets a loop pair, since a listener opened
    after the last scan is not in that scan. Raises ``OSError`` (also
    ``TimeoutError`` after ``timeout`` seconds) and
    :class:`~portwatch.collect.netlink.NetlinkError`.
    """
    global _query_seq
    ports: set[int] = set()
    view = memoryview(bytearray(1 << 16))
    deadline = time.monotonic() + timeout
    late = f"sock_diag dump of TCP listeners took longer than {timeout}s"
    for family in (socket.AF_INET, socket.AF_INET6):
        _query_seq = _query_seq % 0x7FFFFFFF + 1
        seq = _query_seq

        def parse(n: int) -> bool:  # called within this iteration
            found, done = parse_messages(view, protocol=Protocol.TCP, seq=seq, family=family, length=n)
            ports.update(s.local.port for s in found)
            return done

        run_dump(sock, build_request(seq, family, socket.IPPROTO_TCP, _TCP_LISTEN_MASK), parse, view,
                 deadline=deadline, late=late)
    return frozenset(ports)


def _tcp_info(data: bytes | bytearray | memoryview, off: int, size: int) -> TcpInfo | None:
    """The :class:`TcpInfo` of a ``tcp_info`` of ``size`` bytes at ``off``; None when too short."""
    if size < _TI_MIN_LEN:
        return None
    acked, received = _TI_BYTES.unpack_from(data, off + 120)
    sent = _TI_SENT.unpack_from(data, off + 200)[0] if size >= _TI_SENT_END else None
    return TcpInfo(sent, acked, received, _TI_RETRANS.unpack_from(data, off + 100)[0])


def parse_destroy_events(
    data: bytes | bytearray | memoryview,
    at: float,
    *,
    length: int | None = None,
    out: list[DestroyEvent] | None = None,
) -> list[DestroyEvent]:
    """Parse one receive buffer of the destroy multicast into events stamped ``at``.

    Takes the buffer (``data[:length]``), the Unix time to stamp and a list
    to append to. Returns that list. Messages other than
    ``SOCK_DIAG_BY_FAMILY`` (NOOP, an error or done message) are skipped, and
    so are events of a family other than IPv4/IPv6 or of a protocol other
    than TCP/UDP. The protocol comes from ``INET_DIAG_PROTOCOL``; without it,
    an event with ``INET_DIAG_INFO`` is TCP and one without is UDP. Raises
    :class:`~portwatch.collect.netlink.NetlinkError` for a truncated header,
    a message length shorter than its header or past the buffer, or an event
    shorter than ``inet_diag_msg``.
    """
    events: list[DestroyEvent] = [] if out is None else out
    end = len(data) if length is None else length
    off = 0
    while off < end:
        left = end - off
        if left < 16:
            raise NetlinkError(f"truncated netlink header: {left} bytes left", off)
        nlen, ntype = _HEADER.unpack_from(data, off)
        if nlen < 16 or nlen > left:
            raise NetlinkError(f"nlmsg_len {nlen} outside 16..{left}", off)
        if ntype == SOCK_DIAG_BY_FAMILY:
            if nlen < _EVENT_LEN:
                raise NetlinkError(f"destroy event of {nlen} bytes is shorter than {_EVENT_LEN}", off)
            event = _event(data, off, nlen, at)
            if event is not None:
                events.append(event)
        off += (nlen + 3) & ~3
    return events


def _event(data: bytes | bytearray | memoryview, off: int, nlen: int, at: float) -> DestroyEvent | None:
    """The event of the ``SOCK_DIAG_BY_FAMILY`` message of ``nlen`` bytes at ``off`` (None: not inet TCP/UDP)."""
    _len, _type, fam, st, sport, dport, src, dst, c_lo, c_hi = _EVENT.unpack_from(data, off)
    family = _FAMILIES.get(fam)
    if family is None:
        return None
    proto_number = -1
    info: TcpInfo | None = None
    has_info = False
    a = off + _EVENT_LEN
    stop = off + nlen
    while a + 4 <= stop:
        alen, atype = _ATTR.unpack_from(data, a)
        if alen < 4 or a + alen > stop:
            break
        atype &= 0x3FFF  # NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if atype == INET_DIAG_INFO:
            has_info = True
            info = _tcp_info(data, a + 4, alen - 4)
        elif atype == INET_DIAG_PROTOCOL and alen >= 5:
            proto_number = data[a + 4]
        a += (alen + 3) & ~3
    protocol = _PROTOCOLS.get(proto_number) if proto_number >= 0 else (
        Protocol.TCP if has_info else Protocol.UDP)
    if protocol is None:
        return None
    sport = socket.ntohs(sport)
    dport = socket.ntohs(dport)
    local = Endpoint(fast_ip(src, fam), sport)
    remote = None if dport == 0 and dst == _ZERO16 else Endpoint(fast_ip(dst, fam), dport)
    state = KERNEL_TCP_STATES.get(st) if protocol is Protocol.TCP else _UDP_STATES.get(st)
    if protocol is Protocol.UDP:
        info = None
    return DestroyEvent(at, protocol, family, state, local, remote, c_lo | (c_hi << 32), info)


class DestroyListener:
    """A socket joined to the four sock_diag destroy groups of one network namespace.

    ``DestroyListener(factory=open_destroy_socket, buffer_bytes=16 MiB,
    clock=time.time)``: calls ``factory()`` once (the caller makes it create
    the socket inside the wanted namespace, e.g. in a thread that entered it),
    asks for a ``buffer_bytes`` receive buffer with ``SO_RCVBUFFORCE`` (needs
    CAP_NET_ADMIN; beyond ``net.core.rmem_max``) and, when that is refused,
    with ``SO_RCVBUF`` (capped by ``rmem_max``), then binds to the groups.
    Raises ``OSError`` when the socket cannot be made or bound (the socket is
    then closed). Joining needs no capability.

    Attributes: ``buffer_bytes`` (the buffer the kernel granted, as
    ``SO_RCVBUF`` reads back: twice what was set), ``forced`` (whether
    ``SO_RCVBUFFORCE`` was allowed), ``dropped_total`` (ENOBUFS counted),
    ``events_total`` (events parsed). Use :meth:`fileno` with a selector and
    :meth:`read` when readable; :meth:`close` when done (also a context
    manager). Not thread-safe: one reader.
    """

    def __init__(self, factory: SocketFactory = open_destroy_socket, *,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.dropped_total = 0
        self.events_total = 0
        self._buffer = bytearray(65536)
        self._view = memoryview(self._buffer)
        sock = factory()
        try:
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
                self.forced = True
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
                self.forced = False
            self.buffer_bytes: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            sock.bind((0, DESTROY_GROUPS))
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def fileno(self) -> int:
        """The socket's file descriptor (readable when events are queued); -1 once closed."""
        return self._sock.fileno()

    def read(self, max_events: int = 4096) -> EventBatch:
        """Read the queued events without blocking, at most ``max_events`` messages.

        Returns an :class:`~portwatch.model.EventBatch`: the events (stamped
        with one ``clock()`` reading per call), ``lost`` (True when ENOBUFS
        was reported during this call: events were dropped, rescan now;
        ``dropped_total`` counts each one) and ``more`` (the bound was
        reached with data possibly still queued). Raises
        :class:`~portwatch.collect.netlink.NetlinkError` for a malformed
        message and ``OSError`` for a socket error other than
        EAGAIN/ENOBUFS/EINTR (e.g. EBADF after :meth:`close`).
        """
        events: list[DestroyEvent] = []
        lost = False
        at = self._clock()
        recv_into = self._sock.recv_into
        buf = self._view
        reads = 0
        while reads < max_events:
            reads += 1
            n = recv_nowait(recv_into, buf)
            if n is None:
                return EventBatch(self._count(events), lost, self.dropped_total, False)
            if n == OVERRUN:
                self.dropped_total += 1
                lost = True
                continue
            if n == 0:
                break
            parse_destroy_events(buf, at, length=n, out=events)
        return EventBatch(self._count(events), lost, self.dropped_total, reads >= max_events)

    def _count(self, events: list[DestroyEvent]) -> list[DestroyEvent]:
        self.events_total += len(events)
        return events

    def close(self) -> None:
        """Close the socket (idempotent); the namespace's events stop reaching it."""
        self._sock.close()

    def __enter__(self) -> DestroyListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
