"""The pure transient detector: destroy events in, the scan's findings (marked transient) out."""

from __future__ import annotations

import pytest

from portwatch.detect import loop_pair, self_connect
from portwatch.detect.transient import TransientDetector
from portwatch.model import (
    DestroyEvent,
    Endpoint,
    Family,
    KernelSettings,
    Kind,
    PortRange,
    ProcessInfo,
    Protocol,
    Severity,
    Snapshot,
    Socket,
    SocketState,
    TcpInfo,
)

T0 = 1_800_000_000.0
LO = "127.0.0.1"
INFO = TcpInfo(bytes_sent=5, bytes_acked=6, bytes_received=6, retransmits=1)


def ev(at: float, local: tuple[str, int], remote: tuple[str, int] | None,
       protocol: Protocol = Protocol.TCP, cookie: int = 1) -> DestroyEvent:
    """A destroy event at ``T0 + at``."""
    return DestroyEvent(T0 + at, protocol, Family.IPV4, SocketState.CLOSE, Endpoint(*local),
                        Endpoint(*remote) if remote else None, cookie, INFO if protocol is Protocol.TCP else None)


def scan_key_of_self_connect(port: int) -> str:
    """The key the scan gives a live self-connect on ``127.0.0.1:port``."""
    sock = Socket(Protocol.TCP, Family.IPV4, SocketState.ESTABLISHED, Endpoint(LO, port), Endpoint(LO, port), 7)
    (finding,) = self_connect.find_self_connects(Snapshot(KernelSettings(PortRange(32768, 60999)), (sock,)))
    return finding.key


def test_destroyed_socket_connected_to_itself_is_a_transient_self_connect() -> None:
    det = TransientDetector()
    (f,) = det.observe([ev(0, (LO, 40000), (LO, 40000))])
    assert f.kind is Kind.SELF_CONNECT and f.severity is Severity.CRITICAL
    assert f.key == scan_key_of_self_connect(40000)
    assert f.port == 40000 and f.protocol is Protocol.TCP
    assert f.details["transient"] is True and f.details["count"] == 1
    assert f.details["first_seen"] == f.details["last_seen"] == "2027-01-15T08:00:00.000Z"
    assert f.details["tcp_info"] == {"bytes_sent": 5, "bytes_acked": 6, "bytes_received": 6, "retransmits": 1}
    assert "connected to itself" in f.summary and "not in the kernel's destroy event" in f.summary
    assert "ip_local_reserved_ports" in (f.remediation or "")
    assert f.processes == ()


def test_repeated_self_connects_are_counted_in_the_window_and_expire_after_it() -> None:
    det = TransientDetector(window=10)
    det.observe([ev(0, (LO, 40000), (LO, 40000))])
    (f,) = det.observe([ev(3, (LO, 40000), (LO, 40000)), ev(4, (LO, 40000), (LO, 40000))])
    assert f.details["count"] == 3 and "seen 3 times" in f.summary
    assert f.details["first_seen"] < f.details["last_seen"]
    (late,) = det.observe([ev(13.5, (LO, 40000), (LO, 40000))])
    assert late.details["count"] == 2  # the events at 0 and 3 left the 10 s window
    assert [x.key for x in det.current(T0 + 20)] == [f.key]
    assert det.expire(T0 + 20) == []
    assert [x.key for x in det.expire(T0 + 24)] == [f.key]
    assert det.current(T0 + 24) == []


def test_known_owner_of_the_tuple_is_named_in_the_summary() -> None:
    proc = ProcessInfo(pid=4242, name="flaky-test")
    owners = {(Endpoint(LO, 40000), Endpoint(LO, 40000)): (proc,)}
    (f,) = TransientDetector().observe([ev(0, (LO, 40000), (LO, 40000))], owners=owners)
    assert f.processes == (proc,)
    assert "flaky-test[4242]" in f.summary and "not in the kernel's destroy event" not in f.summary


def test_socket_a_scan_reported_is_not_reported_again() -> None:
    key = scan_key_of_self_connect(40000)
    assert TransientDetector().observe([ev(0, (LO, 40000), (LO, 40000))], seen_keys={key}) == []


def test_mirrored_sockets_destroyed_together_without_listener_are_a_transient_loop_pair() -> None:
    det = TransientDetector()
    first = det.observe([ev(0, (LO, 41000), (LO, 41001), cookie=1)])
    (f,) = det.observe([ev(0.2, (LO, 41001), (LO, 41000), cookie=2)], namespace="ns-a")
    assert first == []
    assert f.kind is Kind.LOOP_PAIR and f.severity is loop_pair.DETECTOR.severity
    a = Socket(Protocol.TCP, Family.IPV4, SocketState.ESTABLISHED, Endpoint(LO, 41001), Endpoint(LO, 41000), 1)
    b = Socket(Protocol.TCP, Family.IPV4, SocketState.ESTABLISHED, Endpoint(LO, 41000), Endpoint(LO, 41001), 2)
    (scan,) = loop_pair.find_loop_pairs(Snapshot(KernelSettings(PortRange(32768, 60999)), (a, b)), {})
    assert f.key == scan.key
    assert f.details["transient"] is True and f.details["namespace"] == "ns-a"
    assert f.details["cookies"] == [1, 2] and set(f.details["tcp_info"]) == {f"{LO}:41000", f"{LO}:41001"}
    assert "connected to each other" in f.summary and "not in the kernel's destroy event" in f.summary


def test_ordinary_connections_refused_connects_and_udp_make_nothing() -> None:
    det = TransientDetector()
    events = [
        ev(0, (LO, 50000), (LO, 8080)), ev(0.01, (LO, 8080), (LO, 50000)),  # client and server of 8080
        ev(0.02, ("0.0.0.0", 50001), (LO, 0)),  # refused connect: tuple mangled
        ev(0.03, (LO, 50002), (LO, 50002), protocol=Protocol.UDP),  # UDP
        ev(0.04, (LO, 50003), None),  # a socket that never connected
    ]
    assert det.observe(events, listening_ports={8080}) == []


def test_pair_with_a_listener_destroyed_just_before_is_an_ordinary_connection() -> None:
    det = TransientDetector()
    events = [ev(0, (LO, 45000), None), ev(0.1, (LO, 45000), (LO, 50000)), ev(0.2, (LO, 50000), (LO, 45000))]
    assert det.observe(events) == []


def test_mirrored_sockets_destroyed_far_apart_are_not_a_pair() -> None:
    det = TransientDetector(pair_window=1)
    assert det.observe([ev(0, (LO, 41000), (LO, 41001)), ev(5, (LO, 41001), (LO, 41000))]) == []


def test_unmatched_sockets_are_bounded() -> None:
    det = TransientDetector(max_pending=10)
    det.observe([ev(0, (LO, 41000), (LO, 41001))])
    det.observe([ev(0, (LO, 42000 + i), (LO, 43000 + i)) for i in range(10)])
    assert det.observe([ev(0.1, (LO, 41001), (LO, 41000))]) == []  # 41000's end was evicted


def test_detector_rejects_a_window_that_is_not_positive() -> None:
    with pytest.raises(ValueError):
        TransientDetector(window=0)
