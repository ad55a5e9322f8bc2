"""The netlink socket source: the socket table over NETLINK_SOCK_DIAG, with the standard library only.

Job: :class:`NetlinkSource`, which sends three dump requests (TCP of both
families in one, as ``ss -t`` asks; UDP IPv4; UDP IPv6) and receives the
answers within a time limit (:meth:`NetlinkSource.fetch`, system calls
only), then hands them to the parser (:func:`parse_table`, through
:func:`portwatch.collect.netlink.parse_messages`);
:meth:`NetlinkSource.read_counted` is the counted read a scan makes
(:meth:`NetlinkSource.count`: one TCP dump, classified by
:func:`portwatch.collect.netlink.count_messages` once the kernel's walk is
over, one pass over it, the listeners first as the kernel sends them). The scan of another namespace
runs wholly in the thread that entered it, with the socket made there. It
does not walk processes, so its table has no owners; it reads 100,000 sockets
in about the CPU time ``ss -tan`` takes, some 7 times less than
``psutil.net_connections``. No privilege is needed to dump the sockets of the
caller's own network namespace; a sandbox must allow ``AF_NETLINK``. May
import the standard library, :mod:`portwatch.model` and
:mod:`portwatch.collect.netlink`.
"""

from __future__ import annotations

import _socket
import _thread
import contextlib
import errno as _errno
import gc
import os
import time

from portwatch.collect.netlink import (
    NETLINK_SOCK_DIAG,
    SOCK_DIAG_BY_FAMILY,
    TCP_STATES_MASK,
    UDP_STATES_MASK,
    TCPDIAG_GETSOCK,
    UNAVAILABLE_ERRNOS,
    Tally,
    build_request,
    build_tcp_request,
    count_messages,
    counted_totals,
    dump_ended,
    family_name,
    parse_messages,
    raw_ip,
    run_dump,
)
from portwatch.model import (
    KernelSettings,
    Protocol,
    Socket,
    SocketCounts,
    SocketTable,
    SourceUnavailable,
)
from portwatch.model.records import NamedTuple
from portwatch.model.text import os_error_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Final, Iterator, Sequence, TypeVar

    T = TypeVar("T")

__all__ = ["DUMPS", "Answers", "Dump", "InUse", "NetlinkSource", "default_socket_factory",
           "parse_table", "sockstat_in_use"]

_PROTO_NUMBERS: Final = {Protocol.TCP: _socket.IPPROTO_TCP, Protocol.UDP: _socket.IPPROTO_UDP}


def default_socket_factory() -> _socket.socket:
    """Open an ``AF_NETLINK``/``SOCK_DGRAM``/``NETLINK_SOCK_DIAG`` socket (close-on-exec).

    Raises ``OSError`` when the kernel refuses (e.g. ``EAFNOSUPPORT``,
    ``EPROTONOSUPPORT`` without sock_diag).
    """
    return _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)


#: The per-family dumps: (protocol, address family). A read makes the TCP
#: ones with one compatibility request instead, unless the kernel refuses it.
DUMPS: Final[Sequence[tuple[Protocol, int]]] = (
    (Protocol.TCP, _socket.AF_INET),
    (Protocol.TCP, _socket.AF_INET6),
    (Protocol.UDP, _socket.AF_INET),
    (Protocol.UDP, _socket.AF_INET6),
)


class InUse(NamedTuple):
    """A namespace's socket counts from ``sockstat``: TCP (IPv4 and IPv6 in use, and TIME_WAIT), UDP (both)."""

    tcp: int
    udp: int


def sockstat_in_use(net: str = "/proc/thread-self/net") -> InUse | None:
    """The calling thread's network namespace's :class:`InUse`, from ``NET/sockstat`` and ``NET/sockstat6``.

    The kernel keeps these counters per namespace; a socket that is hashed
    (listening, connecting, connected, closing) counts in ``inuse``, a
    TIME_WAIT one in ``tw``. None when a file cannot be read or parsed (then
    nothing is skipped). Never raises.
    """
    tcp = udp = 0
    try:
        for name in ("sockstat", "sockstat6"):
            fd = os.open(f"{net}/{name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                text = os.read(fd, 4096).decode("ascii", "replace")
            finally:
                os.close(fd)
            for line in text.splitlines():
                head, _, rest = line.partition(":")
                words = rest.split()
                fields = dict(zip(words[::2], words[1::2]))
                if head in ("TCP", "TCP6"):
                    tcp += int(fields["inuse"]) + int(fields.get("tw", "0"))
                elif head in ("UDP", "UDP6"):
                    udp += int(fields["inuse"])
    except (OSError, KeyError, ValueError):
        return None
    return InUse(tcp, udp)


class NetlinkSource:
    """Reads the current network namespace's TCP and UDP sockets over sock_diag.

    Implements :class:`portwatch.model.SocketSource`. The table it returns
    has no owners (netlink does not know processes). ``uid`` and ``inode``
    come from the kernel; they are 0 for TIME_WAIT and NEW_SYN_RECV mini
    sockets. A read is a :meth:`fetch` (system calls) then a parse (pure
    functions); fetches may overlap (each has its own socket and receive
    buffer), the source keeps only its sequence numbers and whether the
    kernel takes the compatibility TCP request.
    """

    name = "netlink"

    def __init__(
        self,
        socket_factory: Callable[[], _socket.socket] = default_socket_factory,
        bufsize: int = 1 << 17,
        timeout: float = 10.0,
        in_use: Callable[[], InUse | None] | None = None,
    ) -> None:
        """Takes a factory for the netlink socket (tests replace it), the receive
        buffer size in bytes (at least 32 KiB: the kernel sends up to ~32 KiB
        per datagram) and the time limit in seconds for one whole :meth:`fetch`
        (the dumps of a full read; the parse after it is not timed) or
        :meth:`count` (a counted read, its parse included).
        ``in_use``, when given, tells :meth:`read_counted` the namespace's
        socket counts (:func:`sockstat_in_use`, read where the socket is made):
        it skips the TCP dumps when no TCP socket is in use and the UDP dumps
        when no UDP one is (the kernel walks its host-wide hash for every dump,
        about 2 ms idle and 20 ms with 100,000 sockets in other namespaces).
        Raises ``ValueError`` for a too small ``bufsize`` or a non-positive
        ``timeout``.
        """
        if bufsize < 32768:
            raise ValueError(f"bufsize must be at least 32768 bytes, got {bufsize}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._factory = socket_factory
        self._bufsize = bufsize
        self._views = _thread._local()  # each thread's receive buffer: _view()
        self._timeout = timeout
        self._seq = 0
        self._tcp_compat = True  # until the kernel refuses TCPDIAG_GETSOCK
        self._in_use = in_use

    def read(self) -> SocketTable:
        """Dump every TCP and UDP, IPv4 and IPv6 socket of the current namespace.

        Returns a :class:`SocketTable` with empty ``owners``. Raises
        :class:`SourceUnavailable` when the kernel has no sock_diag (the
        socket cannot be opened: EAFNOSUPPORT/EPROTONOSUPPORT; or a request
        is refused with ENOENT/EPROTONOSUPPORT), :class:`NetlinkError` for
        malformed answers, ``TimeoutError`` when the dumps take longer than
        the source's ``timeout``, and ``OSError`` for other failures.
        """
        return parse_table(self.fetch(self._open()))

    def read_counted(self, settings: KernelSettings,
                     ports: frozenset[int] = frozenset()) -> tuple[SocketTable, SocketCounts]:
        """Read the table keeping only the sockets a detector looks at, and count all of them.

        :meth:`count` on a new socket, with the source's ``in_use``. Raises
        what :meth:`read` raises.
        """
        in_use = self._in_use() if self._in_use is not None else None
        return self.count(self._open(), settings, ports, in_use)

    def count(self, sock: _socket.socket, settings: KernelSettings, ports: frozenset[int] = frozenset(),
              in_use: InUse | None = None) -> tuple[SocketTable, SocketCounts]:
        """The counted read on ``sock``: the kept sockets and the counts of all; closes ``sock``.

        Takes a ``NETLINK_SOCK_DIAG`` socket (made in the namespace to read:
        it dumps that namespace wherever this runs), the namespace's kernel
        settings (range and reserved ports decide which ports count towards
        a destination's usage), the ports of interest (declared services,
        remembered listeners: any socket holding one is kept; reserved ports
        are added here) and the namespace's :class:`InUse`. Dumps every TCP
        socket (one request, both families) and classifies the datagrams with
        :func:`~portwatch.collect.netlink.count_messages` once no more is
        ready (which also says which datagram ends the dump: one pass over
        the messages, after the kernel's walk: :meth:`_count_tcp`);
        the kernel sends its listening hash first, so the listeners are known
        before the sockets they decide about (should one come later, the
        buffers are classified again: :meth:`Tally.again`); then dumps and
        parses UDP. Skips the TCP dumps when ``in_use`` counts no TCP
        socket and the UDP ones when it counts no UDP socket (every dump
        walks the kernel's host-wide hash: about 2 ms idle, 15 to 20 ms with
        100,000 sockets in other namespaces). Returns the table of kept
        sockets (every listener and UDP socket, and the TCP sockets that are
        CLOSE_WAIT, connected to themselves, on a port of interest, or
        connected with no TCP listener on either end) and the
        :class:`~portwatch.model.SocketCounts` of all of them. The
        source's ``timeout`` bounds the whole read, parse included. Raises
        what :meth:`fetch` raises.
        """
        udp: list[Socket] = []
        rng = settings.port_range
        tally = Tally((rng.low, rng.high), settings.reserved, frozenset(ports) | settings.reserved,
                      frozenset(), take_listeners=True)
        try:
            deadline = time.monotonic() + self._timeout
            view = self._view()
            with _paused_gc():
                if in_use is None or in_use.tcp > 0:
                    self._count_tcp(sock, view, tally, deadline)
                    if tally.late:  # a listener after other sockets: classify them again
                        tally = tally.again()
                tally.release()  # its look-up tables: what the snapshot keeps needs none of them
                if in_use is None or in_use.udp > 0:
                    for protocol, family in DUMPS:
                        if protocol is Protocol.UDP:
                            _parse_dump(self._fetch_one(sock, view, "udp", protocol, family,
                                                        UDP_STATES_MASK, deadline), udp)
        finally:
            sock.close()
        listeners = tally.listeners or []
        kept = (*listeners, *tally.kept, *udp)
        return SocketTable(sockets=kept), counted_totals(tally, listeners + udp)

    def _count_tcp(self, sock: _socket.socket, view: memoryview, tally: Tally, deadline: float) -> None:
        """Every TCP socket, classified into ``tally`` (:meth:`_tcp_dumps`).

        The datagrams are kept as they arrive and classified together when
        no more is ready (``run_dump``'s ``idle``): with a real kernel once,
        after the whole dump, so the kernel's walk of its hash runs without
        the classifying loop between its parts (each evicts what the other
        had in the caches: about a quarter of the loop's time with
        100,000 sockets in other namespaces), and a malformed answer still raises
        as soon as nothing follows it.
        """
        def classify(family: int | None) -> None:
            held: list[bytes] = []
            asked: list[tuple[int, int]] = []  # the request's (seq, msg_type)

            def receiver(seq: int, msg_type: int) -> Callable[[int], bool]:
                asked.append((seq, msg_type))

                def keep(n: int) -> bool:
                    held.append(bytes(view[:n]))
                    return False  # drain() tells
                return keep

            def drain() -> bool:
                seq, msg_type = asked[-1]
                chunks = held[:]
                held.clear()
                for chunk in chunks:
                    if count_messages(chunk, tally, seq=seq, length=len(chunk), family=family,
                                      msg_type=msg_type):
                        return True
                return False

            self._dump(sock, view, Protocol.TCP, family, TCP_STATES_MASK, deadline, receiver, idle=drain)

        def refused() -> bool:  # the refusal (one datagram, nothing in it counted) is all there is
            if len(tally.buffers) > 1 or any(tally.states) or tally.listeners:
                return False
            tally.buffers.clear()
            return True

        self._tcp_dumps(classify, refused)

    def fetch(self, sock: _socket.socket) -> Answers:
        """Run the dumps of a full read on ``sock`` and keep the kernel's answers unparsed; closes ``sock``.

        Takes a ``NETLINK_SOCK_DIAG`` socket (made in the namespace to read:
        it dumps that namespace wherever this runs). Dumps TCP (every state,
        both families in one request) and UDP (one request per family).
        Only system calls and copies: no parsing (:func:`parse_table`),
        nothing shared with a fetch in another thread (each thread has its
        own receive buffer, :meth:`_view`: one left running by a thread that
        timed out disturbs none; two
        overlapping fetches may share a sequence number, harmless on their
        own sockets); :func:`~portwatch.collect.netlink.dump_ended` tells
        which datagram is a dump's last. Raises :class:`SourceUnavailable`
        and ``OSError`` for a refused request (as soon as its answer says
        so), :class:`NetlinkError` for a malformed answer or a datagram
        longer than the receive buffer (as soon as it arrives), and
        ``TimeoutError`` past the source's ``timeout``.
        """
        try:
            deadline = time.monotonic() + self._timeout
            view = self._view()
            dumps = self._fetch_tcp(sock, view, deadline)
            for protocol, family in DUMPS:
                if protocol is Protocol.UDP:
                    dumps.append(self._fetch_one(sock, view, "udp", protocol, family,
                                                 UDP_STATES_MASK, deadline))
        finally:
            sock.close()
        return Answers(dumps=tuple(dumps))

    def _fetch_tcp(self, sock: _socket.socket, view: memoryview, deadline: float) -> list[Dump]:
        """Every TCP socket, its datagrams kept (:meth:`_tcp_dumps`)."""
        return self._tcp_dumps(lambda family: self._fetch_one(sock, view, "tcp", Protocol.TCP, family,
                                                              TCP_STATES_MASK, deadline))

    def _tcp_dumps(self, dump: Callable[[int | None], T], refused: Callable[[], bool] = lambda: True) -> list[T]:
        """``dump(family)`` of every TCP socket: once with ``None`` (the compatibility request, both
        families in one walk), or, once the kernel refused that, once per family. ``refused()``,
        called when the kernel refuses, says whether the per-family requests may follow (it
        clears what the refused request left); they run on the same socket."""
        if self._tcp_compat:
            try:
                return [dump(None)]
            except TimeoutError:
                raise
            except (OSError, SourceUnavailable):
                # Refused (its NLMSG_ERROR is all the kernel sent): the
                # per-family requests below, on the same socket.
                if not refused():
                    raise
                self._tcp_compat = False
        return [dump(family) for protocol, family in DUMPS if protocol is Protocol.TCP]

    def _open(self) -> _socket.socket:
        """A new netlink socket from the factory; :class:`SourceUnavailable` when the kernel has no
        sock_diag, the factory's ``OSError`` otherwise."""
        try:
            return self._factory()
        except OSError as exc:
            if exc.errno in UNAVAILABLE_ERRNOS:
                raise SourceUnavailable(
                    f"cannot open a NETLINK_SOCK_DIAG socket: {os_error_text(exc)} "
                    f"({_errno.errorcode.get(exc.errno or 0, exc.errno)})") from exc
            raise

    def _view(self) -> memoryview:
        """The calling thread's receive buffer, made on its first read and kept for the next ones.

        One per thread: a read that a timed-out thread left running keeps
        its own. Every datagram is copied out before the next is received,
        so reads in turn may share it. Kept, not made per read: a buffer of
        128 KiB is mapped afresh by ``malloc`` each time (32 page faults and
        an ``madvise`` per namespace of a pass).
        """
        view: memoryview | None = getattr(self._views, "view", None)
        if view is None:
            view = self._views.view = memoryview(bytearray(self._bufsize))
        return view

    def _next_seq(self) -> int:
        """A new sequence number."""
        self._seq = (self._seq % 0x7FFFFFFF) + 1
        return self._seq

    def _fetch_one(self, sock: _socket.socket, view: memoryview, part: str, protocol: Protocol,
                   family: int | None, states: int, deadline: float) -> Dump:
        """Run one dump request of the sockets in ``states`` and keep its datagrams, up to the last
        (:func:`~portwatch.collect.netlink.dump_ended` says which)."""
        datagrams: list[bytes] = []

        def keeper(seq: int, msg_type: int) -> Callable[[int], bool]:
            def keep(n: int) -> bool:
                ended = dump_ended(view, length=n, seq=seq, msg_type=msg_type, protocol=protocol, family=family)
                datagrams.append(bytes(view[:n]))
                return ended
            return keep

        seq, msg_type = self._dump(sock, view, protocol, family, states, deadline, keeper)
        return Dump(part, protocol, family, seq, msg_type, tuple(datagrams))

    def _dump(self, sock: _socket.socket, view: memoryview, protocol: Protocol, family: int | None,
              states: int, deadline: float, receiver: Callable[[int, int], Callable[[int], bool]],
              idle: Callable[[], bool] | None = None) -> tuple[int, int]:
        """Run one dump request of the sockets in ``states``, handing each datagram (``view[:n]``) to
        ``receiver(seq, msg_type)``'s callback until it (or ``idle``, as ``run_dump`` calls it)
        says the dump ended; returns (seq, msg_type).

        ``family`` ``None`` (with TCP) sends the compatibility request, which
        dumps both families in one walk of the kernel's hash.
        """
        seq = self._next_seq()
        what = protocol.value if family is None else f"{protocol.value}/{family_name(family)}"
        if family is None:
            request, msg_type = build_tcp_request(seq, states), TCPDIAG_GETSOCK
        else:
            request = build_request(seq, family, _PROTO_NUMBERS[protocol], states)
            msg_type = SOCK_DIAG_BY_FAMILY
        if deadline - time.monotonic() <= 0:
            raise TimeoutError(f"sock_diag read took longer than {self._timeout}s")
        run_dump(sock, request, receiver(seq, msg_type), view, deadline=deadline, what=what,
                 late=f"sock_diag dump of {what} took longer than {self._timeout}s", idle=idle)
        return seq, msg_type


class Dump(NamedTuple):
    """One dump's answers as :meth:`NetlinkSource.fetch` kept them: what was asked, and the datagrams.

    ``part`` is ``tcp`` or ``udp``;
    ``family`` is None for the TCP compatibility request (both families);
    ``seq`` and ``msg_type`` are the request's; ``datagrams`` what the
    kernel sent, in order, the last one ending the dump.
    """

    part: str
    protocol: Protocol
    family: int | None
    seq: int
    msg_type: int
    datagrams: tuple[bytes, ...]


class Answers(NamedTuple):
    """What :meth:`NetlinkSource.fetch` returns: its dumps, in order."""

    dumps: tuple[Dump, ...]


def parse_table(answers: Answers) -> SocketTable:
    """The :class:`SocketTable` (no owners) of the sockets in ``answers``, in dump order. Pure.

    Raises :class:`NetlinkError` for malformed answers, and
    :class:`SourceUnavailable` or ``OSError`` for a failure status in them
    (:func:`~portwatch.collect.netlink.parse_messages`).
    """
    sockets: list[Socket] = []
    with _paused_gc():
        for dump in answers.dumps:
            _parse_dump(dump, sockets)
    return SocketTable(sockets=tuple(sockets))


def _parse_dump(dump: Dump, out: list[Socket]) -> None:
    """Parse every datagram of ``dump`` into ``out``."""
    for data in dump.datagrams:
        parse_messages(data, protocol=dump.protocol, seq=dump.seq, family=dump.family, out=out,
                       msg_type=dump.msg_type)


@contextlib.contextmanager
def _paused_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a parse builds its tuples.

    Hundreds of thousands of new tuples would trigger it again and again
    (each pass walking everything built so far); they cannot form cycles.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc_was_enabled:
            gc.enable()
