"""connect_failed and bind_failed: real failed system calls in namespaces, seen by the capture in the host's.

The real tests make the failure for real in a fresh network namespace (an
eleventh connect() in a 10-port range; a bind() on a port an outgoing
connection holds) while a :class:`~portwatch.collect.capture.FailureCapture`
runs in the host namespace (audit records reach only readers there), then
scan that namespace and check the finding names the process, the cause and
the linked scan finding. The pure tests pin the wording, keys and counting.
Every test touching audit takes ``audit_host`` (tests/auditkit.py), which
removes the rules and restores the enabled state afterwards.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from portwatch.collect import Collector, discover_namespaces
from portwatch.collect.sources.netlink import NetlinkSource
from portwatch.config import Config, ConfigError, Service, parse_config
from portwatch.detect import REGISTRY
from portwatch.detect.base import who
from portwatch.detect.bind_failed import find_bind_failures
from portwatch.detect.connect_failed import find_connect_failures
from portwatch.model import (
    CgroupIdentity,
    Endpoint,
    Finding,
    Kind,
    NamespaceInfo,
    NamespaceKind,
    ProcessInfo,
    ScanResult,
    Severity,
)
from portwatch.model.failures import FailedCall, FailureEvent, FailureWindow, Holder
from portwatch.output.failures import FailureMetrics
from portwatch.scan import scan_snapshot
from tests.auditkit import AuditHost, audit_host, wait_events
from tests.builders import listen, proc, snap, tcp
from tests.netns import NetNS

__all__ = ["audit_host"]  # the fixture, imported to be found by pytest

T = 1_796_000_000.0


def namespace_of(netns: NetNS) -> NamespaceInfo:
    (found,) = [ns for ns in discover_namespaces().namespaces if ns.name == netns.name]
    return found


def scan_of(netns: NetNS, config: Config) -> ScanResult:
    """The scan of ``netns`` as a pass over all namespaces makes it (keys suffixed, namespace set)."""
    collector = Collector(NetlinkSource())
    return scan_snapshot(config, collector, collector.snapshot_namespace(namespace_of(netns)))


def of_kind(result: ScanResult, kind: Kind) -> list[Finding]:
    return [f for f in result.findings if f.kind is kind]


# ----------------------------------------------------------------- real failures


def test_the_eleventh_connect_in_a_10_port_range_names_process_destination_and_exhaustion(
        netns: NetNS, audit_host: AuditHost) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40009")
    capture = audit_host.capture()
    try:
        assert capture.start(), capture.notes
        client, info = netns.actor("exhaust", "--to", "127.0.0.1:5001", "--count", "11", "--allow-exhaustion")
        assert info["count"] == 10 and info["exhausted"] == [{"to": ["127.0.0.1", 5001], "after": 10,
                                                               "error": "EADDRNOTAVAIL"}]
        events = wait_events(capture, lambda got: any(e.pid == client.pid for e in got))
    finally:
        capture.stop()
    (event,) = [e for e in events if e.pid == client.pid]
    assert (event.call, event.exit, event.address) == (FailedCall.CONNECT, -99, Endpoint("127.0.0.1", 5001))
    assert event.netns_inode == os.stat(f"/run/netns/{netns.name}").st_ino  # attributed to its namespace
    assert event.comm is not None and event.comm.startswith("python") and event.complete
    assert event.exe is not None and os.path.basename(event.exe).startswith("python")

    result = scan_of(netns, Config())
    (exhaustion,) = of_kind(result, Kind.EPHEMERAL_EXHAUSTION)
    assert {p.pid for p in exhaustion.processes} == {client.pid}
    (found,) = find_connect_failures([event], result)

    ns = namespace_of(netns)
    assert found.kind is Kind.CONNECT_FAILED and found.severity is Severity.CRITICAL
    assert found.key == f"connect_failed:127.0.0.1:5001:{event.comm}@{ns.key}" and found.namespace == ns
    assert found.details["exhaustion"] == exhaustion.key and found.details["transient"] is True
    assert [p.pid for p in found.processes] == [client.pid]
    assert found.summary == (
        f"{event.comm}[{client.pid}] could not connect to 127.0.0.1:5001 (EADDRNOTAVAIL, once in 300 s) "
        f"because 10 of 10 usable ports to 127.0.0.1:5001 are in use by {who(exhaustion.processes)}")


BIND_SCRIPT = """
import errno, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
    print("bound", flush=True)
except OSError as exc:
    print(errno.errorcode[exc.errno], flush=True)
time.sleep(60)
"""


def test_a_bind_failing_on_a_port_an_outgoing_connection_holds_names_the_holder_and_port_taken(
        netns: NetNS, audit_host: AuditHost) -> None:
    capture = audit_host.capture()
    try:
        assert capture.start(), capture.notes
        holder, _info = netns.actor("hold-port", "--port", "40100", "--to", "127.0.0.1:5002", "--serve")
        service = netns.popen([sys.executable, "-c", BIND_SCRIPT, "40100"])
        assert service.stdout is not None and service.stdout.readline().strip() == "EADDRINUSE"
        events = wait_events(capture, lambda got: any(e.pid == service.pid for e in got))
    finally:
        capture.stop()
    (event,) = [e for e in events if e.pid == service.pid]
    assert (event.call, event.address) == (FailedCall.BIND, Endpoint("0.0.0.0", 40100))
    assert event.netns_inode == os.stat(f"/run/netns/{netns.name}").st_ino
    (held,) = event.holders  # the targeted dump right after the failure
    assert (held.socket.local, held.socket.remote) == (Endpoint("127.0.0.1", 40100), Endpoint("127.0.0.1", 5002))
    assert [p.pid for p in held.processes] == [holder.pid]

    result = scan_of(netns, Config(services=(Service("web", 40100, namespace=netns.name),)))
    (taken,) = of_kind(result, Kind.PORT_TAKEN)
    (found,) = find_bind_failures([event], result)

    ns = namespace_of(netns)
    assert found.key == f"bind_failed:40100:{event.comm}@{ns.key}" and found.severity is Severity.CRITICAL
    assert found.details["port_taken"] == taken.key and found.port == 40100
    assert [p.pid for p in found.processes] == [service.pid, holder.pid]
    assert found.summary == (
        f"{event.comm}[{service.pid}] could not bind 40100 (address 0.0.0.0:40100; EADDRINUSE, once in 300 s): "
        f"held by {who(held.processes)} (127.0.0.1:40100 -> 127.0.0.1:5002, tcp ESTABLISHED); see {taken.key}")


# ----------------------------------------------------------------- pure: wording, keys, counting

BLUE = NamespaceInfo(inode=4026532999, dev=4, kind=NamespaceKind.NAMED, name="blue")


def failure(call: FailedCall, address: str, *, pid: int = 990, comm: str = "loadgen", at: float = T,
            serial: int = 1, holders: tuple[Holder, ...] = (),
            identity: CgroupIdentity | None = None) -> FailureEvent:
    host, _, port = address.rpartition(":")
    return FailureEvent(at=at, serial=serial, call=call, exit=-99 if call is FailedCall.CONNECT else -98,
                        pid=pid, comm=comm, exe=f"/usr/bin/{comm}", address=Endpoint(host, int(port)),
                        netns_inode=BLUE.inode, identity=identity, holders=holders)


def exhausted_scan() -> ScanResult:
    """A namespace (blue) whose 10-port range is used up towards 127.0.0.1:5001 by loadgen[990], 9 of 10."""
    socks = [tcp(f"127.0.0.1:{40000 + i}", "127.0.0.1:5001") for i in range(9)]
    s = replace(snap([listen("127.0.0.1:5001"), *socks], (40000, 40009), owners={x: 990 for x in socks},
                     processes=[proc(990, "loadgen")]), namespace=BLUE)
    collector = Collector(NetlinkSource())
    return scan_snapshot(Config(), collector, s)


def test_connect_failures_are_counted_per_destination_and_process_and_link_the_exhaustion() -> None:
    result = exhausted_scan()
    events = [failure(FailedCall.CONNECT, "127.0.0.1:5001", serial=i, at=T + i) for i in range(3)]
    events.append(failure(FailedCall.CONNECT, "127.0.0.1:5001", pid=991, comm="other", serial=9))
    events.append(failure(FailedCall.BIND, "0.0.0.0:8080", serial=10))  # not this kind's
    found = sorted(find_connect_failures(events, result), key=lambda f: f.key)
    assert [f.key for f in found] == ["connect_failed:127.0.0.1:5001:loadgen@blue",
                                      "connect_failed:127.0.0.1:5001:other@blue"]
    loadgen = found[0]
    assert loadgen.details["count"] == 3 and loadgen.details["first_seen"] < loadgen.details["last_seen"]
    assert loadgen.summary == ("loadgen[990] could not connect to 127.0.0.1:5001 (EADDRNOTAVAIL, 3 times in "
                               "300 s) because 9 of 10 usable ports to 127.0.0.1:5001 are in use by loadgen[990]")
    assert loadgen.summary == REGISTRY.get(Kind.CONNECT_FAILED).summarize(loadgen, loadgen.processes)
    assert loadgen.namespace == BLUE and loadgen.remediation and "pooling" in loadgen.remediation


def test_without_an_exhaustion_finding_the_connect_failure_says_what_the_kernel_was_short_of() -> None:
    s = replace(snap([tcp("127.0.0.1:40001", "10.0.0.9:443")], (40000, 40009), reserved=[40005]),
                namespace=BLUE)
    result = scan_snapshot(Config(), Collector(NetlinkSource()), s)
    (found,) = find_connect_failures([failure(FailedCall.CONNECT, "127.0.0.1:5001")], result)
    assert found.details["exhaustion"] is None
    assert found.summary.startswith(
        "loadgen[990] could not connect to 127.0.0.1:5001 (EADDRNOTAVAIL, once in 300 s): no ephemeral port was "
        "free for it; the namespace has 9 usable ports (range 40000-40009, 1 reserved inside it), 1 in use by "
        "connections (0 towards 127.0.0.1:5001)")
    (alone,) = find_connect_failures([failure(FailedCall.CONNECT, "127.0.0.1:5001")])
    assert alone.key == "connect_failed:127.0.0.1:5001:loadgen" and alone.namespace is None
    assert alone.summary.endswith("(no scan of its namespace to name the cause)")


def test_bind_failure_without_a_dumped_holder_takes_the_port_taken_holders_and_words_a_container() -> None:
    holding = tcp("127.0.0.1:40100", "127.0.0.2:2379")
    s = replace(snap([holding], owners={holding: 77}, processes=[proc(77, "kube-apiserver")]), namespace=BLUE)
    config = Config(services=(Service("ingress", 40100, namespace="blue"),))
    result = scan_snapshot(config, Collector(NetlinkSource()), s)
    (taken,) = of_kind(result, Kind.PORT_TAKEN)
    ident = CgroupIdentity("/system.slice/docker-0123456789abcdef.scope", container="0123456789abcdef")
    event = failure(FailedCall.BIND, "0.0.0.0:40100", pid=812, comm="ingress", identity=ident)
    (found,) = find_bind_failures([event], result, config=Config(severities={Kind.BIND_FAILED: Severity.WARNING}))
    assert found.severity is Severity.WARNING and found.key == "bind_failed:40100:ingress@blue"
    assert found.summary == (
        "ingress[812] (container 0123456789ab) could not bind 40100 (address 0.0.0.0:40100; EADDRINUSE, once in "
        "300 s): held by kube-apiserver[77] (127.0.0.1:40100 -> 127.0.0.2:2379, tcp ESTABLISHED); "
        f"see {taken.key}")
    assert found.summary == REGISTRY.get(Kind.BIND_FAILED).summarize(found, found.processes)
    assert found.remediation == taken.remediation and found.sockets == (holding,)


def test_a_listener_holding_the_port_means_another_instance_runs() -> None:
    held = Holder(listen("0.0.0.0:8080"), (ProcessInfo(5, "nginx"),))
    (found,) = find_bind_failures([failure(FailedCall.BIND, "0.0.0.0:8080", comm="nginx", pid=6, holders=(held,))])
    assert found.details["listener_holds"] is True and found.remediation is not None
    assert found.remediation.startswith("another instance")
    assert "held by nginx[5] (0.0.0.0:8080, tcp LISTEN)" in found.summary


def test_event_kinds_find_nothing_in_a_scan_and_are_never_re_explained() -> None:
    for kind in (Kind.CONNECT_FAILED, Kind.BIND_FAILED):
        detector = REGISTRY.get(kind)
        assert detector.severity is Severity.CRITICAL and detector.involves is None
    assert of_kind(exhausted_scan(), Kind.CONNECT_FAILED) == []


def test_the_window_keeps_the_last_seconds_and_a_bounded_number_of_events() -> None:
    window = FailureWindow(window=60, max_events=3)
    window.add(failure(FailedCall.CONNECT, "127.0.0.1:5001", at=T + i, serial=i) for i in range(5))
    assert [e.serial for e in window.current(T + 10)] == [2, 3, 4]
    assert [e.serial for e in window.current(T + 63.5)] == [4]
    assert window.current(T + 200) == ()


# ----------------------------------------------------------------- metrics


def test_failure_metrics_count_by_kind_and_keep_only_the_top_destinations() -> None:
    metrics = FailureMetrics(top=2, tracked=3)
    registry = CollectorRegistry()
    registry.register(metrics)
    metrics.record([failure(FailedCall.CONNECT, "127.0.0.1:5001", serial=i) for i in range(5)], netns="blue")
    metrics.record([failure(FailedCall.CONNECT, f"10.0.0.{i}:443", serial=i) for i in range(1, 5)])
    metrics.record([failure(FailedCall.BIND, "0.0.0.0:40100")], netns="blue")
    metrics.record_capture(True, 2)
    text = generate_latest(registry).decode()
    assert 'portwatch_failures_total{kind="connect_failed"} 9.0' in text
    assert 'portwatch_failures_total{kind="bind_failed"} 1.0' in text
    dests = [line for line in text.splitlines() if line.startswith("portwatch_connect_failures_by_destination_total{")]
    assert len(dests) == 2  # top-K
    assert 'portwatch_connect_failures_by_destination_total{netns="blue",remote_ip="127.0.0.1",remote_port="5001"} 5.0' \
        in dests
    assert 'portwatch_bind_failures_by_port_total{address="0.0.0.0",netns="blue",port="40100"} 1.0' in text
    assert "portwatch_failure_capture_active 1.0" in text and "portwatch_failure_capture_lost_total 2.0" in text


# ----------------------------------------------------------------- configuration


def test_capture_failures_is_off_by_default_and_takes_yaml_off_and_audit() -> None:
    assert Config().capture.failures == "off"
    assert parse_config(yaml.safe_load("capture: {failures: off}"), "x").capture.failures == "off"
    assert parse_config(yaml.safe_load("capture: {failures: audit}"), "x").capture.failures == "audit"
    try:
        parse_config(yaml.safe_load("capture: {failures: audti}"), "x.yaml")
    except ConfigError as exc:
        assert exc.errors == ["capture.failures: must be one of off, audit, got 'audti' (did you mean 'audit'?)"]
    else:
        raise AssertionError("a misspelt capture.failures was accepted")
