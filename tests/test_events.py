"""The destroy-event listener, with real sockets in namespaces the tests create.

The listener's socket is made in a thread that entered the test namespace
(``setns``) and read from the test's main thread after that thread ended, the
way the daemon will use it. The sockets whose destruction is watched are made
the same way, in threads inside the namespace; every loop is bounded.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys
import threading
import time
from typing import Callable, TypeVar

import pytest

from portwatch.collect import discover_namespaces
from portwatch.collect.eventwatch import EventWatcher
from portwatch.collect.events import DEFAULT_BUFFER_BYTES, DestroyListener, open_destroy_socket, parse_destroy_events
from portwatch.collect.netlink import NetlinkError
from portwatch.detect.transient import TransientDetector
from portwatch.model import DestroyEvent, Endpoint, Kind, NamespaceInfo, Protocol
from tests.netns import NetNS

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
LO = "127.0.0.1"
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns: NetNS, fn: Callable[[], T], timeout: float = 120.0) -> T:
    """Run ``fn`` in a new thread that entered ``ns`` first; its result (or its exception)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"namespace thread still running after {timeout}s"
    if failure:
        raise failure[0]
    return result[0]


def listener_in(ns: NetNS, buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> DestroyListener:
    """A listener whose socket a namespace thread made (the thread has ended when it returns)."""
    sock = in_netns(ns, open_destroy_socket)
    return DestroyListener(lambda: sock, buffer_bytes=buffer_bytes)


def drain(listener: DestroyListener, want: Callable[[list[DestroyEvent]], bool],
          deadline: float = 20.0, quiet: float = 0.5) -> list[DestroyEvent]:
    """Read until ``want(events)`` holds and nothing came for ``quiet`` s, or ``deadline`` s passed."""
    events: list[DestroyEvent] = []
    end = time.monotonic() + deadline
    last = time.monotonic()
    while time.monotonic() < end:
        batch = listener.read()
        events += batch.events
        if batch.events or batch.more:
            last = time.monotonic()
        elif want(events) and time.monotonic() - last > quiet:
            break
        else:
            time.sleep(0.01)
    return events


def self_connect_once(port: int, lifetime: float) -> tuple[int, int]:
    """Connect to ``127.0.0.1:port`` until connected to itself; hold ``lifetime`` s, close (FIN).

    Returns (attempts, local port). Raises AssertionError after 5,000 attempts.
    """
    for attempt in range(1, 5001):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2)
        try:
            sock.connect((LO, port))
        except ConnectionRefusedError:
            sock.close()
            continue
        local, remote = sock.getsockname(), sock.getpeername()
        time.sleep(lifetime)
        sock.close()
        assert local == remote, f"connected to a listener from {local}"
        return attempt, int(local[1])
    raise AssertionError(f"no self-connect to port {port} in 5000 attempts")


def simultaneous_open_then_close(ports: tuple[int, int]) -> None:
    """Two sockets on 127.0.0.1 connect to each other's port at once (no listener), then close.

    Loopback delivers A's SYN inside connect(), before B exists, and B's port
    answers RST: A is made deaf to it (sends with TTL 255, accepts only TTL
    255 with IP_MINTTL; the RST comes with 64), B then connects and its SYN
    meets A in SYN_SENT. Both end ESTABLISHED and mirrored.
    """
    a, b = socket.socket(), socket.socket()
    try:
        for sock, port in ((a, ports[0]), (b, ports[1])):
            sock.bind((LO, port))
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
        a.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_MINTTL", 21), 255)
        a.connect_ex((LO, ports[1]))
        b.connect_ex((LO, ports[0]))
        for _ in range(200):
            states = [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] for s in (a, b)]
            if states == [1, 1]:
                break
            time.sleep(0.01)
        assert states == [1, 1], f"not both ESTABLISHED: {states}"
        assert a.getpeername() == b.getsockname() and b.getpeername() == a.getsockname()
        a.setblocking(True)
        a.sendall(b"ping")
        time.sleep(0.02)
    finally:
        a.close()
        b.close()


def ordinary_traffic(port: int, connections: int, refused: int) -> int:
    """``connections`` client/server exchanges with a listener on ``port``, ``refused`` refused connects.

    Half the connections are closed by the client first, half by the
    server. Returns how many connects were refused.
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LO, port))
    listener.listen(128)
    try:
        for i in range(connections):
            cli = socket.create_connection((LO, port), timeout=5)
            srv, _ = listener.accept()
            cli.sendall(b"x")
            srv.recv(1)
            first, second = (cli, srv) if i % 2 else (srv, cli)
            first.close()
            second.close()
    finally:
        listener.close()
    count = 0
    for _ in range(refused):
        with socket.socket() as sock:
            count += sock.connect_ex((LO, port + 1)) != 0
    return count


def udp_sockets(count: int) -> None:
    """Create and close ``count`` UDP sockets: ``count`` destroy events, as fast as Python goes."""
    for _ in range(count):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()


# ----------------------------------------------------------------- the listener


def test_listener_made_in_a_namespace_thread_gets_that_namespace_events(netns: NetNS) -> None:
    with listener_in(netns) as listener:
        assert listener.forced and listener.buffer_bytes >= DEFAULT_BUFFER_BYTES
        in_netns(netns, lambda: ordinary_traffic(8080, 3, 0))
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()  # the test's own namespace: not seen
        events = drain(listener, lambda e: len(e) >= 7)
    tcp = [e for e in events if e.protocol is Protocol.TCP]
    assert len(tcp) == 7 and len(events) == 7  # 3 clients, 3 accepted, 1 listener
    assert {e.local for e in tcp if e.remote is None} == {Endpoint(LO, 8080)}
    pairs = [e for e in tcp if e.remote is not None]
    assert all(e.info is not None and e.info.bytes_received >= 1 for e in pairs)
    assert len({e.cookie for e in events}) == 7
    assert listener.dropped_total == 0 and listener.events_total == 7


def test_self_connect_living_20_ms_is_a_destroy_event_and_a_transient_finding(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40009")
    with listener_in(netns) as listener:
        attempts, port = in_netns(netns, lambda: self_connect_once(40000, 0.02))
        events = drain(listener, lambda e: any(x.local == x.remote for x in e))
    selfs = [e for e in events if e.local == e.remote]
    assert [e.local for e in selfs] == [Endpoint(LO, 40000)] and port == 40000
    assert len(events) >= attempts  # each refused attempt is an event too
    findings = TransientDetector().observe(events)
    assert [f.kind for f in findings] == [Kind.SELF_CONNECT]
    (f,) = findings
    assert f.port == 40000 and f.details["transient"] is True and f.details["count"] == 1
    assert f.details["tcp_info"] is not None and "not in the kernel's destroy event" in f.summary


def test_simultaneous_open_then_close_is_a_transient_loop_pair(netns: NetNS) -> None:
    with listener_in(netns) as listener:
        in_netns(netns, lambda: simultaneous_open_then_close((41000, 41001)))
        events = drain(listener, lambda e: len(e) >= 2)
    (f,) = TransientDetector().observe(events)
    assert f.kind is Kind.LOOP_PAIR and f.details["transient"] is True
    assert {f.details["a"], f.details["b"]} == {f"{LO}:41000", f"{LO}:41001"}


def test_ten_thousand_ordinary_connections_make_no_finding(netns: NetNS) -> None:
    with listener_in(netns) as listener:
        refused = in_netns(netns, lambda: ordinary_traffic(8080, 10_000, 100))
        events = drain(listener, lambda e: len(e) >= 20_101)
    assert refused == 100
    assert len(events) == 20_101 and listener.dropped_total == 0
    assert TransientDetector().observe(events, listening_ports={8080}) == []


def test_burst_of_30000_events_with_16_mib_loses_none(netns: NetNS) -> None:
    # read while the burst runs, as the daemon's event thread does: 30,000 unread events
    # (about 1.1 KiB of buffer each) are at the very edge of a 2 x 16 MiB buffer, so
    # leaving them all unread would test the kernel's accounting, not the listener
    with listener_in(netns) as listener:
        got: list[list[DestroyEvent]] = []
        reader = threading.Thread(
            target=lambda: got.append(drain(listener, lambda e: len(e) >= 30_000, deadline=90.0)),
            daemon=True)
        reader.start()
        in_netns(netns, lambda: udp_sockets(30_000))
        reader.join(120.0)
        assert not reader.is_alive() and got, "the reader did not finish"
    (events,) = got
    assert (len(events), listener.dropped_total) == (30_000, 0), (
        f"{len(events)} events, {listener.dropped_total} dropped, buffer {listener.buffer_bytes} bytes")


def test_burst_into_a_small_buffer_counts_the_drops_and_says_events_were_lost(netns: NetNS) -> None:
    with listener_in(netns, buffer_bytes=64 * 1024) as listener:
        assert listener.forced and listener.buffer_bytes == 128 * 1024
        in_netns(netns, lambda: udp_sockets(30_000))
        batch = listener.read(max_events=100_000)
        rest = drain(listener, lambda e: True)
    assert batch.lost and batch.dropped_total >= 1 and listener.dropped_total >= 1
    assert len(batch.events) + len(rest) < 30_000


def test_without_cap_net_admin_the_buffer_is_capped_by_rmem_max(netns: NetNS) -> None:
    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    code = ("from portwatch.collect.events import DestroyListener as L\n"
            "with L() as l: print(l.forced, l.buffer_bytes)")
    run = netns.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
                     sys.executable, "-c", code])
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", str(2 * min(rmem_max, DEFAULT_BUFFER_BYTES))]


# ----------------------------------------------------------------- the parser


def test_parser_rejects_truncated_messages() -> None:
    with pytest.raises(NetlinkError):
        parse_destroy_events(b"\x00" * 8, 0.0)
    with pytest.raises(NetlinkError):  # a SOCK_DIAG_BY_FAMILY message shorter than inet_diag_msg
        parse_destroy_events(struct.pack("=IHHII", 40, 20, 0, 0, 0) + bytes(24), 0.0)


def test_parser_skips_control_messages() -> None:
    assert parse_destroy_events(struct.pack("=IHHII", 16, 1, 0, 0, 0), 0.0) == []


# ----------------------------------------------------------------- several namespaces


def discovered(ns: NetNS) -> NamespaceInfo:
    """The discovered description of the test namespace ``ns``."""
    (info,) = [i for i in discover_namespaces().namespaces if f"/run/netns/{ns.name}" in i.paths]
    return info


def test_watcher_reads_each_namespace_on_its_own_and_follows_them(netns: NetNS) -> None:
    other = NetNS()
    try:
        a, b = discovered(netns), discovered(other)
        with EventWatcher() as watcher:
            done = watcher.sync([a, b])
            assert set(done.opened) == {a, b} and not done.failed and not done.skipped
            in_netns(netns, lambda: udp_sockets(3))
            in_netns(other, lambda: udp_sockets(5))
            got: dict[int, int] = {}
            end = time.monotonic() + 10
            while sum(got.values()) < 8 and time.monotonic() < end:
                for batch in watcher.poll(0.2):
                    assert not batch.lost and batch.error is None and batch.dropped == 0
                    got[batch.namespace.inode] = got.get(batch.namespace.inode, 0) + len(batch.events)
            assert got == {a.inode: 3, b.inode: 5}
            listener_b = watcher.listener(b)
            assert listener_b is not None
            done = watcher.sync([a])
            assert done.closed == (b,) and watcher.namespaces == (a,) and listener_b.fileno() == -1
            assert watcher.poll(0.05) == []
    finally:
        other.close()


def test_watcher_that_may_not_enter_namespaces_watches_only_its_own(netns: NetNS) -> None:
    own = next(i for i in discover_namespaces().namespaces if i.own)
    with EventWatcher(can_enter=False) as watcher:
        done = watcher.sync([own, discovered(netns)])
        assert done.opened == (own,) and done.skipped == (discovered(netns),) and not done.failed
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
        batches = [b for _ in range(20) for b in watcher.poll(0.1) if b.events]
        assert batches and all(b.namespace == own for b in batches)


def test_watcher_tells_the_tcp_listeners_of_a_namespace_now(netns: NetNS) -> None:
    info = discovered(netns)
    server, _ = netns.actor("listen", "--port", "8085", "--port", "9095")
    with EventWatcher() as watcher:
        assert watcher.listening_ports(info) is None  # not watched
        watcher.sync([info])
        assert watcher.listening_ports(info) == frozenset({8085, 9095})
        netns.stop(server)
        assert watcher.listening_ports(info) == frozenset()
