"""Table-driven tests of every detector on hand-built snapshots."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Collection, Iterable

import pytest

from portwatch import detect
from portwatch.config import Config, IgnoreRule, Service, Thresholds
from portwatch.detect.port_taken import process_matches
from portwatch.model import Finding, Kind, PortRange, ProcessInfo, Protocol, RememberedPort, Severity, Snapshot, Socket
from tests.builders import listen, proc, snap, tcp, udp

# A healthy range for most tests: 40000-40999 (1000 ports, ends of different parity).
RANGE = (40000, 40999)
CFG = Config()


def kinds(findings: list[Finding]) -> list[tuple[str, str]]:
    return sorted((f.kind.value, f.key) for f in findings)


def run(snapshot: Snapshot, config: Config = CFG, remembered: Collection[RememberedPort] = ()) -> list[Finding]:
    """Detect, without range_misconfigured noise unless a test asks for it."""
    return [f for f in detect.detect(snapshot, config, remembered) if f.kind is not Kind.RANGE_MISCONFIGURED]


# ----------------------------------------------------------------- self_connect

@pytest.mark.parametrize("sock, expected", [
    (tcp("127.0.0.1:40002", "127.0.0.1:40002"), ["self_connect:tcp:127.0.0.1:40002"]),
    (tcp("[::1]:40002", "[::1]:40002"), ["self_connect:tcp:[::1]:40002"]),
    # IPv4-mapped on both sides compares as IPv4
    (tcp("[::ffff:127.0.0.1]:40004", "127.0.0.1:40004"), ["self_connect:tcp:127.0.0.1:40004"]),
    (udp("127.0.0.1:40006", "127.0.0.1:40006"), ["self_connect:udp:127.0.0.1:40006"]),
    # a closed self-connect in TIME_WAIT has no process and harms nobody
    (tcp("127.0.0.1:40002", "127.0.0.1:40002", "TIME_WAIT"), []),
    # same port, different address: not a self-connect
    (tcp("127.0.0.1:40002", "127.0.0.2:40002"), []),
])
def test_socket_connected_to_itself_is_critical(sock: Socket, expected: list[str]) -> None:
    found = [f for f in run(snap([sock], RANGE)) if f.kind is Kind.SELF_CONNECT]
    assert [f.key for f in found] == expected
    for f in found:
        assert f.severity is Severity.CRITICAL
        assert f.port == sock.local.port
        assert "reserved_ports" in (f.remediation or "")


def test_self_connect_summary_names_the_holding_process() -> None:
    s = tcp("127.0.0.1:40002", "127.0.0.1:40002")
    found = run(snap([s], RANGE, owners={s: 321}, processes=[proc(321, "grpc-client")]))
    (f,) = found
    assert f.processes == (proc(321, "grpc-client"),)
    assert "grpc-client[321]" in f.summary and "40002" in f.summary


# ----------------------------------------------------------------- loop_pair

A, B = "127.0.0.1:40001", "127.0.0.1:40003"


@pytest.mark.parametrize("extra, expected", [
    ([], ["loop_pair:tcp:127.0.0.1:40001<->127.0.0.1:40003"]),
    ([listen("127.0.0.1:40003")], []),      # an ordinary client/server connection
    ([listen("0.0.0.0:40001")], []),        # a wildcard listener covers 127.0.0.1
    ([listen("[::]:40003")], []),           # so does a dual-stack one
    ([listen("127.0.0.2:40003")], ["loop_pair:tcp:127.0.0.1:40001<->127.0.0.1:40003"]),  # other address
])
def test_sockets_connected_to_each_other_with_no_listener_are_a_loop_pair(extra: list[Socket], expected: list[str]) -> None:
    sockets = [tcp(A, B), tcp(B, A), *extra]
    found = [f for f in run(snap(sockets, RANGE)) if f.kind is Kind.LOOP_PAIR]
    assert [f.key for f in found] == expected
    for f in found:
        assert len(f.sockets) == 2 and f.severity is Severity.WARNING


def test_one_half_of_a_loop_pair_is_no_finding() -> None:
    assert [f for f in run(snap([tcp(A, B)], RANGE)) if f.kind is Kind.LOOP_PAIR] == []


# ----------------------------------------------------------------- listener_in_ephemeral_range

@pytest.mark.parametrize("sock, reserved, expected", [
    (listen("0.0.0.0:40005"), (), ["listener_in_ephemeral_range:tcp:40005"]),
    (listen("127.0.0.1:40000"), (), ["listener_in_ephemeral_range:tcp:40000"]),   # low edge
    (listen("[::]:40999"), (), ["listener_in_ephemeral_range:tcp:40999"]),       # high edge
    (listen("0.0.0.0:39999"), (), []),                                            # just below
    (listen("0.0.0.0:41000"), (), []),                                            # just above
    (listen("0.0.0.0:40005"), (40005,), []),                                      # reserved
    (udp("0.0.0.0:40006"), (), ["listener_in_ephemeral_range:udp:40006"]),
    (udp("0.0.0.0:40006"), (40000, 40006), []),
    (udp("127.0.0.1:40006", "127.0.0.1:53"), (), []),                            # connected UDP: a client
    (tcp("127.0.0.1:40006", "127.0.0.1:80"), (), []),                            # a client socket
])
def test_unreserved_listener_inside_the_ephemeral_range_is_reported(sock: Socket, reserved: tuple[int, ...],
                                                                  expected: list[str]) -> None:
    found = [f for f in run(snap([sock], RANGE, reserved=reserved))
             if f.kind is Kind.LISTENER_IN_EPHEMERAL_RANGE]
    assert [f.key for f in found] == expected


def test_listeners_on_one_port_make_one_finding_whose_hint_merges_reserved_ports() -> None:
    socks = [listen("0.0.0.0:40005"), listen("[::]:40005")]
    (f,) = run(snap(socks, RANGE, reserved=(40100, 40101, 80)))
    assert len(f.sockets) == 2
    assert "net.ipv4.ip_local_reserved_ports=80,40005,40100-40101" in (f.remediation or "")


# ----------------------------------------------------------------- service_port_at_risk / port_taken

SVC = Config(services=(Service("api", 40100),))


def test_declared_service_listening_in_range_is_at_risk_not_a_listener_finding() -> None:
    found = run(snap([listen("0.0.0.0:40100")], RANGE), SVC)
    assert kinds(found) == [("service_port_at_risk", "service_port_at_risk:tcp:40100")]
    assert found[0].details["listening"] is True


@pytest.mark.parametrize("reserved, expected", [((), 1), ((40100,), 0)])
def test_reserving_a_service_port_takes_it_out_of_risk(reserved: tuple[int, ...], expected: int) -> None:
    found = [f for f in run(snap([], RANGE, reserved=reserved), SVC) if f.kind is Kind.SERVICE_PORT_AT_RISK]
    assert len(found) == expected


def test_service_outside_the_range_is_not_at_risk() -> None:
    cfg = Config(services=(Service("web", 8080),))
    assert run(snap([], RANGE), cfg) == []


def test_declared_service_port_held_by_a_client_is_taken_and_names_the_holder() -> None:
    holder = tcp("10.0.0.1:40100", "10.0.0.9:2379")
    s = snap([holder], RANGE, owners={holder: 77}, processes=[proc(77, "kube-apiserver")])
    found = [f for f in run(s, SVC) if f.kind is Kind.PORT_TAKEN]
    (f,) = found
    assert f.key == "port_taken:tcp:40100" and f.severity is Severity.CRITICAL
    assert f.processes[0].name == "kube-apiserver"
    assert "api" in f.summary and "kube-apiserver[77]" in f.summary


@pytest.mark.parametrize("sockets, config, remembered, expected", [
    # the service is up: its accepted connections are not holders
    ([listen("0.0.0.0:40100"), tcp("10.0.0.1:40100", "10.0.0.9:5555")], SVC, (), []),
    # TIME_WAIT is not a holder
    ([tcp("10.0.0.1:40100", "10.0.0.9:2379", "TIME_WAIT")], SVC, (), []),
    # a service declared on 10.0.0.1 does not conflict with a holder on 10.0.0.2
    ([tcp("10.0.0.2:40100", "10.0.0.9:2379")],
     Config(services=(Service("api", 40100, address="10.0.0.1"),)), (), []),
    ([tcp("10.0.0.1:40100", "10.0.0.9:2379")],
     Config(services=(Service("api", 40100, address="10.0.0.1"),)), (), [("port_taken:tcp:40100", "critical")]),
    # a listener on another specific address does not serve the declared one
    ([listen("10.0.0.2:40100"), tcp("10.0.0.1:40100", "10.0.0.9:2379")],
     Config(services=(Service("api", 40100, address="10.0.0.1"),)), (), [("port_taken:tcp:40100", "critical")]),
    # UDP service: a connected UDP socket holds the port
    ([udp("10.0.0.1:40100", "10.0.0.9:53")], Config(services=(Service("dns", 40100, Protocol.UDP),)), (),
     [("port_taken:udp:40100", "critical")]),
    # reserved ports are service ports too
    ([tcp("10.0.0.1:40200", "10.0.0.9:2379")], CFG, (), [("port_taken:tcp:40200", "critical")]),
    # remembered listeners: inferred, so a warning
    ([tcp("10.0.0.1:40300", "10.0.0.9:2379")], CFG, (detect.RememberedPort(Protocol.TCP, 40300),),
     [("port_taken:tcp:40300", "warning")]),
    # nothing declared, reserved or remembered: an ordinary client
    ([tcp("10.0.0.1:40300", "10.0.0.9:2379")], CFG, (), []),
])
def test_port_taken_depends_on_listeners_addresses_and_how_the_port_is_known(
        sockets: list[Socket], config: Config, remembered: tuple[RememberedPort, ...],
        expected: list[tuple[str, str]]) -> None:
    found = [f for f in run(snap(sockets, RANGE, reserved=(40200,)), config, remembered)
             if f.kind is Kind.PORT_TAKEN]
    assert [(f.key, f.severity.value) for f in found] == expected


# ----------------------------------------------------------------- port_taken: the service's own draining connections

NGINX = proc(50, "nginx", unit="nginx.service")
FOREIGN = proc(60, "curl")
# an accepted connection of the service (peer on a client's port) and an outgoing one to a local listener
ACCEPTED = tcp("10.0.0.1:40100", "10.0.0.9:51000")
OUTGOING = tcp("10.0.0.1:40100", "10.0.0.1:2379")


def held(owner: dict[Socket, int], *extra: Socket) -> Snapshot:
    """A snapshot where ``owner``'s sockets hold 40100 (with no listener there) and a listener serves 2379."""
    return snap([listen("0.0.0.0:2379"), *owner, *extra], RANGE,
                owners=owner, processes=[NGINX, FOREIGN])


@pytest.mark.parametrize("service, remembered, owners, expected", [
    # declared process or unit, or both, owning every holder, accepted shape: info
    (Service("api", 40100, process="nginx"), (), {ACCEPTED: 50}, "info"),
    (Service("api", 40100, unit="nginx.service"), (), {ACCEPTED: 50}, "info"),
    (Service("api", 40100, process="nginx", unit="nginx.service"), (), {ACCEPTED: 50}, "info"),
    # identity remembered from the listener that was there (declared service without process/unit)
    (Service("api", 40100), (RememberedPort(Protocol.TCP, 40100, "nginx", None),), {ACCEPTED: 50}, "info"),
    (Service("api", 40100), (RememberedPort(Protocol.TCP, 40100, None, "nginx.service"),), {ACCEPTED: 50}, "info"),
    # no identity known: critical as before
    (Service("api", 40100), (RememberedPort(Protocol.TCP, 40100),), {ACCEPTED: 50}, "critical"),
    # a holder of another process: critical
    (Service("api", 40100, process="nginx"), (), {ACCEPTED: 60}, "critical"),
    (Service("api", 40100, unit="nginx.service"), (), {ACCEPTED: 60}, "critical"),
    # both parts given: both must match
    (Service("api", 40100, process="nginx", unit="other.service"), (), {ACCEPTED: 50}, "critical"),
    # one foreign holder among the service's own: critical
    (Service("api", 40100, process="nginx"), (), {ACCEPTED: 50, tcp("10.0.0.1:40100", "10.0.0.8:52000"): 60},
     "critical"),
    # the service's process, but an outgoing connection (to a local listener) from the port: shape fails
    (Service("api", 40100, process="nginx"), (), {OUTGOING: 50}, "critical"),
])
def test_port_held_only_by_its_own_services_accepted_connections_is_info(
        service: Service, remembered: tuple[RememberedPort, ...], owners: dict[Socket, int], expected: str) -> None:
    found = [f for f in run(held(owners), Config(services=(service,)), remembered) if f.kind is Kind.PORT_TAKEN]
    (f,) = found
    assert f.key == "port_taken:tcp:40100" and f.severity.value == expected
    if expected == "info":
        assert f.details.get("draining") is True
        assert "its own draining connections hold it" in f.summary
        assert "a restart with SO_REUSEADDR can bind it, one without cannot" in f.summary
        assert "EADDRINUSE" not in f.summary
    else:
        assert "draining" not in f.details
        assert "fail with EADDRINUSE, even with SO_REUSEADDR" in f.summary


def test_holder_of_unknown_owner_is_not_the_services_own() -> None:
    s = snap([ACCEPTED], RANGE)  # no owners known
    (f,) = [f for f in run(s, Config(services=(Service("api", 40100, process="nginx"),))) if f.kind is Kind.PORT_TAKEN]
    assert f.severity is Severity.CRITICAL


def test_remembered_identity_makes_a_remembered_port_info() -> None:
    found = [f for f in run(held({ACCEPTED: 50}), CFG, (RememberedPort(Protocol.TCP, 40100, "nginx"),))
             if f.kind is Kind.PORT_TAKEN]
    assert [(f.severity, f.details["reason"]) for f in found] == [(Severity.INFO, "had a listener earlier")]


@pytest.mark.parametrize("process, identity, matches", [
    (proc(1, "nginx"), ("nginx", None), True),
    (proc(1, "nginx"), (None, None), False),
    (proc(1, "nginx", unit="a.service"), (None, "a.service"), True),
    (proc(1, "nginx", unit="a.service"), ("nginx", "b.service"), False),
    (proc(1, "nginx"), (None, "a.service"), False),
])
def test_process_identity_matching(process: ProcessInfo, identity: tuple[str | None, str | None],
                                   matches: bool) -> None:
    assert process_matches(process, identity) is matches


def test_executable_matches_by_name_path_or_its_last_component() -> None:
    p = ProcessInfo(pid=1, name="srv", cmdline=("/opt/app/bin/server", "--port", "1"))
    assert process_matches(p, ("/opt/app/bin/server", None))
    assert process_matches(p, ("server", None))
    assert process_matches(p, ("srv", None))
    assert not process_matches(p, ("/usr/bin/server", None))


def test_owners_are_asked_for_a_declared_ports_listener_or_while_it_is_down_its_holders() -> None:
    up_listener = listen("0.0.0.0:40100")
    free = snap([ACCEPTED, listen("0.0.0.0:2379"), tcp("10.0.0.1:40200", "10.0.0.9:51000")], RANGE)
    up = snap([ACCEPTED, up_listener, listen("0.0.0.0:2379")], RANGE)
    named = Config(services=(Service("api", 40100, process="nginx"),))
    assert detect.owners_needed(free, named) == {ACCEPTED.inode}  # down: who holds it
    assert detect.owners_needed(up, named) == {up_listener.inode}  # up: whose port it is (to remember)
    assert detect.owners_needed(free, SVC) == {ACCEPTED.inode}  # a remembered identity may apply
    # a listener on another address does not serve a service declared on 10.0.0.1
    other = listen("10.0.0.2:40100")
    on_one = Config(services=(Service("api", 40100, address="10.0.0.1"),))
    assert detect.owners_needed(snap([other, ACCEPTED], RANGE), on_one) == {ACCEPTED.inode}
    assert detect.owners_needed(snap([], RANGE), CFG) == set()


# ----------------------------------------------------------------- ephemeral_exhaustion

def clients(n: int, dest: str, first: int = 40000, state: str = "ESTABLISHED",
            src: str = "127.0.0.1") -> list[Socket]:
    return [tcp(f"{src}:{first + i}", dest, state) for i in range(n)]


SMALL = (40000, 40009)


@pytest.mark.parametrize("sockets, reserved, expected", [
    (clients(7, "127.0.0.1:8080"), (), []),                                     # 0.7 < 0.8
    (clients(8, "127.0.0.1:8080"), (), [("warning", 0.8)]),
    (clients(9, "127.0.0.1:8080"), (), [("warning", 0.9)]),
    (clients(10, "127.0.0.1:8080"), (), [("critical", 1.0)]),
    # TIME_WAIT counts: the 4-tuple stays taken
    (clients(5, "127.0.0.1:8080") + clients(4, "127.0.0.1:8080", 40005, "TIME_WAIT"), (), [("warning", 0.9)]),
    # two reserved ports inside: usable is 8, so 7 is 0.875
    (clients(7, "127.0.0.1:8080", 40002), (40000, 40001), [("warning", 0.875)]),
    # other destinations are separate budgets
    (clients(5, "127.0.0.1:8080") + clients(5, "127.0.0.1:8081"), (), []),
    (clients(5, "127.0.0.1:8080") + clients(5, "127.0.0.2:8080"), (), []),
])
def test_destination_using_most_usable_ports_is_exhaustion(sockets: list[Socket], reserved: tuple[int, ...],
                                                           expected: list[tuple[str, float]]) -> None:
    found = [f for f in run(snap(sockets, SMALL, reserved=reserved)) if f.kind is Kind.EPHEMERAL_EXHAUSTION]
    assert [(f.severity.value, f.details["ratio"]) for f in found] == expected
    for f in found:
        assert f.key == "ephemeral_exhaustion:127.0.0.1->127.0.0.1:8080"


def test_exhaustion_ignores_accepted_connections_of_an_in_range_listener() -> None:
    # a server on 40009 with 9 accepted connections from one client host/port set
    socks = [listen("0.0.0.0:40009")] + [tcp("127.0.0.1:40009", f"127.0.0.1:{50000 + i}") for i in range(9)]
    assert detect.destination_usage(snap(socks, SMALL)) == {}


def test_destination_usage_counts_sockets_per_local_ip_and_destination() -> None:
    socks = clients(3, "127.0.0.1:8080") + clients(2, "[::1]:443", 40003, src="[::1]")
    usage = detect.destination_usage(snap(socks, SMALL))
    assert usage == {detect.Destination("127.0.0.1", "127.0.0.1", 8080): 3,
                     detect.Destination("::1", "::1", 443): 2}


def test_exhaustion_thresholds_come_from_config() -> None:
    cfg = Config(thresholds=Thresholds(exhaustion_warning=0.5, exhaustion_critical=0.6))
    found = [f for f in run(snap(clients(6, "127.0.0.1:8080"), SMALL), cfg) if f.kind is Kind.EPHEMERAL_EXHAUSTION]
    assert [f.severity for f in found] == [Severity.CRITICAL]


# ----------------------------------------------------------------- close_wait_buildup

def close_waits(n: int, first: int = 8000) -> list[Socket]:
    return [tcp(f"127.0.0.1:{first}", f"127.0.0.1:{50000 + i}", "CLOSE_WAIT") for i in range(n)]


def test_process_holding_more_close_wait_sockets_than_the_threshold_is_reported() -> None:
    cfg = Config(thresholds=Thresholds(close_wait=3))
    leaky, fine = close_waits(4), close_waits(2, 9000)
    owners = {s: 10 for s in leaky} | {s: 11 for s in fine}
    s = snap(leaky + fine, RANGE, owners=owners, processes=[proc(10, "leaky"), proc(11, "fine")])
    assert detect.owners_needed(s, cfg) == {x.inode for x in leaky + fine}
    (f,) = run(s, cfg)
    assert f.key == "close_wait_buildup:pid:10" and f.details["count"] == 4
    assert "leaky[10]" in f.summary


def test_close_wait_total_within_threshold_needs_no_owners_and_finds_nothing() -> None:
    cfg = Config(thresholds=Thresholds(close_wait=10))
    s = snap(close_waits(10), RANGE)
    assert detect.owners_needed(s, cfg) == set()
    assert run(s, cfg) == []


def test_close_wait_sockets_of_unknown_owners_are_grouped_by_uid() -> None:
    cfg = Config(thresholds=Thresholds(close_wait=2))
    (f,) = run(snap(close_waits(3), RANGE), cfg)
    assert f.key == "close_wait_buildup:uid:0" and "user id 0" in f.summary


# ----------------------------------------------------------------- range_misconfigured

@pytest.mark.parametrize("port_range, reserved, unpriv, expected", [
    ((32768, 60999), (), 1024, []),
    ((32768, 60998), (), 1024, ["range_misconfigured:same_parity"]),
    ((40000, 40009), (), 1024, ["range_misconfigured:small"]),
    ((32768, 33799), range(32768, 32800), 1024, []),  # 1032 ports - 32 reserved = exactly min_range_size
    ((1000, 60999), (), 1024, ["range_misconfigured:below_unprivileged"]),
    ((1000, 60998), (), 1024, ["range_misconfigured:below_unprivileged", "range_misconfigured:same_parity"]),
])
def test_range_below_unprivileged_too_small_or_of_equal_parity_is_misconfigured(
        port_range: tuple[int, int], reserved: Iterable[int], unpriv: int, expected: list[str]) -> None:
    found = detect.find_range_problems(snap([], port_range, reserved, unpriv).settings, CFG)
    assert sorted(f.key for f in found) == sorted(expected)
    assert all(f.severity is Severity.INFO for f in found)


def test_reserved_ports_count_against_the_range_size() -> None:
    found = detect.find_range_problems(snap([], (32768, 33799), range(32768, 32801)).settings, CFG)
    assert [f.key for f in found] == ["range_misconfigured:small"]
    assert "999 usable" in found[0].summary


# ----------------------------------------------------------------- pipeline: explain, ignores, severities

def test_explain_fills_processes_after_attribution() -> None:
    s_ = tcp("127.0.0.1:40002", "127.0.0.1:40002")
    before = snap([s_], RANGE)
    (f,) = run(before)
    assert f.processes == () and "owner unknown" in f.summary
    after = replace(before, owners={s_.inode: (5,)}, processes={5: proc(5, "nats")})
    assert detect.involved_inodes([f]) == {s_.inode}
    (g,) = detect.explain([f], after)
    assert g.processes == (proc(5, "nats"),) and "nats[5]" in g.summary and g.key == f.key


def test_configured_severity_overrides_the_default() -> None:
    cfg = Config(severities={Kind.LISTENER_IN_EPHEMERAL_RANGE: Severity.CRITICAL})
    (f,) = run(snap([listen("0.0.0.0:40005")], RANGE), cfg)
    assert f.severity is Severity.CRITICAL


@pytest.mark.parametrize("rule, ignored", [
    (IgnoreRule(kind=Kind.LISTENER_IN_EPHEMERAL_RANGE), 2),
    (IgnoreRule(ports=PortRange(40005, 40005)), 1),
    (IgnoreRule(ports=PortRange(40000, 40999)), 2),
    (IgnoreRule(process="chronyd"), 1),
    (IgnoreRule(unit="chrony.service"), 1),
    (IgnoreRule(process="chronyd", ports=PortRange(40005, 40005)), 0),   # all fields must match
    (IgnoreRule(address="127.0.0.1"), 1),
    (IgnoreRule(kind=Kind.SELF_CONNECT), 0),
])
def test_ignore_rule_drops_findings_matching_all_its_fields(rule: IgnoreRule, ignored: int) -> None:
    a, b = listen("0.0.0.0:40005"), udp("127.0.0.1:40006")
    s = snap([a, b], RANGE, owners={a: 1, b: 2},
             processes=[proc(1, "nginx"), proc(2, "chronyd", unit="chrony.service")])
    kept, dropped = detect.apply_ignores(run(s), (rule,))
    assert len(dropped) == ignored and len(kept) == 2 - ignored


def test_findings_sorted_most_severe_first_and_to_dict_is_json_ready() -> None:
    socks = [listen("0.0.0.0:40005"), tcp("127.0.0.1:40002", "127.0.0.1:40002")]
    found = detect.detect(snap(socks, SMALL), CFG)
    assert [f.severity for f in found] == sorted((f.severity for f in found), key=lambda s: -s.rank)
    json.dumps([f.to_dict() for f in found])


def test_loop_pair_on_a_known_server_port_is_a_drained_connection() -> None:
    # 40001 <-> 40003 with no listener: a simultaneous open, unless 40003 is
    # known to be a server's port (declared, or remembered from an earlier scan).
    sockets = [tcp(A, B), tcp(B, A)]
    assert [f.kind for f in run(snap(sockets, RANGE))] == [Kind.LOOP_PAIR]
    declared = run(snap(sockets, RANGE), Config(services=(Service("api", 40003),)))
    # the declared service's port is held with no listener: that is what it reports
    assert sorted(f.kind.value for f in declared) == ["port_taken", "service_port_at_risk"]
    remembered = (detect.RememberedPort(Protocol.TCP, 40001),)
    assert all(f.kind is not Kind.LOOP_PAIR for f in run(snap(sockets, RANGE), CFG, remembered))


def test_big_findings_keep_a_bounded_sample_of_sockets() -> None:
    socks = clients(1000, "127.0.0.1:8080")
    (f,) = [f for f in run(snap(socks, (40000, 40999))) if f.kind is Kind.EPHEMERAL_EXHAUSTION]
    assert f.details["used"] == f.details["sockets_total"] == 1000
    assert len(f.sockets) == detect.MAX_EXAMPLE_SOCKETS
    assert [s.local.port for s in f.sockets] == list(range(40000, 40000 + detect.MAX_EXAMPLE_SOCKETS))
    cfg = Config(thresholds=Thresholds(close_wait=100))
    (g,) = run(snap(close_waits(500), RANGE), cfg)
    assert g.details["count"] == 500 and len(g.sockets) == detect.MAX_EXAMPLE_SOCKETS


def test_only_tcp_listeners_are_remembered() -> None:
    s = snap([listen("0.0.0.0:40005"), udp("0.0.0.0:40006"), tcp("127.0.0.1:40007", "127.0.0.1:80")], RANGE)
    assert detect.listening_ports(detect.index(s).listening) == {detect.RememberedPort(Protocol.TCP, 40005)}
