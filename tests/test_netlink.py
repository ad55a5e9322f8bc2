"""Tests of the sock_diag socket source: the parser on crafted bytes, the
fallback when the kernel has no sock_diag, and real dumps of real sockets in a
network namespace compared with the psutil source."""

from __future__ import annotations

import errno
import ipaddress
import json
import random
import selectors
import socket
import struct
import sys
import textwrap
import time
from typing import Any

import pytest

from portwatch.model import (
    Endpoint,
    Family,
    KernelSettings,
    PortRange,
    Protocol,
    Socket,
    SocketState,
    SourceUnavailable,
    normalize_ip,
)
from portwatch.collect import netlink
from portwatch.collect.netlink import (
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    SOCK_DIAG_BY_FAMILY,
    NetlinkError,
    build_request,
    fast_ip,
    parse_messages,
)
from portwatch.collect.sources.netlink import InUse, NetlinkSource
from tests.netns import NetNS

AF4, AF6 = int(socket.AF_INET), int(socket.AF_INET6)
NLM_F_MULTI = 2


# --- crafting kernel answers (written independently of the module's structs) ---

def v4(text: str) -> bytes:
    """16-byte idiag address field of an IPv4 address (kernel zeroes the rest)."""
    return socket.inet_aton(text) + bytes(12)


def v6(text: str) -> bytes:
    """16-byte idiag address field of an IPv6 address."""
    return socket.inet_pton(socket.AF_INET6, text)


def nlmsg(msg_type: int, payload: bytes, seq: int = 1, flags: int = NLM_F_MULTI,
          length: int | None = None, pad: bool = True) -> bytes:
    """One netlink message: header + payload (+ padding to 4 bytes)."""
    total = 16 + len(payload) if length is None else length
    raw = struct.pack("=IHHII", total, msg_type, flags, seq, 4242) + payload
    if pad:
        raw += bytes(-len(raw) % 4)
    return raw


def diag(family: int = AF4, state: int = 1, sport: int = 40000, dport: int = 8080,
         src: bytes | None = None, dst: bytes | None = None, uid: int = 1000,
         inode: int = 555, attrs: bytes = b"", seq: int = 1) -> bytes:
    """One SOCK_DIAG_BY_FAMILY message carrying a struct inet_diag_msg (+ attributes)."""
    if src is None:
        src = v4("127.0.0.1") if family == AF4 else v6("::1")
    if dst is None:
        dst = v4("127.0.0.2") if family == AF4 else v6("::2")
    body = (struct.pack("=BBBB", family, state, 0, 0) + struct.pack(">HH", sport, dport)
            + src + dst + struct.pack("=I", 0) + b"\xff" * 8
            + struct.pack("=IIIII", 0, 0, 0, uid, inode) + attrs)
    return nlmsg(SOCK_DIAG_BY_FAMILY, body, seq=seq)


def done(seq: int = 1, status: int = 0) -> bytes:
    """An NLMSG_DONE with its int status."""
    return nlmsg(NLMSG_DONE, struct.pack("=i", status), seq=seq)


def error(err: int, seq: int = 1) -> bytes:
    """An NLMSG_ERROR carrying -err and the (echoed) request header."""
    return nlmsg(NLMSG_ERROR, struct.pack("=i", -err) + build_request(seq, AF4, 6, 2)[:16],
                 seq=seq, flags=0)


TCP, UDP = Protocol.TCP, Protocol.UDP


# --- the parser ---

def test_valid_messages_parse_despite_attributes_and_alignment_until_done() -> None:
    # a 5-byte attribute (INET_DIAG_SHUTDOWN-like) makes nlmsg_len unaligned: padding follows
    attr = struct.pack("=HH", 5, 8) + b"\x00"
    data = (diag(state=1, sport=40001, dport=8080, uid=1000, inode=777, attrs=attr)
            + diag(state=10, sport=8080, dport=0, dst=bytes(16), uid=0, inode=778)
            + done())
    sockets, finished = parse_messages(data, protocol=TCP, seq=1, family=AF4)
    assert finished
    assert sockets == [
        Socket(TCP, Family.IPV4, SocketState.ESTABLISHED, Endpoint("127.0.0.1", 40001),
               Endpoint("127.0.0.2", 8080), 777, 1000),
        Socket(TCP, Family.IPV4, SocketState.LISTEN, Endpoint("127.0.0.1", 8080), None, 778, 0),
    ]
    assert all(type(s) is Socket and type(s.local) is Endpoint for s in sockets)


def test_ports_whose_bytes_mirror_each_other_stay_apart_and_endpoints_are_shared() -> None:
    # 258 is 0x0102 and 513 is 0x0201: the parser caches endpoints by the raw (network order)
    # port, so the two must not be confused on either side, in one buffer.
    data = (diag(sport=258, dport=513, src=v4("10.0.0.1"), dst=v4("10.0.0.1"), inode=1)
            + diag(sport=513, dport=258, src=v4("10.0.0.1"), dst=v4("10.0.0.1"), inode=2)
            + diag(sport=258, dport=0, src=v4("10.0.0.1"), dst=bytes(16), state=10, inode=3)
            + done())
    sockets, _ = parse_messages(data, protocol=TCP, seq=1, family=AF4)
    a, b, listener = sockets
    assert (a.local, a.remote) == (Endpoint("10.0.0.1", 258), Endpoint("10.0.0.1", 513))
    assert (b.local, b.remote) == (Endpoint("10.0.0.1", 513), Endpoint("10.0.0.1", 258))
    assert listener.local == Endpoint("10.0.0.1", 258) and listener.remote is None
    # one object per endpoint within the buffer, whichever side it was seen on first
    assert a.local is b.remote is listener.local and a.remote is b.local


def test_ipv6_addresses_parse_and_ipv4_mapped_ones_become_ipv4() -> None:
    data = (diag(AF6, state=1, src=v6("::ffff:127.0.0.1"), dst=v6("::ffff:10.0.0.9"),
                 sport=8443, dport=50000)
            + diag(AF6, state=1, src=v6("fe80::1:0:0:1"), dst=v6("2001:db8::1"))
            + diag(AF6, state=10, src=v6("::"), dst=v6("::"), dport=0, sport=22))
    sockets, finished = parse_messages(data, protocol=TCP)
    assert not finished
    assert [(s.family, s.local, s.remote) for s in sockets] == [
        (Family.IPV6, Endpoint("127.0.0.1", 8443), Endpoint("10.0.0.9", 50000)),
        (Family.IPV6, Endpoint("fe80::1:0:0:1", 40000), Endpoint("2001:db8::1", 8080)),
        (Family.IPV6, Endpoint("::", 22), None),
    ]


def test_udp_states_and_tcp_mini_sockets_are_kept() -> None:
    udp = (diag(state=7, sport=5353, dport=0, dst=bytes(16), inode=9)
           + diag(state=1, sport=41000, dport=53, inode=10))
    sockets, _ = parse_messages(udp, protocol=UDP)
    assert [(s.protocol, s.state, s.remote) for s in sockets] == [
        (UDP, SocketState.UNCONN, None),
        (UDP, SocketState.ESTABLISHED, Endpoint("127.0.0.2", 53)),
    ]
    # TIME_WAIT and NEW_SYN_RECV are mini sockets: inode 0, uid 0, kept
    tcp = diag(state=6, uid=0, inode=0) + diag(state=12, uid=0, inode=0)
    sockets, _ = parse_messages(tcp, protocol=TCP)
    assert [(s.state, s.inode, s.uid) for s in sockets] == [
        (SocketState.TIME_WAIT, 0, 0), (SocketState.NEW_SYN_RECV, 0, 0)]


def test_multi_part_dump_appends_to_out_and_honours_length() -> None:
    out: list[Socket] = []
    first = diag(sport=1) + diag(sport=2)
    _, finished = parse_messages(first, protocol=TCP, seq=1, out=out)
    assert not finished and len(out) == 2
    # the second datagram sits in a larger buffer: only `length` bytes are valid
    second = diag(sport=3) + done()
    buf = bytearray(second + b"\xee" * 100)
    result, finished = parse_messages(memoryview(buf), protocol=TCP, seq=1, out=out,
                                      length=len(second))
    assert finished and result is out
    assert [s.local.port for s in out] == [1, 2, 3]


def test_noop_and_ack_are_skipped() -> None:
    data = nlmsg(NLMSG_NOOP, b"") + error(0) + diag() + done()
    sockets, finished = parse_messages(data, protocol=TCP, seq=1)
    assert finished and len(sockets) == 1


def test_missing_trailing_padding_is_accepted() -> None:
    data = diag(attrs=b"\x01") [:-3]  # 89 bytes, no padding after the last message
    sockets, _ = parse_messages(data, protocol=TCP)
    assert len(sockets) == 1


def test_truncated_header_is_a_netlink_error() -> None:
    data = diag() + b"\x10\x00\x00\x00\x03\x00"
    with pytest.raises(NetlinkError, match=r"truncated netlink header: 6 bytes left.*offset 88"):
        parse_messages(data, protocol=TCP)


def test_nlmsg_len_larger_than_the_buffer_is_a_netlink_error() -> None:
    data = diag()[:60]
    with pytest.raises(NetlinkError, match=r"nlmsg_len 88 runs past the end.*60 bytes left.*offset 0"):
        parse_messages(data, protocol=TCP)
    with pytest.raises(NetlinkError, match="nlmsg_len 88 runs past"):
        parse_messages(diag() + diag(), protocol=TCP, length=120)


def test_nlmsg_len_shorter_than_its_header_is_a_netlink_error() -> None:
    data = diag() + nlmsg(NLMSG_DONE, b"\0\0\0\0", length=8)
    with pytest.raises(NetlinkError, match=r"nlmsg_len 8 is shorter than the 16-byte header.*offset 88"):
        parse_messages(data, protocol=TCP)


def test_payload_shorter_than_inet_diag_msg_is_a_netlink_error() -> None:
    short = nlmsg(SOCK_DIAG_BY_FAMILY, bytes(40))
    with pytest.raises(NetlinkError, match=r"payload of 40 bytes is shorter than the 72-byte"):
        parse_messages(short + done(), protocol=TCP)


def test_length_outside_the_buffer_is_rejected() -> None:
    with pytest.raises(NetlinkError, match="length 500 outside a buffer of 88 bytes"):
        parse_messages(diag(), protocol=TCP, length=500)


def test_nlmsg_error_with_errno_is_oserror() -> None:
    with pytest.raises(OSError) as info:
        parse_messages(diag(AF6) + error(errno.EPERM), protocol=UDP, seq=1, family=AF6)
    assert info.value.errno == errno.EPERM
    assert not isinstance(info.value, SourceUnavailable)
    assert "udp/ipv6" in str(info.value) and "not permitted" in str(info.value)


def test_nlmsg_error_enoent_means_unavailable() -> None:
    with pytest.raises(SourceUnavailable, match=r"no sock_diag support for udp/ipv4 \(ENOENT"):
        parse_messages(error(errno.ENOENT), protocol=UDP, seq=1, family=AF4)
    with pytest.raises(SourceUnavailable, match="EPROTONOSUPPORT"):
        parse_messages(error(errno.EPROTONOSUPPORT), protocol=TCP)


def test_done_with_a_negative_status_is_an_error() -> None:
    with pytest.raises(OSError) as info:
        parse_messages(diag() + done(status=-errno.ENOBUFS), protocol=TCP)
    assert info.value.errno == errno.ENOBUFS


@pytest.mark.parametrize("status", [-2**31, -4096, 5, 2**31 - 1])
def test_error_status_that_is_no_errno_is_a_netlink_error_not_an_overflow(status: int) -> None:
    # -2**31 once raised OverflowError from os.strerror(2**31).
    with pytest.raises(NetlinkError, match=f"netlink error status {status} is not a negative errno"):
        parse_messages(nlmsg(NLMSG_ERROR, struct.pack("=i", status) + build_request(1, AF4, 6, 2)[:16]),
                       protocol=TCP)
    if status < 0:
        with pytest.raises(NetlinkError, match="is not a negative errno"):
            parse_messages(diag() + done(status=status), protocol=TCP)


def test_nlmsg_error_without_a_code_is_a_netlink_error() -> None:
    with pytest.raises(NetlinkError, match="NLMSG_ERROR of 18 bytes has no error code"):
        parse_messages(nlmsg(NLMSG_ERROR, b"\0\0", pad=True), protocol=TCP)


def test_unknown_address_family_is_a_netlink_error() -> None:
    with pytest.raises(NetlinkError, match=r"unknown address family 7 in inet_diag_msg.*offset 104"):
        parse_messages(diag() + diag(family=7, src=bytes(16), dst=bytes(16)), protocol=TCP)


def test_family_other_than_requested_is_a_netlink_error() -> None:
    with pytest.raises(NetlinkError, match="address family 10 in a dump of family 2"):
        parse_messages(diag(AF6), protocol=TCP, family=AF4)


@pytest.mark.parametrize("protocol,state", [(TCP, 0), (TCP, 13), (TCP, 255), (UDP, 2), (UDP, 10)])
def test_unknown_socket_state_is_a_netlink_error(protocol: Protocol, state: int) -> None:
    with pytest.raises(NetlinkError, match=rf"unknown {protocol.value} state {state} .*offset 17"):
        parse_messages(diag(state=state), protocol=protocol)


def test_unexpected_sequence_number_is_a_netlink_error() -> None:
    with pytest.raises(NetlinkError, match=r"unexpected sequence number 9 \(expected 1\).*offset 88"):
        parse_messages(diag() + diag(seq=9), protocol=TCP, seq=1)


def test_unknown_message_type_is_a_netlink_error() -> None:
    with pytest.raises(NetlinkError, match="unexpected netlink message type 99"):
        parse_messages(nlmsg(99, b""), protocol=TCP)


def test_build_request_lays_out_inet_diag_req_v2() -> None:
    req = build_request(7, AF6, socket.IPPROTO_UDP, 0x82)
    assert len(req) == 72
    assert struct.unpack_from("=IHHII", req) == (72, SOCK_DIAG_BY_FAMILY, 0x301, 7, 0)
    assert struct.unpack_from("=BBBxI", req, 16) == (AF6, socket.IPPROTO_UDP, 0, 0x82)
    assert req[24:] == bytes(48)


# --- fast address conversion equals model.normalize_ip ---

def _reference(raw: bytes, family: int) -> str:
    if family == AF4:
        return normalize_ip(str(ipaddress.IPv4Address(raw[:4])))
    return normalize_ip(str(ipaddress.IPv6Address(raw)))


def test_fast_ip_spells_addresses_as_normalize_ip_does() -> None:
    rng = random.Random(20240601)
    samples: list[bytes] = [
        bytes(16), bytes(15) + b"\x01", v6("::ffff:0.0.0.0"), v6("::ffff:127.0.0.1"),
        v6("::1.2.3.4"), v6("::0.1.0.0"), v6("::ffff:0:1.2.3.4"), v6("64:ff9b::1.2.3.4"),
        v6("1:0:0:1:0:0:0:1"), v6("1:0:0:0:1:0:0:1"), v6("0:1::"), v6("fe80::"),
        v6("::2:3:4:5:6:7:8"), v6("1:2:3:4:5:6:7::"), bytes(10) + b"\xff\xfe" + bytes(4),
    ]
    for _ in range(5000):  # random words with plenty of zero runs in random places
        words = [rng.choice((0, 0, 0, 1, 0xFFFF, rng.randrange(65536))) for _ in range(8)]
        samples.append(struct.pack(">8H", *words))
    for _ in range(2000):
        samples.append(bytes(10) + b"\xff\xff" + rng.randbytes(4))
        samples.append(bytes(12) + rng.randbytes(4))
        samples.append(rng.randbytes(16))
    for raw in samples:
        assert fast_ip(raw, AF6) == _reference(raw, AF6), raw.hex()
    for _ in range(2000):
        raw = rng.randbytes(4) + bytes(12)
        assert fast_ip(raw, AF4) == _reference(raw, AF4), raw.hex()
    # the parser's cached path gives the same strings
    msgs = b"".join(diag(AF6, src=raw, dst=raw, sport=1, dport=1) for raw in samples[:3000])
    sockets, _ = parse_messages(msgs, protocol=TCP)
    assert [s.local.ip for s in sockets] == [_reference(raw, AF6) for raw in samples[:3000]]


def test_fast_ip_rejects_bad_families_and_lengths() -> None:
    with pytest.raises(ValueError, match="unknown address family 3"):
        fast_ip(bytes(16), 3)
    with pytest.raises(ValueError, match="IPv6 address needs 16 bytes, got 4"):
        fast_ip(bytes(4), AF6)


# --- fallback: the one place a fake is legitimate (sock_diag cannot be unloaded here) ---

@pytest.mark.parametrize("err", [errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT])
def test_no_sock_diag_means_source_unavailable(err: int) -> None:
    def factory() -> socket.socket:
        raise OSError(err, "refused")
    with pytest.raises(SourceUnavailable, match="cannot open a NETLINK_SOCK_DIAG socket"):
        NetlinkSource(socket_factory=factory).read()


def test_other_socket_errors_are_oserror() -> None:
    def factory() -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")
    with pytest.raises(OSError) as info:
        NetlinkSource(socket_factory=factory).read()
    assert info.value.errno == errno.EMFILE and not isinstance(info.value, SourceUnavailable)


def test_netlink_source_rejects_a_small_buffer_and_no_timeout() -> None:
    with pytest.raises(ValueError, match="bufsize must be at least 32768"):
        NetlinkSource(bufsize=4096)
    with pytest.raises(ValueError, match="timeout must be positive"):
        NetlinkSource(timeout=0)


# --- real sockets in a network namespace ---

# Holds every kind of socket, prints READY + JSON (its sockets' inodes), then
# waits on stdin. Loops are bounded; every wait has a timeout.
ACTOR = textwrap.dedent('''
    import json, os, socket, sys, time
    keep = []
    def listener(fam, addr, v6only=None):
        s = socket.socket(fam, socket.SOCK_STREAM)
        if v6only is not None:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        s.bind(addr); s.listen(64); keep.append(s); return s
    def pair(lst, fam, addr):
        c = socket.create_connection(addr, timeout=5) if fam == socket.AF_INET else socket.socket(fam)
        if fam != socket.AF_INET:
            c.settimeout(5); c.connect(addr)
        lst.settimeout(5); a, _ = lst.accept(); return c, a
    l4 = listener(socket.AF_INET, ("127.0.0.1", 7001))
    l6 = listener(socket.AF_INET6, ("::1", 7002))
    ld = listener(socket.AF_INET6, ("::", 7003), v6only=0)
    lw = listener(socket.AF_INET, ("0.0.0.0", 7004))
    for _ in range(2):
        keep.extend(pair(l4, socket.AF_INET, ("127.0.0.1", 7001)))
    keep.extend(pair(l6, socket.AF_INET6, ("::1", 7002)))
    keep.extend(pair(ld, socket.AF_INET, ("127.0.0.1", 7003)))   # accepted side is v4-mapped
    keep.extend(pair(ld, socket.AF_INET6, ("::1", 7003)))
    # TIME_WAIT: the active closer (client) closes first, then the server
    for _ in range(3):
        c, a = pair(lw, socket.AF_INET, ("127.0.0.2", 7004))
        c.close(); time.sleep(0.05); a.close()
    # CLOSE_WAIT on the server; the client's orphan sits in FIN_WAIT2
    c, a = pair(l4, socket.AF_INET, ("127.0.0.1", 7001))
    c.close(); keep.append(a)
    # UDP: unconnected (bound) and connected, both families
    u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4.bind(("127.0.0.1", 5301)); keep.append(u4)
    u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind(("::1", 5302)); keep.append(u6)
    c4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c4.connect(("127.0.0.1", 5301)); keep.append(c4)
    c6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); c6.connect(("::1", 5302)); keep.append(c6)
    # bound but neither listening nor connecting: not in /proc/net/tcp, left out by netlink too
    b = socket.socket(); b.bind(("127.0.0.1", 7999)); keep.append(b)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # wait until the closes have settled
        st = open("/proc/net/tcp").read()
        if " 06 " in st and " 08 " in st:
            break
        time.sleep(0.02)
    inodes = {str(os.fstat(s.fileno()).st_ino): [s.family == socket.AF_INET6, s.type == socket.SOCK_STREAM]
              for s in keep}
    print("READY " + json.dumps({"uid": os.getuid(), "inodes": inodes}), flush=True)
    sys.stdin.readline()
''')

READER = textwrap.dedent('''
    import json, sys
    from portwatch.model import socket_to_dict
    from portwatch.collect.sources.netlink import NetlinkSource
    out = {"netlink": [socket_to_dict(s) for s in NetlinkSource().read().sockets]}
    if "psutil" in sys.argv:
        from portwatch.collect import PsutilSource
        out["psutil"] = [socket_to_dict(s) for s in PsutilSource().read().sockets]
    print(json.dumps(out))
''')


def start_actor(ns: NetNS) -> dict[str, Any]:
    """Start the actor in ``ns``; returns its READY document."""
    proc = ns.popen([sys.executable, "-c", ACTOR])
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(30):
        raise RuntimeError("actor not ready after 30s")
    line = proc.stdout.readline()
    assert line.startswith("READY "), f"actor failed: {line!r}"
    doc: dict[str, Any] = json.loads(line[len("READY "):])
    return doc


def read_in(ns: NetNS, *which: str) -> dict[str, list[dict[str, Any]]]:
    """Run the reader script in ``ns``; returns the JSON sockets per source."""
    result = ns.run([sys.executable, "-c", READER, *which], timeout=60)
    assert result.returncode == 0, result.stderr
    doc: dict[str, list[dict[str, Any]]] = json.loads(result.stdout)
    return doc


def key(d: dict[str, Any]) -> tuple[Any, ...]:
    """(protocol, family, state, local, remote) of a socket dict."""
    remote = (d["remote"]["ip"], d["remote"]["port"]) if d["remote"] else None
    return (d["protocol"], d["family"], d["state"], (d["local"]["ip"], d["local"]["port"]), remote)


def test_real_sockets_of_every_kind_are_read_with_their_inodes(netns: NetNS) -> None:
    actor = start_actor(netns)
    sockets = read_in(netns)["netlink"]
    keys = {key(d) for d in sockets}
    assert len(keys) == len(sockets), "duplicate sockets"
    expected = {
        ("tcp", "ipv4", "LISTEN", ("127.0.0.1", 7001), None),
        ("tcp", "ipv6", "LISTEN", ("::1", 7002), None),
        ("tcp", "ipv6", "LISTEN", ("::", 7003), None),
        ("tcp", "ipv4", "LISTEN", ("0.0.0.0", 7004), None),
        ("udp", "ipv4", "UNCONN", ("127.0.0.1", 5301), None),
        ("udp", "ipv6", "UNCONN", ("::1", 5302), None),
    }
    assert expected <= keys
    states = [(d["protocol"], d["family"], d["state"]) for d in sockets]
    assert states.count(("tcp", "ipv4", "TIME_WAIT")) == 3
    assert states.count(("tcp", "ipv4", "CLOSE_WAIT")) == 1
    assert states.count(("tcp", "ipv4", "FIN_WAIT2")) == 1
    assert states.count(("udp", "ipv4", "ESTABLISHED")) == 1
    assert states.count(("udp", "ipv6", "ESTABLISHED")) == 1
    # the dual-stack listener's accepted IPv4 connection: family ipv6, addresses as IPv4
    mapped = [d for d in sockets if d["family"] == "ipv6" and d["local"]["port"] == 7003
              and d["state"] == "ESTABLISHED" and d["local"]["ip"] == "127.0.0.1"]
    assert len(mapped) == 1 and mapped[0]["remote"]["ip"] == "127.0.0.1"
    # established pairs mirror each other
    est = {key(d) for d in sockets if d["protocol"] == "tcp" and d["state"] == "ESTABLISHED"}
    assert len(est) == 10
    for _, fam, _, local, remote in est:
        assert any(k[3] == remote and k[4] == local for k in est), (local, remote)
    # the bound-only socket (port 7999) is not reported, as in /proc/net/tcp
    assert not any(d["local"]["port"] == 7999 for d in sockets)
    # uids and inodes: full sockets carry the kernel's inode and the owner's uid,
    # mini sockets (TIME_WAIT) carry 0; every socket the actor holds is there, once
    by_inode = {d["inode"]: d for d in sockets if d["inode"] > 0}
    for d in sockets:
        if d["state"] == "TIME_WAIT":
            assert (d["inode"], d["uid"]) == (0, 0)
        elif d["state"] != "FIN_WAIT2":  # the orphan lost its file
            assert d["inode"] > 0 and d["uid"] == actor["uid"]
    held = {int(i) for i in actor["inodes"]}
    held_bound_only = held - set(by_inode)
    assert len(held_bound_only) == 1  # only the bound-only socket is missing
    for inode in held & set(by_inode):
        is_v6, is_tcp = actor["inodes"][str(inode)]
        assert by_inode[inode]["family"] == ("ipv6" if is_v6 else "ipv4")
        assert by_inode[inode]["protocol"] == ("tcp" if is_tcp else "udp")


def test_netlink_reads_the_same_sockets_as_psutil(netns: NetNS) -> None:
    start_actor(netns)
    doc = read_in(netns, "psutil")
    ours = sorted(key(d) for d in doc["netlink"])
    theirs = sorted(key(d) for d in doc["psutil"])
    assert ours == theirs
    assert len(ours) == 23  # 4 listeners, 10 established, 3 TIME_WAIT, CLOSE_WAIT, FIN_WAIT2, 4 UDP


def test_empty_namespace_has_no_sockets(netns: NetNS) -> None:
    assert read_in(netns)["netlink"] == []


MANY = textwrap.dedent('''
    import json, os, socket
    from portwatch.collect.sources.netlink import NetlinkSource
    keep = []
    for i in range(2000):
        u = socket.socket(socket.AF_INET6 if i % 2 else socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("::1" if i % 2 else "127.0.0.1", 0)); keep.append(u)
    for i in range(300):
        t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen(1); keep.append(t)
    held = sorted(os.fstat(s.fileno()).st_ino for s in keep)
    small = NetlinkSource(bufsize=32768).read().sockets
    large = NetlinkSource(bufsize=1 << 20).read().sockets
    print(json.dumps({"held": held, "small": sorted(s.inode for s in small),
                      "large": sorted(s.inode for s in large), "same": small == large}))
''')


def test_many_sockets_arrive_exactly_once_across_datagrams(netns: NetNS) -> None:
    # 2,300 sockets take several datagrams per dump: every one arrives exactly once
    result = netns.run([sys.executable, "-c", MANY], timeout=60)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["held"]) == 2300
    assert doc["small"] == doc["held"] and doc["large"] == doc["held"]
    assert doc["same"]


# --- INET_DIAG_CGROUP_ID (attribute 21) ---

def nlattr(attr_type: int, value: bytes) -> bytes:
    """One netlink attribute: length, type, value, padded to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(value), attr_type) + value
    return raw + bytes(-len(raw) % 4)


def cgroup_attr(cgroup_id: int) -> bytes:
    """INET_DIAG_CGROUP_ID carrying ``cgroup_id``."""
    return nlattr(21, struct.pack("=Q", cgroup_id))


SHUTDOWN, CLASS_ID, SOCKOPT = nlattr(8, b"\0"), nlattr(15, bytes(4)), nlattr(22, b"\x52\0")


def test_cgroup_id_is_read_wherever_the_attribute_sits_and_none_without_it() -> None:
    data = (diag(inode=1, attrs=SHUTDOWN + CLASS_ID + cgroup_attr(4242) + SOCKOPT)  # Linux 6.x
            + diag(inode=2, attrs=SHUTDOWN + cgroup_attr(7))  # an older kernel: no class id
            + diag(inode=3, attrs=SHUTDOWN + cgroup_attr(8))  # same place as the one before
            + diag(inode=4, attrs=SHUTDOWN + CLASS_ID + cgroup_attr(1 << 40))
            + diag(inode=5, state=6)  # TIME_WAIT mini socket: no attributes at all
            + diag(inode=6, attrs=SHUTDOWN + CLASS_ID + SOCKOPT)  # no cgroup id (kernel < 5.8)
            + diag(inode=7, attrs=nlattr(21 | 0x8000, struct.pack("=Q", 99)))  # flag bit set
            + done())

    sockets, finished = parse_messages(data, protocol=TCP)

    assert finished
    assert [(s.inode, s.cgroup_id) for s in sockets] == [
        (1, 4242), (2, 7), (3, 8), (4, 1 << 40), (5, None), (6, None), (7, 99)]


def test_a_broken_attribute_list_leaves_the_cgroup_id_unknown_not_the_socket() -> None:
    short = struct.pack("=HH", 2, 21) + bytes(8)  # length below the 4-byte header
    overrun = struct.pack("=HH", 200, 21) + struct.pack("=Q", 5)  # runs past the message
    tiny = struct.pack("=HH", 8, 21) + bytes(4)  # type 21 but no room for a u64
    data = diag(inode=1, attrs=short) + diag(inode=2, attrs=overrun) + diag(inode=3, attrs=tiny)

    sockets, _ = parse_messages(data, protocol=TCP)

    assert [(s.inode, s.cgroup_id) for s in sockets] == [(1, None), (2, None), (3, None)]
    assert netlink.find_cgroup_id(cgroup_attr(9), 0, 12) == (9, 0)
    assert netlink.find_cgroup_id(SHUTDOWN + cgroup_attr(9), 0, 20) == (9, 8)
    assert netlink.find_cgroup_id(SHUTDOWN, 0, 8) == (None, -1)


# --- TCP of both families in one request (TCPDIAG_GETSOCK), as ss -t asks ---

def test_build_tcp_request_lays_out_inet_diag_req() -> None:
    req = netlink.build_tcp_request(9, 0xFFE)
    assert len(req) == 76
    assert struct.unpack_from("=IHHII", req) == (76, netlink.TCPDIAG_GETSOCK, 0x301, 9, 0)
    assert req[16:68] == bytes(52) and struct.unpack_from("=II", req, 68) == (0xFFE, 0)


def test_tcp_answers_of_both_families_parse_under_their_own_message_type() -> None:
    def typed(raw: bytes) -> bytes:  # the same message with nlmsg_type TCPDIAG_GETSOCK
        return raw[:4] + struct.pack("=H", netlink.TCPDIAG_GETSOCK) + raw[6:]

    data = typed(diag(AF4, inode=1)) + typed(diag(AF6, inode=2)) + done()

    sockets, finished = parse_messages(data, protocol=TCP, msg_type=netlink.TCPDIAG_GETSOCK)

    assert finished and [(s.family, s.inode) for s in sockets] == [
        (Family.IPV4, 1), (Family.IPV6, 2)]
    with pytest.raises(NetlinkError, match="unexpected netlink message type 18"):
        parse_messages(data, protocol=TCP)


class RefusesTcpCompat:
    """A real NETLINK_SOCK_DIAG socket whose kernel, it pretends, refuses TCPDIAG_GETSOCK (EINVAL)."""

    def __init__(self) -> None:
        self.real = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4)
        self.refusal = b""
        self.types: list[int] = []

    def sendto(self, data: bytes, address: tuple[int, int]) -> int:
        msg_type, _flags, seq = struct.unpack_from("=HHI", data, 4)
        self.types.append(msg_type)
        if msg_type == netlink.TCPDIAG_GETSOCK:
            self.refusal = error(errno.EINVAL, seq=seq)
            return len(data)
        return self.real.sendto(data, address)

    def recvfrom_into(self, view: memoryview, size: int, flags: int) -> tuple[int, Any]:
        if self.refusal:
            answer, self.refusal = self.refusal, b""
            view[:len(answer)] = answer
            return len(answer), (0, 0)
        return self.real.recvfrom_into(view, size, flags)

    def settimeout(self, value: float) -> None:
        self.real.settimeout(value)

    def close(self) -> None:
        self.real.close()


class ScriptedSocket:
    """A netlink socket stand-in that answers any request with scripted datagrams ``(bytes, sender port id)``.

    Non-blocking (``settimeout(0)``) with no datagram left it raises
    ``BlockingIOError``, as a socket does; blocking, ``IndexError`` (a real
    socket would wait for a datagram that never comes).
    """

    def __init__(self, answers: list[tuple[bytes, int]]) -> None:
        self.answers = answers
        self.sent: list[bytes] = []
        self.timeouts: list[float] = []

    def sendto(self, data: bytes, address: tuple[int, int]) -> int:
        assert address == (0, 0)
        self.sent.append(data)
        return len(data)

    def recvfrom_into(self, view: memoryview, size: int, flags: int) -> tuple[int, tuple[int, int]]:
        assert flags == socket.MSG_TRUNC
        if not self.answers and self.timeouts and self.timeouts[-1] == 0:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        data, sender = self.answers.pop(0)
        kept = data[:size]  # the kernel cuts a datagram to the buffer; MSG_TRUNC returns its real length
        view[:len(kept)] = kept
        return len(data), (sender, 0)

    def settimeout(self, value: float) -> None:
        self.timeouts.append(value)


def test_a_dump_reads_the_kernel_datagrams_until_done_and_skips_other_senders() -> None:
    ours = diag(sport=40001) + diag(sport=40002)
    sock = ScriptedSocket([(diag(sport=1), 4242), (ours, 0), (done(), 0)])
    view = memoryview(bytearray(1 << 16))
    found: list[Socket] = []

    def parse(n: int) -> bool:
        return parse_messages(view, protocol=TCP, seq=1, out=found, length=n)[1]

    request = build_request(1, AF4, 6, 2)
    netlink.run_dump(sock, request, parse, view, deadline=time.monotonic() + 5, late="late")  # type: ignore[arg-type]
    assert sock.sent == [request]
    assert [s.local.port for s in found] == [40001, 40002]  # not port 1, from port id 4242
    assert sock.answers == [] and all(0 < t <= 5 for t in sock.timeouts)


def test_a_dump_past_its_deadline_raises_the_callers_timeout_without_sending() -> None:
    sock = ScriptedSocket([(done(), 0)])
    with pytest.raises(TimeoutError, match="^dump of x: too late$"):
        netlink.run_dump(sock, build_request(1, AF4, 6, 2), lambda n: True,  # type: ignore[arg-type]
                         memoryview(bytearray(64)), deadline=time.monotonic() - 1, late="dump of x: too late")
    assert sock.sent == []


def test_a_datagram_longer_than_the_buffer_is_a_netlink_error_not_a_short_parse() -> None:
    sock = ScriptedSocket([(diag() + diag() + done(), 0)])
    with pytest.raises(NetlinkError, match="truncated to the 64-byte receive buffer"):
        netlink.run_dump(sock, build_request(1, AF4, 6, 2), lambda n: True,  # type: ignore[arg-type]
                         memoryview(bytearray(64)), deadline=time.monotonic() + 5, late="late")


def test_a_read_stops_at_a_malformed_answer_as_the_parser_does_without_waiting_for_more() -> None:
    def typed(raw: bytes) -> bytes:  # the message with nlmsg_type TCPDIAG_GETSOCK, as the TCP request gets
        return raw[:4] + struct.pack("=H", netlink.TCPDIAG_GETSOCK) + raw[6:]

    # Nothing follows the bad answer: a fetch that waited for the dump's end would ask the
    # scripted socket for a datagram it does not have (IndexError), not raise the parser's error.
    sock = ScriptedSocket([(typed(diag()) + typed(diag(family=7, src=bytes(16), dst=bytes(16))), 0)])
    sock.close = lambda: None  # type: ignore[attr-defined]
    with pytest.raises(NetlinkError, match="unknown address family 7"):
        NetlinkSource(socket_factory=lambda: sock).read()  # type: ignore[arg-type,return-value]
    assert len(sock.sent) == 1


def test_a_counted_read_classifies_what_has_come_and_stops_at_a_malformed_answer() -> None:
    def typed(raw: bytes) -> bytes:  # the message with nlmsg_type TCPDIAG_GETSOCK, as the TCP request gets
        return raw[:4] + struct.pack("=H", netlink.TCPDIAG_GETSOCK) + raw[6:]

    settings = KernelSettings(PortRange(32768, 60999))
    listener = typed(diag(state=10, sport=8080, dport=0, src=bytes(16), dst=bytes(16)))
    others = typed(diag(state=1, sport=40000, dport=40000)) + typed(diag(state=1, sport=40002, dport=8080))
    # One dump of every state: the kernel sends its listening hash first. A self-connect, one
    # client of the listener (not kept: a listener on its remote end), and one usage count.
    for answers, late in (([(listener + others[:88], 0), (others[88:] + done(), 0)], False),
                          ([(others + listener, 0), (done(), 0)], True)):  # a listener last: classified again
        good = ScriptedSocket(answers)
        good.close = lambda: None  # type: ignore[attr-defined]
        table, counts = NetlinkSource().count(good, settings, in_use=InUse(tcp=3, udp=0))  # type: ignore[arg-type]
        assert good.answers == [] and len(good.sent) == 1  # no UDP dump: sockstat counts none
        assert sorted(s.local.port for s in table.sockets) == [8080, 40000], late
        assert counts.by_state == {("tcp", "LISTEN"): 1, ("tcp", "ESTABLISHED"): 2} and counts.total == 3
        assert sum(counts.usage.values()) == 2  # 8080 is no usable port: the listener's end is not counted
    # Nothing follows the bad answer: a read that waited for the dump's end would ask the
    # scripted socket for a datagram it does not have (IndexError), not raise the parser's error.
    # It is classified when no more is ready (BlockingIOError), as the good ones were.
    bad = ScriptedSocket([(typed(diag()) + typed(diag(family=7, src=bytes(16), dst=bytes(16))), 0)])
    bad.close = lambda: None  # type: ignore[attr-defined]
    with pytest.raises(NetlinkError, match="unknown address family 7"):
        NetlinkSource().count(bad, settings)  # type: ignore[arg-type]
    assert len(bad.sent) == 1


def test_a_kernel_refusing_the_two_family_tcp_request_is_asked_per_family(netns: NetNS) -> None:
    code = textwrap.dedent("""
        import json, socket
        from portwatch.collect.sources.netlink import NetlinkSource
        from tests.test_netlink import RefusesTcpCompat
        v4, v6 = socket.socket(socket.AF_INET), socket.socket(socket.AF_INET6)
        v4.bind(("127.0.0.1", 21020)); v6.bind(("::1", 21021))
        v4.listen(); v6.listen()
        fakes = []
        def factory():
            fakes.append(RefusesTcpCompat())
            return fakes[-1]
        from portwatch.model import KernelSettings, PortRange
        settings = KernelSettings(PortRange(32768, 60999))
        source = NetlinkSource(socket_factory=factory)
        tables = [source.read(), source.read()]
        counted_source = NetlinkSource(socket_factory=factory)
        tables += [counted_source.read_counted(settings)[0], counted_source.read_counted(settings)[0]]
        print(json.dumps({"ports": [sorted(s.local.port for s in t.sockets) for t in tables],
                          "types": [f.types for f in fakes]}))
    """)
    out = json.loads(netns.run([sys.executable, "-c", code], check=True).stdout)
    assert out["ports"] == [[21020, 21021]] * 4
    # asked once, then per family; the counted read the same way (one TCP dump of every state)
    assert out["types"] == [[18, 20, 20, 20, 20], [20, 20, 20, 20]] * 2


# --- the classifying parser (counted reads) ---

#: The loops of the classifier: the pure Python one, and the C one where it was built.
LOOPS = [None, *([netlink.ACCELERATOR] if netlink.ACCELERATOR is not None else [])]


@pytest.mark.parametrize("loop", LOOPS, ids=lambda loop: "python" if loop is None else "c")
def test_classifying_parser_counts_every_socket_and_builds_only_those_detectors_look_at(loop: Any) -> None:
    server = v4("127.0.0.9")
    tally = netlink.Tally((40000, 40009), frozenset({40005}), frozenset({2379}),
                          frozenset({(bytes(16), 8080), (server, 9000)}))
    data = (diag(state=1, sport=40001, dport=8080, inode=1)           # client of a wildcard listener
            + diag(state=1, sport=8080, dport=40001, inode=2)         # its accepted end
            + diag(state=1, sport=40002, dport=9000, dst=server, inode=3)  # client of a specific one
            + diag(state=6, sport=40003, dport=8080, inode=0, uid=0)  # TIME_WAIT: counted only
            + diag(state=8, sport=40004, dport=8080, inode=4)         # CLOSE_WAIT: kept
            + diag(state=1, sport=40006, dport=40006, dst=v4("127.0.0.1"), inode=5)  # self-connect
            + diag(state=1, sport=2379, dport=8080, inode=6)          # port of interest: kept
            + diag(state=1, sport=40007, dport=40008, inode=7)        # no listener either end: kept
            + diag(state=6, sport=40008, dport=40009, inode=0, uid=0)  # mini socket: counted only
            + done())
    assert netlink.count_messages(data, tally, seq=1, length=len(data), accelerator=loop)
    assert sorted(s.inode for s in tally.kept) == [4, 5, 6, 7]
    assert tally.states[1] == 6 and tally.states[6] == 2 and tally.states[8] == 1
    assert sum(tally.states) == 9
    # usage: local port in 40000-40009 and not 40005; keyed by raw fields
    used = {(socket.inet_ntoa(src[:4]), socket.inet_ntoa(dst[:4]), netlink.raw_port(dport)): n
            for (_fam, src, dst, dport), n in tally.usage.items()}
    assert used == {("127.0.0.1", "127.0.0.2", 8080): 3, ("127.0.0.1", "127.0.0.9", 9000): 1,
                    ("127.0.0.1", "127.0.0.1", 40006): 1, ("127.0.0.1", "127.0.0.2", 40008): 1,
                    ("127.0.0.1", "127.0.0.2", 40009): 1}
    members = tally.members(frozenset({("127.0.0.1", "127.0.0.2", 8080)}))
    assert [s.inode for s in members] == [1, 0, 4, 6]  # every socket towards it, in dump order


@pytest.mark.parametrize("loop", LOOPS, ids=lambda loop: "python" if loop is None else "c")
def test_classifying_parser_rejects_what_the_full_parser_rejects(loop: Any) -> None:
    tally = netlink.Tally((40000, 40009), frozenset(), frozenset(), frozenset())
    data = diag(state=1) + diag(state=99) + done()
    with pytest.raises(NetlinkError, match="unknown tcp state 99"):
        netlink.count_messages(data, tally, seq=1, length=len(data), accelerator=loop)
    data = diag(seq=7) + done(seq=7)
    with pytest.raises(NetlinkError, match="unexpected sequence number 7"):
        netlink.count_messages(data, netlink.Tally((1, 2), frozenset(), frozenset(), frozenset()),
                               seq=1, length=len(data), accelerator=loop)
