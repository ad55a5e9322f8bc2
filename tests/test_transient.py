"""The pure transient detector: destroy events in, the scan's findings (marked transient) out."""

from __future__ import annotations

import dataclasses

import pytest

from portwatch.config.types import Config, IgnoreRule
from portwatch.detect import loop_pair, self_connect
from portwatch.detect.transient import NamespaceTransients, TransientBook, TransientDetector
from portwatch.model import (
    DestroyEvent,
    Endpoint,
    Family,
    Finding,
    KernelSettings,
    Kind,
    NamespaceInfo,
    NamespaceKind,
    PortRange,
    ProcessInfo,
    Protocol,
    ScanResult,
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


# ----------------------------------------------------------------- several namespaces, scans


NS_BLUE = NamespaceInfo(inode=4026532999, dev=4, kind=NamespaceKind.NAMED, name="blue", paths=("/run/netns/blue",))
NS_HOST = NamespaceInfo(inode=4026531840, dev=4, kind=NamespaceKind.HOST, name="host", own=True)


def scan_of(ns: NamespaceInfo, sockets: tuple[Socket, ...], listening: tuple[int, ...] = (),
            processes: tuple[ProcessInfo, ...] = ()) -> ScanResult:
    """A scan result of ``ns`` whose findings are the self-connects of ``sockets``."""
    snapshot = Snapshot(KernelSettings(PortRange(32768, 60999)), sockets, namespace=ns)
    findings = tuple(dataclasses.replace(f, processes=processes)
                     for f in self_connect.find_self_connects(snapshot))
    lst = {(Protocol.TCP, p): [Socket(Protocol.TCP, Family.IPV4, SocketState.LISTEN, Endpoint(LO, p), None, 9)]
           for p in listening}
    return ScanResult(snapshot=snapshot, findings=findings, ignored=(), usage={}, duration=0.0, listening=lst)


def live_self_connect(port: int) -> Socket:
    return Socket(Protocol.TCP, Family.IPV4, SocketState.ESTABLISHED, Endpoint(LO, port), Endpoint(LO, port), 7)


def test_transient_findings_of_a_namespace_are_keyed_and_labelled_like_its_scan_findings() -> None:
    tracker = NamespaceTransients()
    (blue,) = tracker.observe(NS_BLUE, [ev(0, (LO, 40000), (LO, 40000))])
    (host,) = tracker.observe(NS_HOST, [ev(0, (LO, 40000), (LO, 40000))])
    assert blue.key == scan_key_of_self_connect(40000) + "@blue" and blue.namespace == NS_BLUE
    assert host.key == scan_key_of_self_connect(40000) and host.namespace == NS_HOST
    assert blue.details["namespace"] == "blue"
    unkeyed = NamespaceTransients(keyed=False).observe(NS_BLUE, [ev(0, (LO, 40000), (LO, 40000))])
    assert [f.key for f in unkeyed] == [scan_key_of_self_connect(40000)]


def test_a_socket_the_scan_reported_that_then_closes_is_not_reported_again() -> None:
    tracker = NamespaceTransients()
    tracker.scanned(scan_of(NS_BLUE, (live_self_connect(40000),)))
    assert tracker.observe(NS_BLUE, [ev(0, (LO, 40000), (LO, 40000))]) == []
    # the tuple was covered once: a new self-connect on it after the scan is a new transient
    (again,) = tracker.observe(NS_BLUE, [ev(1, (LO, 40000), (LO, 40000))])
    assert again.key.endswith("@blue")
    # the other namespace's scan covers nothing here
    tracker.scanned(scan_of(NS_HOST, (live_self_connect(40002),)))
    assert len(tracker.observe(NS_BLUE, [ev(2, (LO, 40002), (LO, 40002))])) == 1


def test_the_scan_names_the_owner_of_a_tuple_and_its_listeners_make_pairs_ordinary() -> None:
    proc = ProcessInfo(pid=4242, name="flaky-test")
    tracker = NamespaceTransients()
    tracker.scanned(scan_of(NS_BLUE, (live_self_connect(40000),), listening=(8080,), processes=(proc,)))
    tracker.observe(NS_BLUE, [ev(0, (LO, 40000), (LO, 40000))])  # the scanned socket closes
    (f,) = tracker.observe(NS_BLUE, [ev(1, (LO, 40000), (LO, 40000))])
    assert f.processes == (proc,) and "flaky-test[4242]" in f.summary
    pair = [ev(2, (LO, 50000), (LO, 8080), cookie=3), ev(2.1, (LO, 8080), (LO, 50000), cookie=4)]
    assert tracker.observe(NS_BLUE, pair) == [] and tracker.flush(T0 + 10) == []
    loop = [ev(3, (LO, 41000), (LO, 41001), cookie=5), ev(3.1, (LO, 41001), (LO, 41000), cookie=6)]
    assert tracker.observe(NS_BLUE, loop) == []  # a pair waits for its confirm delay
    assert tracker.flush(T0 + 10) == []  # first look
    (f,) = tracker.flush(T0 + 11)
    assert f.kind is Kind.LOOP_PAIR and f.key.endswith("@blue")


def test_configured_ignore_rules_and_severities_apply_to_transient_findings() -> None:
    config = Config(ignore=(IgnoreRule(kind=Kind.SELF_CONNECT, ports=PortRange(40000, 40000)),),
                    severities={Kind.SELF_CONNECT: Severity.WARNING})
    tracker = NamespaceTransients(config=config)
    assert tracker.observe(NS_BLUE, [ev(0, (LO, 40000), (LO, 40000))]) == []
    (f,) = tracker.observe(NS_BLUE, [ev(0, (LO, 40002), (LO, 40002))])
    assert f.severity is Severity.WARNING


def test_forgotten_namespaces_lose_their_pending_pair_halves() -> None:
    tracker = NamespaceTransients()
    tracker.observe(NS_BLUE, [ev(0, (LO, 41000), (LO, 41001))])
    tracker.retain([NS_HOST])
    assert tracker.observe(NS_BLUE, [ev(0.1, (LO, 41001), (LO, 41000))]) == []
    assert tracker.flush(T0 + 10) == []


# ----------------------------------------------------------------- the book


def finding(key: str, kind: Kind = Kind.SELF_CONNECT, **details: object) -> Finding:
    return Finding(kind, Severity.CRITICAL, key, f"summary of {key}", details=details)


def test_book_merges_repeats_of_a_key_and_resolves_it_after_the_quiet_period() -> None:
    book = TransientBook(quiet_period=60)
    assert [f.key for f in book.add([finding("a")], T0)] == ["a"]
    assert book.add([finding("a", occurrences=3)], T0 + 30) == []
    entry = book.get("a")
    assert entry is not None and (entry.first_seen, entry.last_seen, entry.count) == (T0, T0 + 30, 4)
    assert entry.finding.details["occurrences"] == 3  # the latest report is kept
    assert book.expire(T0 + 90) == [] and [e.finding.key for e in book.active(T0 + 90)] == ["a"]
    assert [f.key for f in book.expire(T0 + 90.5)] == ["a"]
    assert book.active(T0 + 90.5) == [] and book.get("a") is None
    assert [f.key for f in book.add([finding("a")], T0 + 100)] == ["a"]  # back: new again


def test_book_takes_findings_of_any_kind_and_orders_the_active_by_first_seen() -> None:
    book = TransientBook(quiet_period=10)
    book.add([finding("late", Kind.PORT_TAKEN)], T0 + 5)
    book.add([finding("early", Kind.LOOP_PAIR)], T0)
    assert [e.finding.key for e in book.active(T0 + 6)] == ["early", "late"]
    assert [e.finding.key for e in book.active(T0 + 12)] == ["late"]  # "early" went quiet


def test_book_is_bounded_and_rejects_a_quiet_period_that_is_not_positive() -> None:
    book = TransientBook(quiet_period=10, max_entries=2)
    book.add([finding("a")], T0)
    book.add([finding("b")], T0 + 1)
    book.add([finding("c")], T0 + 2)
    assert [e.finding.key for e in book.active(T0 + 2)] == ["b", "c"]
    with pytest.raises(ValueError):
        TransientBook(quiet_period=0)


def test_a_pair_with_a_listener_opened_after_the_scan_is_an_ordinary_connection() -> None:
    asked: list[int] = []

    def listening_now() -> set[int]:
        asked.append(1)
        return {8080}

    det = TransientDetector()
    client_and_server = [ev(0, (LO, 50000), (LO, 8080)), ev(0.1, (LO, 8080), (LO, 50000)),
                         ev(0.2, (LO, 50001), (LO, 8080)), ev(0.3, (LO, 8080), (LO, 50001))]
    assert det.observe(client_and_server, listening_now=listening_now) == []
    assert asked == [1]  # asked once per call, only for a would-be pair
    (f,) = det.observe([ev(1, (LO, 41000), (LO, 41001)), ev(1.1, (LO, 41001), (LO, 41000))],
                       listening_now=lambda: None)  # cannot tell: reported
    assert f.kind is Kind.LOOP_PAIR


def test_a_pair_whose_listener_is_destroyed_just_after_it_is_an_ordinary_connection() -> None:
    det = TransientDetector(confirm_delay=0.25)
    # the last connection of a server, then (read in the next batch) its listener
    assert det.observe([ev(0, (LO, 50000), (LO, 8080)), ev(0, (LO, 8080), (LO, 50000))]) == []
    assert det.observe([ev(0.001, (LO, 8080), None)]) == []
    assert det.flush(T0 + 1) == []
    det.observe([ev(2, (LO, 41000), (LO, 41001)), ev(2, (LO, 41001), (LO, 41000))])
    assert det.flush(T0 + 2.1) == []  # not due yet
    assert det.flush(T0 + 2.3, listening_now=lambda: {9999}) == []  # first look: no listener
    (f,) = det.flush(T0 + 2.6)  # second look: still no listener's destroy event
    assert f.kind is Kind.LOOP_PAIR and f.details["occurrences"] == 1
    det.observe([ev(3, (LO, 41002), (LO, 41003)), ev(3, (LO, 41003), (LO, 41002))])
    assert det.flush(T0 + 4, listening_now=lambda: {41003}) == []  # a server opened since the scan
    assert det.flush(T0 + 9) == []
    # no listener at the first look, but its destroy event comes before the second
    det.observe([ev(10, (LO, 50002), (LO, 8081)), ev(10, (LO, 8081), (LO, 50002))])
    assert det.flush(T0 + 10.3, listening_now=lambda: set()) == []
    det.observe([ev(10.31, (LO, 8081), None)])
    assert det.flush(T0 + 11) == []
