"""The sock_diag (inet_diag) wire format: requests, and the parser of the kernel's answers.

Job: the kernel constants, :func:`build_request` (one ``SOCK_DIAG_BY_FAMILY``
dump request, ``struct inet_diag_req_v2`` with ``NLM_F_DUMP``),
:func:`build_tcp_request` (the older ``TCPDIAG_GETSOCK`` request that ``ss -t``
sends: TCP of both families in one walk of the kernel's socket hash, which is
shared by every network namespace, so a dump costs what the host's sockets
cost, not only the namespace's) and :func:`parse_messages`, the pure parser of one receive buffer, which
turns each ``struct inet_diag_msg`` into a :class:`portwatch.model.Socket`; it
is public so that tests can feed it crafted bytes. :func:`count_messages` is
the classifying parser of a counted read: it counts every TCP socket of a
buffer (per state, per destination in a :class:`Tally`) and builds a
``Socket`` only for those a detector looks at, and says which buffer
ends the dump. :func:`dump_ended` tells a reader that keeps datagrams to
parse later (a full read) which one ends a dump. No I/O of its own: the
two reading helpers at the end work on a socket their caller made —
:func:`run_dump` (one dump request and its answers within a deadline, what
every dump of portwatch runs) and :func:`recv_nowait` (one non-blocking read
of a listener). The socket source that sends the requests and receives the
answers is :class:`portwatch.collect.sources.netlink.NetlinkSource` (it reads 100,000
sockets in about the CPU time ``ss -tan`` takes; ``benchmarks/run.py``
measures it). May import the standard library and :mod:`portwatch.model`.
The address constants, ``inet_ntop`` and ``MSG_TRUNC`` come from :mod:`_socket`
(what :mod:`socket` wraps, the same values), and :func:`run_dump` takes any
``_socket.socket`` (``socket.socket`` derives from it): importing
:mod:`socket` builds its enums, which a plain scan has no use for.

Wire layout (all integers in host byte order except ports and addresses)::

    struct nlmsghdr      { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }    16 bytes
    struct inet_diag_msg { u8 family, state, timer, retrans;
                           be16 sport, dport; be32 src[4], dst[4];
                           u32 if; u32 cookie[2];
                           u32 expires, rqueue, wqueue, uid, inode; }           72 bytes
    then netlink attributes  { u16 len; u16 type; value; } at 4-byte alignment

Of the attributes only ``INET_DIAG_CGROUP_ID`` (21, a u64, Linux 5.8+) is
read: the kernel puts it in every full socket's message without being asked.
It is looked for first where the previous message had it (on this kernel,
after ``INET_DIAG_SHUTDOWN`` and ``INET_DIAG_CLASS_ID``), so the walk of the
attribute list happens about once per buffer, not once per socket.

TIME_WAIT and NEW_SYN_RECV entries are the kernel's "mini sockets": they have
inode 0 and uid 0, and no attributes (``cgroup_id`` is ``None``). They are
kept (TIME_WAIT counts for port exhaustion).
"""

from __future__ import annotations

import errno as _errno
import functools
import _socket
import os
import struct
import time

from portwatch.model import (
    KERNEL_TCP_STATES,
    Destination,
    Endpoint,
    Family,
    Protocol,
    Socket,
    SocketCounts,
    SocketState,
    SourceUnavailable,
    count_states,
    normalize_ip,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Collection, Final, Iterator

__all__ = [
    "counted_totals",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLM_F_REQUEST",
    "OVERRUN",
    "recv_nowait",
    "run_dump",
    "INET_DIAG_CGROUP_ID",
    "NETLINK_SOCK_DIAG",
    "SOCK_DIAG_BY_FAMILY",
    "TCPDIAG_GETSOCK",
    "TCP_STATES_MASK",
    "UDP_STATES_MASK",
    "UNAVAILABLE_ERRNOS",
    "NetlinkError",
    "build_request",
    "build_tcp_request",
    "errno_failure",
    "family_name",
    "find_cgroup_id",
    "fast_ip",
    "parse_messages",
    "Tally",
    "count_messages",
    "dump_ended",
    "raw_port",
]

# --- kernel constants (include/uapi/linux/netlink.h, sock_diag.h, inet_diag.h) ---

#: Netlink protocol number of the socket-diagnostics family.
NETLINK_SOCK_DIAG: Final = 4
#: Message type of a sock_diag request and of its answers.
SOCK_DIAG_BY_FAMILY: Final = 20
#: Message type of the compatibility TCP dump request (``struct inet_diag_req``)
#: and of its answers: TCP sockets of both address families.
TCPDIAG_GETSOCK: Final = 18
#: Netlink attribute of an inet_diag_msg holding the socket's cgroup v2 id (u64).
INET_DIAG_CGROUP_ID: Final = 21

NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_OVERRUN: Final = 4

NLM_F_REQUEST: Final = 0x01
NLM_F_ROOT: Final = 0x100
NLM_F_MATCH: Final = 0x200
NLM_F_DUMP: Final = NLM_F_ROOT | NLM_F_MATCH

#: TCP states to dump: every state 1 (ESTABLISHED) .. 12 (NEW_SYN_RECV).
#: Bit 13 (TCP_BOUND_INACTIVE, bound but never listening or connecting, Linux
#: 6.5+) is left out on purpose: /proc/net/tcp and ``ss -ta`` do not show those
#: sockets either, and the model has no state for them.
TCP_STATES_MASK: Final = sum(1 << n for n in KERNEL_TCP_STATES)
#: UDP "states": TCP_ESTABLISHED (1, connected) and TCP_CLOSE (7, unconnected).
UDP_STATES_MASK: Final = (1 << 1) | (1 << 7)

_NLMSGHDR: Final = struct.Struct("=IHHII")
# nlmsghdr + inet_diag_req_v2 (family, protocol, ext, pad, states, 48-byte sockid of zeros)
_REQUEST: Final = struct.Struct("=IHHII" "BBBxI" "48x")
# nlmsghdr + inet_diag_req (family, src_len, dst_len, ext, 48-byte sockid, states, dbs)
_TCP_REQUEST: Final = struct.Struct("=IHHII" "BBBB" "48x" "II")
# nlmsghdr (without flags and port id) + inet_diag_msg up to inode (without timer,
# retrans, interface, cookie, expires and queues: no detector reads them); ports
# are read in host order and swapped below.
_MSG: Final = struct.Struct("=IH2xI4x" "BBxx" "HH16s16s" "24x" "II")
_HDR_LEN: Final = _NLMSGHDR.size  # 16
_MSG_LEN: Final = _MSG.size  # 16 + 72 = 88
_INT: Final = struct.Struct("=i")
_NLA_U64: Final = struct.Struct("=HHQ")  # nlattr header + u64 value
_NLA_HDR: Final = struct.Struct("=HH")
_NLA_CGROUP_LEN: Final = _NLA_U64.size  # 12
_NLA_TYPE_MASK: Final = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
#: The nlattr header of INET_DIAG_CGROUP_ID (length 12, type 21) read as one u32.
_CGROUP_TAG: Final = struct.unpack("=I", struct.pack("=HH", _NLA_CGROUP_LEN, INET_DIAG_CGROUP_ID))[0]
#: Where (after inet_diag_msg) INET_DIAG_CGROUP_ID is first looked for: after
#: INET_DIAG_SHUTDOWN (8 bytes) and INET_DIAG_CLASS_ID (8 bytes), as on Linux 6.x.
_CGROUP_GUESS: Final = 16

_ZERO16: Final = bytes(16)
_V4MAPPED: Final = bytes(10) + b"\xff\xff"
_BIG_ENDIAN: Final = struct.pack("=H", 1) == struct.pack(">H", 1)

_FAMILIES: Final[dict[int, Family]] = {_socket.AF_INET: Family.IPV4, _socket.AF_INET6: Family.IPV6}

#: Errors that mean "this kernel cannot answer sock_diag requests at all" (the source uses them too).
UNAVAILABLE_ERRNOS: Final = frozenset(
    {_errno.ENOENT, _errno.EPROTONOSUPPORT, _errno.EAFNOSUPPORT, _errno.EOPNOTSUPP}
)


def _state_table(protocol: Protocol) -> tuple[SocketState | None, ...]:
    """Kernel state number (0..255) -> SocketState for ``protocol``; None = not valid."""
    table: list[SocketState | None] = [None] * 256
    if protocol is Protocol.TCP:
        for number, state in KERNEL_TCP_STATES.items():
            table[number] = state
    else:
        table[1] = SocketState.ESTABLISHED
        table[7] = SocketState.UNCONN
    return tuple(table)


_STATE_TABLES: Final = {p: _state_table(p) for p in Protocol}


class NetlinkError(ValueError):
    """The kernel's sock_diag answer is malformed or truncated.

    The message says what is wrong and at which byte offset of the receive
    buffer; ``offset`` holds that offset.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at offset {offset})")
        self.offset = offset


def fast_ip(raw: bytes, family: int) -> str:
    """Canonical address string of a 16-byte inet_diag address field.

    Takes the raw ``idiag_src``/``idiag_dst`` bytes (only the first 4 are
    used for ``AF_INET``) and the address family number. Returns exactly what
    :func:`portwatch.model.normalize_ip` returns for that address
    (IPv4-mapped IPv6 becomes IPv4), using ``socket.inet_ntop``; the rare
    forms where glibc's text differs from :mod:`ipaddress` (IPv4-embedded
    ``::a.b.c.d`` forms) go through ``normalize_ip``. Raises ``ValueError``
    for a family other than AF_INET/AF_INET6 or fewer than 4/16 bytes.
    """
    if family == _socket.AF_INET:
        if len(raw) < 4:
            raise ValueError(f"IPv4 address needs 4 bytes, got {len(raw)}")
        return _socket.inet_ntop(_socket.AF_INET, raw[:4])
    if family == _socket.AF_INET6:
        if len(raw) < 16:
            raise ValueError(f"IPv6 address needs 16 bytes, got {len(raw)}")
        raw = raw[:16]
        if raw[:12] == _V4MAPPED:
            return _socket.inet_ntop(_socket.AF_INET, raw[12:])
        text = _socket.inet_ntop(_socket.AF_INET6, raw)
        # glibc prints "::a.b.c.d" where ipaddress prints hex words; defer to the model.
        return normalize_ip(text) if "." in text else text
    raise ValueError(f"unknown address family {family}")


def _msg_with_cgroup(at: int) -> tuple[Any, int]:
    """``unpack_from`` of a message plus an INET_DIAG_CGROUP_ID attribute ``at`` bytes after
    ``inet_diag_msg``, and the size it reads."""
    full = _MSG_CGROUP.get(at)
    if full is None:
        full = _MSG_CGROUP[at] = struct.Struct(_MSG.format + f"{at}x" + "IQ")
    return full.unpack_from, full.size


_MSG_CGROUP: dict[int, struct.Struct] = {}


def find_cgroup_id(data: bytes | bytearray | memoryview, start: int, end: int) -> tuple[int | None, int]:
    """The ``INET_DIAG_CGROUP_ID`` value among the netlink attributes in ``data[start:end]``.

    Takes the buffer and the bounds of one message's attribute list. Returns
    ``(cgroup id, offset of its attribute relative to start)``, or
    ``(None, -1)`` when the list has no such attribute. An attribute whose
    length is below its 4-byte header or runs past ``end`` ends the search
    (the rest cannot be read). Never raises.
    """
    off = start
    while off + 4 <= end:
        alen, atype = _NLA_HDR.unpack_from(data, off)
        if alen < 4 or off + alen > end:
            return None, -1
        if atype & _NLA_TYPE_MASK == INET_DIAG_CGROUP_ID and alen >= _NLA_CGROUP_LEN:
            return _NLA_U64.unpack_from(data, off)[2], off - start
        off += (alen + 3) & ~3
    return None, -1


def build_request(seq: int, family: int, protocol: int, states: int, attributes: bytes = b"") -> bytes:
    """The bytes of one ``SOCK_DIAG_BY_FAMILY`` dump request.

    Takes the netlink sequence number, the address family (``AF_INET`` or
    ``AF_INET6``), the IP protocol number, the state bitmask and the request
    attributes (packed, e.g. a filter program; none by default). Returns a
    72-byte ``nlmsghdr`` + ``inet_diag_req_v2`` (no extensions), then the
    attributes. Raises ``struct.error`` for out-of-range numbers.
    """
    return _REQUEST.pack(
        _REQUEST.size + len(attributes), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0,
        family, protocol, 0, states,
    ) + attributes


def build_tcp_request(seq: int, states: int) -> bytes:
    """The bytes of one ``TCPDIAG_GETSOCK`` dump request: every TCP socket, IPv4 and IPv6.

    Takes the netlink sequence number and the state bitmask. Returns a
    76-byte ``nlmsghdr`` + ``struct inet_diag_req`` (no extensions, no
    filter); the kernel answers with ``inet_diag_msg`` messages of type
    :data:`TCPDIAG_GETSOCK`, both families in one walk. Raises
    ``struct.error`` for out-of-range numbers.
    """
    return _TCP_REQUEST.pack(
        _TCP_REQUEST.size, TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0,
        0, 0, 0, 0, states, 0,
    )


def errno_failure(err: int, what: str) -> Exception:
    """The exception for a negative errno the kernel reported about dump ``what``."""
    name = _errno.errorcode.get(err, str(err))
    if err in UNAVAILABLE_ERRNOS:
        return SourceUnavailable(
            f"kernel has no sock_diag support for {what} ({name}: {os.strerror(err)}); "
            "is the inet_diag/tcp_diag/udp_diag module missing?"
        )
    return OSError(err, f"sock_diag dump of {what} failed: {os.strerror(err)} ({name})")


#: errno values are small positive numbers (the kernel's MAX_ERRNO is 4095).
_MAX_ERRNO: Final = 4095


def _status_failure(status: int, what: str, off: int) -> Exception:
    """The exception for a non-zero status in NLMSG_ERROR/NLMSG_DONE at ``off``.

    A status that is not a negated errno (positive, or beyond -4095) is malformed
    data: :class:`NetlinkError`, never an ``OverflowError`` from ``os.strerror``.
    """
    if not -_MAX_ERRNO <= status < 0:
        return NetlinkError(f"netlink error status {status} is not a negative errno", off)
    return errno_failure(-status, what)


def _new_endpoint(eps: dict[tuple[bytes, int], Endpoint], ips: dict[bytes, str], raw: bytes, port: int,
                  family: int, new: Any = tuple.__new__, endpoint: type[Endpoint] = Endpoint,
                  to_ip: Callable[[bytes, int], str] = fast_ip) -> Endpoint:
    """The :class:`Endpoint` of a raw inet_diag address and port (network order, read in host order),
    built and put in :func:`parse_messages`' caches ``eps`` (by (raw, port)) and ``ips`` (by raw).

    (``new``, ``endpoint``, ``to_ip``: bound once, this runs for every endpoint of a dump.)
    """
    ip = ips.get(raw)
    if ip is None:
        ip = ips[raw] = to_ip(raw, family)
    built: Endpoint = new(endpoint, (ip, port if _BIG_ENDIAN else ((port & 0xFF) << 8) | (port >> 8)))
    eps[(raw, port)] = built
    return built


def parse_messages(
    data: bytes | bytearray | memoryview,
    *,
    protocol: Protocol,
    seq: int | None = None,
    family: int | None = None,
    out: list[Socket] | None = None,
    length: int | None = None,
    msg_type: int = SOCK_DIAG_BY_FAMILY,
) -> tuple[list[Socket], bool]:
    """Parse one netlink receive buffer of a sock_diag dump.

    Takes the buffer (``data[:length]`` is used; ``length`` defaults to all of
    it), the ``protocol`` the dump was for (TCP or UDP: it decides how state
    numbers read), and optionally the expected sequence number ``seq`` and
    address ``family`` (``AF_INET``/``AF_INET6``; ``None`` accepts either),
    and a list ``out`` to append to. ``msg_type`` is the type of the answers
    (that of the request: :data:`SOCK_DIAG_BY_FAMILY`, or
    :data:`TCPDIAG_GETSOCK` for :func:`build_tcp_request`).

    Returns ``(sockets, done)``: the list the sockets were appended to (``out``
    if given; each socket's ``cgroup_id`` is the message's
    ``INET_DIAG_CGROUP_ID``, ``None`` without one) and whether ``NLMSG_DONE`` ended the dump in this buffer (the
    rest of the buffer after it is ignored). ``NLMSG_NOOP`` and an
    ``NLMSG_ERROR`` with error 0 (an acknowledgement) are skipped; messages
    are read at 4-byte alignment.

    Raises :class:`NetlinkError` for a truncated header, an ``nlmsg_len``
    shorter than a header or running past the buffer, a payload shorter than
    ``inet_diag_msg``, an unexpected sequence number, an unknown or unexpected
    address family, a state number that is not valid for the protocol, or an
    unknown message type; :class:`portwatch.model.SourceUnavailable` for an
    ``NLMSG_ERROR`` (or a failed ``NLMSG_DONE``) whose errno says the kernel
    lacks sock_diag support (ENOENT, EPROTONOSUPPORT, EAFNOSUPPORT,
    EOPNOTSUPP), and ``OSError`` with that errno for any other error.
    """
    sockets: list[Socket] = [] if out is None else out
    end = len(data) if length is None else length
    if end > len(data) or end < 0:
        raise NetlinkError(f"length {end} outside a buffer of {len(data)} bytes", 0)
    states = _STATE_TABLES[protocol]
    proto_name = protocol.value
    append = sockets.append
    unpack_msg = _MSG.unpack_from
    new = tuple.__new__  # Socket._make / Endpoint._make without their Python-level wrapper
    af_inet, af_inet6 = _socket.AF_INET, _socket.AF_INET6
    v4_ok, v6_ok = family in (None, af_inet), family in (None, af_inet6)
    fam_v4, fam_v6 = Family.IPV4, Family.IPV6
    zero16 = _ZERO16
    # Endpoints repeat (a listener's port on every accepted socket, a server's
    # address on every client socket): build each (raw address, port) once per
    # buffer, and convert each raw address once. One pair of caches per family,
    # keyed by the raw 16 bytes (the kernel zeroes the unused 12 of IPv4).
    ep4: dict[tuple[bytes, int], Endpoint] = {}
    ep6: dict[tuple[bytes, int], Endpoint] = {}
    ip4: dict[bytes, str] = {}
    ip6: dict[bytes, str] = {}
    # The message and the INET_DIAG_CGROUP_ID attribute where the previous
    # message had it, in one unpack; ``cg_end`` is where that attribute ends.
    cg_at = _CGROUP_GUESS
    unpack_full, full_len = _msg_with_cgroup(cg_at)
    cg_end = full_len  # where that attribute ends, from the message's start
    cg_tag = _CGROUP_TAG
    off = 0
    while off < end:
        left = end - off
        if left >= full_len:
            (nlen, ntype, nseq, fam, st, sport, dport, src, dst, uid,
             inode, tag, cgid) = unpack_full(data, off)
        elif left >= _MSG_LEN:
            (nlen, ntype, nseq, fam, st, sport, dport, src, dst, uid,
             inode) = unpack_msg(data, off)
            tag = 0
        else:
            ntype = 0
        if (ntype == msg_type and nlen >= _MSG_LEN and nlen <= left
                and (seq is None or nseq == seq)):
            # ---- the hot path: one inet_diag_msg ----
            if fam == af_inet and v4_ok:
                sock_family = fam_v4
                eps = ep4
                ips = ip4
            elif fam == af_inet6 and v6_ok:
                sock_family = fam_v6
                eps = ep6
                ips = ip6
            elif fam in (af_inet, af_inet6):
                raise NetlinkError(
                    f"address family {fam} in a dump of family {family}", off + _HDR_LEN)
            else:
                raise NetlinkError(
                    f"unknown address family {fam} in inet_diag_msg", off + _HDR_LEN)
            state = states[st]
            if state is None:
                raise NetlinkError(
                    f"unknown {proto_name} state {st} in inet_diag_msg", off + _HDR_LEN + 1)
            # Endpoints are cached by the raw (network order) port: the byte
            # swap is paid once per endpoint built, not once per socket.
            local = eps.get((src, sport))
            if local is None:
                local = _new_endpoint(eps, ips, src, sport, fam)
            if dport == 0 and dst == zero16:
                remote = None
            else:
                remote = eps.get((dst, dport))
                if remote is None:
                    remote = _new_endpoint(eps, ips, dst, dport, fam)
            if tag != cg_tag or nlen < cg_end:
                if nlen > _MSG_LEN:
                    cgid, found_at = find_cgroup_id(data, off + _MSG_LEN, off + nlen)
                    if found_at >= 0 and found_at != cg_at:
                        cg_at = found_at
                        unpack_full, full_len = _msg_with_cgroup(cg_at)
                        cg_end = full_len
                else:
                    cgid = None
            append(new(Socket, (protocol, sock_family, state, local, remote, inode, uid,
                                cgid)))
            off += (nlen + 3) & ~3
            continue
        # ---- everything else: control messages and malformed data ----
        if left < _HDR_LEN:
            raise NetlinkError(
                f"truncated netlink header: {left} bytes left, a header needs {_HDR_LEN}", off)
        nlen, ntype, _flags, nseq, _pid = _NLMSGHDR.unpack_from(data, off)
        if nlen < _HDR_LEN:
            raise NetlinkError(f"nlmsg_len {nlen} is shorter than the {_HDR_LEN}-byte header", off)
        if nlen > left:
            raise NetlinkError(
                f"nlmsg_len {nlen} runs past the end of the buffer ({left} bytes left)", off)
        if seq is not None and nseq != seq:
            raise NetlinkError(f"unexpected sequence number {nseq} (expected {seq})", off)
        what = proto_name if family is None else f"{proto_name}/{family_name(family)}"
        if ntype == NLMSG_DONE:
            if nlen >= _HDR_LEN + 4:
                (status,) = _INT.unpack_from(data, off + _HDR_LEN)
                if status < 0:
                    raise _status_failure(status, what, off)
            return sockets, True
        if ntype == NLMSG_ERROR:
            if nlen < _HDR_LEN + 4:
                raise NetlinkError(f"NLMSG_ERROR of {nlen} bytes has no error code", off)
            (status,) = _INT.unpack_from(data, off + _HDR_LEN)
            if status != 0:
                raise _status_failure(status, what, off)
        elif ntype == msg_type:
            raise NetlinkError(
                f"inet_diag_msg payload of {nlen - _HDR_LEN} bytes is shorter than "
                f"the {_MSG_LEN - _HDR_LEN}-byte struct inet_diag_msg", off)
        elif ntype == NLMSG_OVERRUN:
            raise NetlinkError("NLMSG_OVERRUN: the kernel dropped dump data", off)
        elif ntype != NLMSG_NOOP:
            raise NetlinkError(f"unexpected netlink message type {ntype}", off)
        off += (nlen + 3) & ~3
    return sockets, False


def dump_ended(data: bytes | bytearray | memoryview, *, length: int, seq: int, msg_type: int,
               protocol: Protocol, family: int | None = None) -> bool:
    """Whether this datagram of a dump is its last: what a reader that keeps datagrams unparsed asks.

    Walks the message headers of ``data[:length]`` (and each answer's family
    and state byte) only. True at the dump's ``NLMSG_DONE`` (of sequence
    ``seq``). At anything :func:`parse_messages` would raise for (malformed
    data, a failure status) it raises what that parser raises, at once: the
    datagram is handed to it, so the two cannot disagree on the error.
    ``NLMSG_NOOP`` and acknowledgements are skipped, as the parser skips them.
    """
    unpack = _NLMSGHDR.unpack_from
    states = _STATE_TABLES[protocol]
    af_inet, af_inet6 = _socket.AF_INET, _socket.AF_INET6
    off = 0
    while off + _HDR_LEN <= length:
        nlen, ntype, _flags, nseq, _pid = unpack(data, off)
        if nlen < _HDR_LEN or nlen > length - off or nseq != seq:
            break
        if ntype == msg_type:
            if nlen < _MSG_LEN:
                break
            fam, st = data[off + _HDR_LEN], data[off + _HDR_LEN + 1]
            if (fam != af_inet and fam != af_inet6) or (family is not None and fam != family) \
                    or states[st] is None:
                break
        elif ntype == NLMSG_DONE:
            if nlen >= _HDR_LEN + 4 and _INT.unpack_from(data, off + _HDR_LEN)[0] < 0:
                break
            return True
        elif ntype == NLMSG_ERROR:
            if nlen < _HDR_LEN + 4 or _INT.unpack_from(data, off + _HDR_LEN)[0] != 0:
                break
        elif ntype != NLMSG_NOOP:
            break
        off += (nlen + 3) & ~3
    else:
        if off >= length:
            return False
    # something the parser raises for: let it say what, as it would have
    parse_messages(data, protocol=protocol, seq=seq, family=family, length=length, msg_type=msg_type)
    return True  # (not reached unless the two disagree: end the dump rather than wait)


def raw_port(port: int) -> int:
    """``port`` as the parser reads an inet_diag port field: network order, read in host order."""
    return ((port & 0xFF) << 8) | (port >> 8) if not _BIG_ENDIAN else port


# What the classifying parser reads of a message: nlmsghdr (without flags and port id),
# family, state, ports (host order), addresses.
_CLASSIFY: Final = struct.Struct("=IH2xI4x" "BBxx" "HH16s16s")
_BOTH_FAMILIES: Final = (_socket.AF_INET, _socket.AF_INET6)


def _accelerator() -> Callable[..., int] | None:
    """The C loop of the plain sockets, ``None`` when setup.py did not build it (no compiler)."""
    try:
        from portwatch.collect._classify import count
    except ImportError:
        return None
    return count


#: The C loop :func:`count_messages` runs by default, ``None`` when it was not built.
ACCELERATOR: Final = _accelerator()

#: TCP state numbers (include/net/tcp_states.h) the classifying parser tests.
_TCP_LISTEN: Final = 10
_TCP_CLOSE_WAIT: Final = 8
_TCP_ORPHAN: Final = (6, 12)  # TIME_WAIT, NEW_SYN_RECV: no detector but the counts looks at them
#: Per kernel state number: 0 not a TCP state, 1 a full socket, 2 a TIME_WAIT or NEW_SYN_RECV mini socket.
_PLAIN_STATES: Final = bytes(0 if n not in KERNEL_TCP_STATES else 2 if n in _TCP_ORPHAN else 1
                             for n in range(256))


class Tally:
    """What :func:`count_messages` adds up, and the look-up tables it classifies with.

    Made once per read. Takes the usable ephemeral ports as the range (low,
    high) and the ports of it that are not usable (reserved, or with a TCP
    listener: what is left is what :func:`portwatch.detect.destination_usage`
    counts), the ports of interest (any socket holding one is kept), and the
    TCP listeners' local endpoints as (raw 16-byte address, port) — all-zero
    address for a wildcard listener. With ``take_listeners`` the dump itself
    brings the listeners: :func:`count_messages` builds every LISTEN socket
    into ``listeners`` and adds it to the tables (the kernel sends its
    listening hash before the other sockets; ``late`` says one came after
    another socket had been classified, so the classification must be redone
    with :meth:`again`).

    After the dump: ``states[n]`` is the number of sockets in kernel state
    ``n`` (the sockets in ``listeners`` are not in it); ``usage`` maps
    (family, raw local address, raw remote address, raw remote port) to the
    sockets counted there; ``kept`` the sockets built; ``buffers`` the
    (bytes, sequence number, family, message type) of every buffer read, for
    :meth:`members` (and the connected local ports,
    :func:`counted_totals`).
    """

    def __init__(self, port_range: tuple[int, int], unusable: frozenset[int], interest: frozenset[int],
                 listeners: frozenset[tuple[bytes, int]], take_listeners: bool = False) -> None:
        self.port_range = port_range
        self.unusable = unusable
        usable = bytearray(_range_table(max(port_range[0], 0), min(port_range[1], 0xFFFF)))
        for port in unusable:
            if 0 <= port <= 0xFFFF:
                usable[raw_port(port)] = 0
        self.usable = usable
        self.interest = _port_table(interest)
        self.interest_ports = interest
        self.wildcard = bytearray(_port_table(frozenset(port for addr, port in listeners if addr == _ZERO16)))
        self.specific: set[tuple[bytes, int]] = {(addr, raw_port(port)) for addr, port in listeners
                                                 if addr != _ZERO16}
        self.specific_port = bytearray(65536)  # 1 at the raw port of each specific listener
        for _, port in self.specific:
            self.specific_port[port] = 1
        self.listeners: list[Socket] | None = [] if take_listeners else None
        self.late = False
        self.states = [0] * 256
        self.usage: dict[tuple[int, bytes, bytes, int], int] = {}
        self.kept: list[Socket] = []
        self.buffers: list[tuple[bytes, int, int | None, int]] = []

    def listen(self, sock: Socket) -> None:
        """Add the TCP listener ``sock`` (one :func:`count_messages` built) to the tables."""
        port = raw_port(sock.local.port)
        self.usable[port] = 0
        addr = raw_ip(sock.local.ip)
        if addr == _ZERO16:
            self.wildcard[port] = 1
        else:
            self.specific.add((addr, port))
            self.specific_port[port] = 1
        if any(self.states):
            self.late = True

    def release(self) -> None:
        """Drop the look-up tables (192 KiB) once the dump is classified; ``states``, ``usage``,
        ``kept``, ``listeners`` and ``buffers`` stay (:meth:`members`,
        :meth:`again` work on). :func:`count_messages` must not be given this tally again."""
        self.usable = self.wildcard = self.specific_port = bytearray()
        self.interest = b""

    def again(self) -> Tally:
        """A new tally of the same buffers, classified with every listener known from the start.

        For a dump whose listeners did not all come first (``late``). Pure.
        """
        known = list(self.listeners or ())
        # not taking listeners: every LISTEN message is counted as a plain socket, then taken off below
        redo = Tally(self.port_range, self.unusable | {s.local.port for s in known}, self.interest_ports,
                     frozenset((raw_ip(s.local.ip), s.local.port) for s in known))
        for data, seq, family, msg_type in self.buffers:
            count_messages(data, redo, seq=seq, length=len(data), family=family, msg_type=msg_type)
        redo.states[_TCP_LISTEN] -= len(known)
        redo.listeners = known
        return redo

    def members(self, keys: frozenset[tuple[str, str, int]]) -> tuple[Socket, ...]:
        """Every TCP socket of the buffers read whose (local ip, remote ip, remote port) is in ``keys``.

        Re-parses the buffers with :func:`parse_messages`; dump order. Pure.
        """
        return tuple(s for s in self.parsed()
                     if s.remote is not None and (s.local.ip, s.remote.ip, s.remote.port) in keys)

    def parsed(self) -> Iterator[Socket]:
        """Every TCP socket of the buffers read, built again with :func:`parse_messages`; dump order. Pure."""
        for data, seq, family, msg_type in self.buffers:
            yield from parse_messages(data, protocol=Protocol.TCP, seq=seq, family=family, msg_type=msg_type)[0]


def raw_ip(ip: str) -> bytes:
    """The 16-byte inet_diag address field of ``ip`` (an IPv4 address in the first 4 bytes)."""
    if ":" in ip:
        return _socket.inet_pton(_socket.AF_INET6, ip)
    return _socket.inet_pton(_socket.AF_INET, ip) + bytes(12)


@functools.lru_cache(maxsize=4)
def _range_table(low: int, high: int) -> bytes:
    """A 65536-byte table indexed by raw (network order) port number: 1 for the ports low..high."""
    host = bytearray(65536)
    if low <= high:
        host[low:high + 1] = b"\x01" * (high - low + 1)
    return _raw_order(host)


# Cached (this and the range's table): the scan of many namespaces asks for the same ones again
@functools.lru_cache(maxsize=16)
def _port_table(ports: frozenset[int]) -> bytes:
    """A 65536-byte table: 1 at the raw (network order) number of each of ``ports``."""
    table = bytearray(65536)
    for port in ports:
        if 0 <= port <= 0xFFFF:
            table[raw_port(port)] = 1
    return bytes(table)


def _raw_order(host: bytearray) -> bytes:
    """A 65536-byte table indexed by port number, re-indexed by raw (network order) number."""
    if _BIG_ENDIAN:
        return bytes(host)
    # raw number of port hi*256+lo is lo*256+hi: the 256x256 table transposed
    return b"".join(host[lo::256] for lo in range(256))


def count_messages(
    data: bytes | bytearray | memoryview,
    tally: Tally,
    *,
    seq: int,
    length: int,
    family: int | None = None,
    msg_type: int = SOCK_DIAG_BY_FAMILY,
    accelerator: Callable[..., int] | None = ACCELERATOR,
) -> bool:
    """Classify one receive buffer of a TCP dump: count every socket, build only those kept.

    Like :func:`parse_messages` (same arguments, same checks and errors: a
    message the fast path does not take is handed to it) but for TCP, and
    instead of a list it fills ``tally``: every socket is counted by state,
    and by destination when its local port is usable
    (``tally.usage``); a :class:`~portwatch.model.Socket` is built (into
    ``tally.kept``, by :func:`parse_messages`) only for a socket some
    detector looks at: CLOSE_WAIT, connected to itself, holding a port of
    interest, or connected with no TCP listener on either end and not a
    TIME_WAIT or NEW_SYN_RECV mini socket. A listener is built into
    ``tally.listeners`` instead when the tally takes them. A copy of the
    buffer goes to ``tally.buffers``. Returns whether ``NLMSG_DONE`` ended
    the dump. ``accelerator`` (default :data:`ACCELERATOR`, the C loop of
    ``portwatch.collect._classify`` when it was built; ``None``: this loop
    alone) counts the plain sockets and stops at each message this loop must
    handle, with the same tally as without it.
    """
    end = length
    if end > len(data) or end < 0:
        raise NetlinkError(f"length {end} outside a buffer of {len(data)} bytes", 0)
    chunk = bytes(data[:end])
    tally.buffers.append((chunk, seq, family, msg_type))
    states, usage = tally.states, tally.usage
    usable, interest, wildcard, specific = tally.usable, tally.interest, tally.wildcard, tally.specific
    specific_port = tally.specific_port
    kept, listeners = tally.kept, tally.listeners
    taken: list[Socket] = listeners if listeners is not None else []
    get = usage.get
    unpack_msg = _CLASSIFY.unpack_from
    families = _BOTH_FAMILIES if family is None else (family,)
    plain, cw = _PLAIN_STATES, _TCP_CLOSE_WAIT
    listen = _TCP_LISTEN if listeners is not None else -1
    zero16 = _ZERO16
    view = memoryview(chunk)
    fam_a, fam_b = families[0], families[-1]
    off = 0
    while off < end:
        if accelerator is not None:
            off = accelerator(chunk, off, end, seq, msg_type, fam_a, fam_b, listen, cw, plain, states, usage,
                              usable, interest, wildcard, specific_port, specific)
            if off >= end:
                break
        left = end - off
        if left >= _MSG_LEN:
            (nlen, ntype, nseq, fam, st, sport, dport, src, dst) = unpack_msg(chunk, off)
            if ntype == msg_type and _MSG_LEN <= nlen <= left and nseq == seq and fam in families:
                kind = plain[st]  # 0: not a TCP state, 1: a full socket, 2: a mini socket
                if kind:
                    if st == listen:
                        parse_messages(view[off:off + nlen], protocol=Protocol.TCP, seq=seq,
                                       family=family, out=taken, msg_type=msg_type)
                        tally.listen(taken[-1])
                    else:
                        states[st] += 1
                        if dport or dst != zero16:
                            if usable[sport]:
                                key = (fam, src, dst, dport)
                                usage[key] = get(key, 0) + 1
                            if (st == cw or interest[sport] or (sport == dport and src == dst)
                                    or (kind == 1 and not wildcard[sport] and not wildcard[dport]
                                        and not (specific_port[sport] and (src, sport) in specific)
                                        and not (specific_port[dport] and (dst, dport) in specific))):
                                parse_messages(view[off:off + nlen], protocol=Protocol.TCP, seq=seq,
                                               family=family, out=kept, msg_type=msg_type)
                    off += (nlen + 3) & ~3
                    continue
        # anything else (control messages, malformed data): one message, or the rest, parsed fully
        step = left
        if left >= _HDR_LEN:
            (nlen,) = struct.unpack_from("=I", chunk, off)
            if _HDR_LEN <= nlen <= left:
                step = min((nlen + 3) & ~3, left)
        try:
            _, done = parse_messages(view[off:off + step], protocol=Protocol.TCP, seq=seq,
                                     family=family, out=kept, msg_type=msg_type)
        except NetlinkError as exc:
            raise NetlinkError(str(exc).rsplit(" (at offset", 1)[0], off + exc.offset) from None
        if done:
            return True
        off += step
    return False


_TCP_STATE_VALUES: Final = {number: state.value for number, state in KERNEL_TCP_STATES.items()}


def counted_totals(tally: Tally, built: list[Socket]) -> SocketCounts:
    """The :class:`~portwatch.model.SocketCounts` of a counted read: ``tally`` (the classified TCP
    dump) plus ``built`` (the sockets of the other dumps, every one built). Pure."""
    by_state = count_states(built)
    for number, n in enumerate(tally.states):
        if n:
            key = (Protocol.TCP.value, _TCP_STATE_VALUES[number])
            by_state[key] = by_state.get(key, 0) + n
    usage: dict[Destination, int] = {}
    ips: dict[tuple[int, bytes], str] = {}
    for (fam, src, dst, dport), n in tally.usage.items():
        local = ips.get((fam, src))
        if local is None:
            local = ips[(fam, src)] = fast_ip(src, fam)
        remote = ips.get((fam, dst))
        if remote is None:
            remote = ips[(fam, dst)] = fast_ip(dst, fam)
        dest = Destination(local, remote, raw_port(dport))
        usage[dest] = usage.get(dest, 0) + n

    def connected_ports() -> frozenset[int]:  # the TCP dump parsed again: asked for only by one detector
        return frozenset(s.local.port for s in (*built, *tally.parsed()) if s.remote is not None)

    def members(destinations: Collection[Destination]) -> tuple[Socket, ...]:
        return tally.members(frozenset((d.local_ip, d.remote_ip, d.remote_port) for d in destinations))

    return SocketCounts(total=sum(by_state.values()), by_state=by_state, usage=usage,
                        connected_ports=connected_ports, members=members)


def family_name(family: int) -> str:
    """'ipv4' / 'ipv6' / 'family N'."""
    known = _FAMILIES.get(family)
    return known.value if known is not None else f"family {family}"


#: What :func:`recv_nowait` returns when the kernel dropped messages for want of buffer (ENOBUFS).
OVERRUN: Final = -1


def recv_nowait(recv_into: Callable[[Any], int], buf: Any) -> int | None:
    """One read of a non-blocking netlink socket into ``buf``, the way every listener reads.

    Returns the number of bytes read, ``None`` when nothing is queued
    (EAGAIN), or :data:`OVERRUN` when the kernel reports lost messages
    (ENOBUFS: the socket stays usable, the caller counts the loss). EINTR is
    retried by Python itself (PEP 475). Raises ``OSError`` for any other error.
    """
    try:
        return recv_into(buf)
    except BlockingIOError:
        return None
    except OSError as err:
        if err.errno != _errno.ENOBUFS:
            raise
        return OVERRUN


def run_dump(sock: _socket.socket, request: bytes, parse: Callable[[int], bool], view: memoryview, *,
             deadline: float, late: str, what: str | None = None,
             idle: Callable[[], bool] | None = None) -> None:
    """Send one sock_diag dump ``request`` on ``sock`` and hand its answers to ``parse`` until it says done.

    Takes a ``NETLINK_SOCK_DIAG`` socket, the request bytes, ``parse(n)``
    (called once per datagram from the kernel, held in ``view[:n]``; returns
    whether that datagram ended the dump), the receive buffer, the
    ``time.monotonic()`` deadline of the dump and ``late``, the message of
    the ``TimeoutError`` raised when the deadline passes before the request
    is sent or while an answer is awaited. Datagrams not from the kernel
    (port id 0) are skipped. With ``what`` (the dump's name in messages), a
    request refused with an errno of :data:`UNAVAILABLE_ERRNOS` raises
    :func:`errno_failure`'s exception. With ``idle`` the socket is read
    without blocking (``settimeout(0)``: no ``poll`` before each datagram)
    and ``idle()`` is called whenever no datagram is ready, before waiting
    for one; it returns whether the dump is over (``parse`` may then only
    keep what it is given, and ``idle`` read it all: the kernel makes the
    next datagram of a dump while the previous one is received, so with a
    real kernel that happens once, after the last). Raises
    :class:`NetlinkError` for a datagram longer than ``view``, ``OSError``
    from the socket and whatever ``parse`` or ``idle`` raise.
    """
    size = len(view)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(late)
    sock.settimeout(remaining)
    try:
        sock.sendto(request, (0, 0))
    except OSError as exc:
        if what is not None and exc.errno in UNAVAILABLE_ERRNOS:
            raise errno_failure(exc.errno or 0, what) from exc
        raise
    recv = sock.recvfrom_into
    if idle is not None:
        sock.settimeout(0.0)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(late)
        if idle is None:
            n, addr = _recv_within(sock, view, remaining, late)
        else:
            try:
                n, addr = recv(view, size, _socket.MSG_TRUNC)
            except BlockingIOError:
                if idle():
                    return
                try:  # wait for the next one, then read without blocking again
                    n, addr = _recv_within(sock, view, deadline - time.monotonic(), late)
                finally:
                    sock.settimeout(0.0)
        if n > size:
            raise NetlinkError(f"datagram of {n} bytes truncated to the {size}-byte receive buffer", size)
        if addr[0] != 0:  # not from the kernel (port id 0): not ours to read
            continue
        if parse(n):
            return


def _recv_within(sock: _socket.socket, view: memoryview, remaining: float, late: str) -> tuple[int, Any]:
    """The next datagram on ``sock`` (into ``view``, ``MSG_TRUNC``), waited for at most ``remaining``
    seconds (the socket's timeout is set to it). Raises ``TimeoutError(late)`` when none comes in time."""
    if remaining <= 0:
        raise TimeoutError(late)
    sock.settimeout(remaining)
    try:
        got: tuple[int, Any] = sock.recvfrom_into(view, len(view), _socket.MSG_TRUNC)
    except TimeoutError as exc:  # what socket.timeout is
        raise TimeoutError(late) from exc
    return got
