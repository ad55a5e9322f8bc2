"""Metrics rendering from hand-built scan results, parsed back with prometheus_client's parser."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from portwatch import detect
from portwatch.config import Config
from portwatch.output.metrics import DURATION_BUCKETS, PortwatchMetrics, netns_label, shown_results
from portwatch.model import Kind, NamespaceInfo, NamespaceKind, Severity, Snapshot
from portwatch.model import ScanResult
from portwatch.model.results import NamespacesResult
from tests.builders import listen, proc, snap, tcp, udp

RANGE = (40000, 40999)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def result_of(snapshot: Snapshot, duration: float = 0.012, config: Config = Config()) -> ScanResult:
    """A ScanResult as run_scan would build it from ``snapshot`` (no collector involved)."""
    usage = detect.destination_usage(snapshot)
    findings = detect.detect(snapshot, config, (), usage)
    kept, ignored = detect.apply_ignores(findings, config.ignore)
    return ScanResult(snapshot=snapshot, findings=tuple(kept), ignored=tuple(ignored),
                      usage=usage, duration=duration)


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of the registry's text exposition: (name, sorted labels) -> value."""
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def only(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def lab(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def hlab(**kw: str) -> tuple[tuple[str, str], ...]:
    """The labels of a series of the host namespace's scan (``netns="host"``)."""
    return lab(netns="host", **kw)


HOST = hlab()


def new_metrics(**kw: object) -> tuple[CollectorRegistry, PortwatchMetrics]:
    registry = CollectorRegistry()
    return registry, PortwatchMetrics(registry, version="9.9.9", python_version="3.11.2", **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------- before any scan

def test_before_first_scan_only_build_info_and_zero_counters() -> None:
    registry, _ = new_metrics()
    s = scrape(registry)
    assert s[("portwatch_build_info", lab(version="9.9.9", python_version="3.11.2"))] == 1
    assert s[("portwatch_scans_total", ())] == 0
    assert s[("portwatch_scan_errors_total", ())] == 0
    assert only(s, "portwatch_findings_detected_total") == {lab(kind=k.value): 0 for k in Kind}
    for name in ("portwatch_ephemeral_port_range_low", "portwatch_sockets", "portwatch_findings",
                 "portwatch_last_scan_success", "portwatch_last_scan_timestamp_seconds",
                 "portwatch_config_last_reload_successful"):
        assert not only(s, name), name


# ----------------------------------------------------------------- one scan

def test_successful_scan_exports_range_socket_finding_and_destination_figures() -> None:
    listener = listen("0.0.0.0:40100")
    udp_listener = udp("0.0.0.0:40200")
    sc = tcp("127.0.0.1:40002", "127.0.0.1:40002")
    socks = [listener, udp_listener, sc, listen("0.0.0.0:22"),
             tcp("10.0.0.1:40300", "10.0.0.2:5432"), tcp("10.0.0.1:40301", "10.0.0.2:5432", "TIME_WAIT"),
             tcp("10.0.0.1:40302", "10.0.0.3:443")]
    snapshot = snap(socks, RANGE, reserved=[40500, 40501, 80],
                    owners={listener: 10, udp_listener: 11, sc: 12},
                    processes=[proc(10, "myservice"), proc(11, "dnsd"), proc(12, "client")])
    result = result_of(snapshot)
    registry, metrics = new_metrics()
    metrics.record_scan(result, result.findings, finished_at=1_700_000_001.5)
    s = scrape(registry)

    assert s[("portwatch_ephemeral_port_range_low", HOST)] == 40000
    assert s[("portwatch_ephemeral_port_range_high", HOST)] == 40999
    assert s[("portwatch_ephemeral_ports_usable", HOST)] == 998  # 1000 minus 40500, 40501
    assert s[("portwatch_reserved_ports", HOST)] == 3

    sockets = only(s, "portwatch_sockets")
    assert sockets[hlab(protocol="tcp", state="LISTEN")] == 2
    assert sockets[hlab(protocol="tcp", state="ESTABLISHED")] == 3
    assert sockets[hlab(protocol="tcp", state="TIME_WAIT")] == 1
    assert sockets[hlab(protocol="udp", state="UNCONN")] == 1
    assert sockets[hlab(protocol="tcp", state="CLOSE_WAIT")] == 0  # stable series, 0 when none
    assert sum(sockets.values()) == len(socks)

    findings = only(s, "portwatch_findings")
    assert len(findings) == len(Kind) * len(Severity)  # every kind x severity
    assert findings[hlab(kind="listener_in_ephemeral_range", severity="warning")] == 2
    assert findings[hlab(kind="self_connect", severity="critical")] == 1
    assert findings[hlab(kind="port_taken", severity="critical")] == 0
    assert sum(findings.values()) == len(result.findings)

    assert only(s, "portwatch_listener_in_ephemeral_range") == {
        hlab(protocol="tcp", port="40100", process="myservice"): 1,
        hlab(protocol="udp", port="40200", process="dnsd"): 1,
    }
    detected = only(s, "portwatch_findings_detected_total")
    assert detected[lab(kind="listener_in_ephemeral_range")] == 2
    assert detected[lab(kind="self_connect")] == 1

    ratios = only(s, "portwatch_destination_ephemeral_usage_ratio")
    assert ratios[hlab(local_ip="10.0.0.1", remote_ip="10.0.0.2", remote_port="5432")] == pytest.approx(2 / 998)
    assert ratios[hlab(local_ip="10.0.0.1", remote_ip="10.0.0.3", remote_port="443")] == pytest.approx(1 / 998)

    assert s[("portwatch_scans_total", ())] == 1
    assert s[("portwatch_scan_errors_total", ())] == 0
    assert s[("portwatch_last_scan_success", ())] == 1
    assert s[("portwatch_last_scan_timestamp_seconds", ())] == 1_700_000_001.5
    assert s[("portwatch_scan_duration_seconds_count", ())] == 1
    assert s[("portwatch_scan_duration_seconds_sum", ())] == pytest.approx(0.012)
    assert s[("portwatch_scan_duration_seconds_bucket", lab(le="0.01"))] == 0
    assert s[("portwatch_scan_duration_seconds_bucket", lab(le="0.025"))] == 1
    assert s[("portwatch_scan_duration_seconds_bucket", lab(le="+Inf"))] == 1


def test_listener_process_label_is_unknown_without_owner_and_capped_with_many() -> None:
    a, b = listen("0.0.0.0:40100"), listen("[::]:40100")
    lone = listen("0.0.0.0:40101")
    snapshot = snap([a, b, lone], RANGE, owners={a: 1, b: 2},
                    processes=[proc(1, "nginx"), proc(2, "haproxy")])
    result = result_of(snapshot)
    registry, metrics = new_metrics()
    metrics.record_scan(result, (), 0.0)
    assert only(scrape(registry), "portwatch_listener_in_ephemeral_range") == {
        hlab(protocol="tcp", port="40100", process="haproxy,nginx"): 1,
        hlab(protocol="tcp", port="40101", process="unknown"): 1,
    }


def test_listener_series_are_capped_lowest_ports_first() -> None:
    socks = [listen(f"0.0.0.0:{p}") for p in range(40100, 40110)]
    result = result_of(snap(socks, RANGE))
    registry, metrics = new_metrics(listener_limit=4)
    metrics.record_scan(result, (), 0.0)
    s = scrape(registry)
    ports = sorted(dict(k)["port"] for k in only(s, "portwatch_listener_in_ephemeral_range"))
    assert ports == ["40100", "40101", "40102", "40103"]
    # the full count stays visible
    assert s[("portwatch_findings", hlab(kind="listener_in_ephemeral_range", severity="warning"))] == 10


def test_top_destinations_keep_the_k_busiest_in_order() -> None:
    socks = []
    for i, n in enumerate([5, 3, 1]):
        socks += [tcp(f"10.0.0.1:{40000 + 10 * i + j}", f"10.0.1.{i}:80") for j in range(n)]
    result = result_of(snap(socks, RANGE))
    registry, metrics = new_metrics(top_destinations=2)
    metrics.record_scan(result, (), 0.0)
    ratios = only(scrape(registry), "portwatch_destination_ephemeral_usage_ratio")
    assert ratios == {
        hlab(local_ip="10.0.0.1", remote_ip="10.0.1.0", remote_port="80"): pytest.approx(5 / 1000),
        hlab(local_ip="10.0.0.1", remote_ip="10.0.1.1", remote_port="80"): pytest.approx(3 / 1000),
    }
    metrics.set_top_destinations(0)
    metrics.record_scan(result, (), 0.0)
    assert only(scrape(registry), "portwatch_destination_ephemeral_usage_ratio") == {}


# ----------------------------------------------------------------- failures, counters, reloads

def test_failed_scan_keeps_previous_figures_and_counts_error() -> None:
    result = result_of(snap([listen("0.0.0.0:40100")], RANGE))
    registry, metrics = new_metrics()
    metrics.record_scan(result, result.findings, 100.0)
    before = scrape(registry)
    metrics.record_scan_error(duration=0.003, finished_at=200.0)
    after = scrape(registry)
    kept = ("portwatch_ephemeral_port_range_low", "portwatch_sockets", "portwatch_findings",
            "portwatch_listener_in_ephemeral_range", "portwatch_findings_detected_total")
    for name in kept:
        assert only(after, name) == only(before, name), name
    assert after[("portwatch_scans_total", ())] == 2
    assert after[("portwatch_scan_errors_total", ())] == 1
    assert after[("portwatch_last_scan_success", ())] == 0
    assert after[("portwatch_last_scan_timestamp_seconds", ())] == 200.0
    assert after[("portwatch_scan_duration_seconds_count", ())] == 2


def test_first_scan_failing_shows_no_scan_figures() -> None:
    registry, metrics = new_metrics()
    metrics.record_scan_error(duration=float("nan"), finished_at=5.0)
    s = scrape(registry)
    assert s[("portwatch_last_scan_success", ())] == 0
    assert s[("portwatch_scan_errors_total", ())] == 1
    assert not only(s, "portwatch_findings")
    assert not only(s, "portwatch_ephemeral_ports_usable")


def test_detected_counter_adds_only_new_findings() -> None:
    result = result_of(snap([listen("0.0.0.0:40100"), listen("0.0.0.0:40101")], RANGE))
    registry, metrics = new_metrics()
    metrics.record_scan(result, result.findings, 1.0)
    metrics.record_scan(result, (), 2.0)  # same findings again: nothing new
    metrics.record_scan(result, result.findings[:1], 3.0)
    detected = only(scrape(registry), "portwatch_findings_detected_total")
    assert detected[lab(kind="listener_in_ephemeral_range")] == 3
    assert detected[lab(kind="self_connect")] == 0


@pytest.mark.parametrize("events, ok, ts", [
    ([(True, 10.0)], 1, 10.0),
    ([(True, 10.0), (False, 20.0)], 0, 10.0),
    ([(True, 10.0), (False, 20.0), (True, 30.0)], 1, 30.0),
    ([(False, 20.0)], 0, None),
])
def test_reload_metrics_follow_the_latest_reload(events: list[tuple[bool, float]], ok: int, ts: float | None) -> None:
    registry, metrics = new_metrics()
    for success, at in events:
        metrics.record_reload(success, at)
    s = scrape(registry)
    assert s[("portwatch_config_last_reload_successful", ())] == ok
    assert s.get(("portwatch_config_last_reload_success_timestamp_seconds", ())) == ts


def test_duration_buckets_are_cumulative() -> None:
    registry, metrics = new_metrics()
    snapshot = snap([], RANGE)
    for d in (0.0005, 0.02, 0.02, 100.0):
        metrics.record_scan(result_of(snapshot, duration=d), (), 0.0)
    s = scrape(registry)
    buckets = only(s, "portwatch_scan_duration_seconds_bucket")
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    assert buckets[lab(le="0.001")] == 1
    assert buckets[lab(le="0.025")] == 3
    assert buckets[lab(le="30.0")] == 3
    assert buckets[lab(le="+Inf")] == 4
    assert s[("portwatch_scan_duration_seconds_sum", ())] == pytest.approx(100.0405)


def test_registry_rejects_a_second_collector() -> None:
    registry, _ = new_metrics()
    with pytest.raises(ValueError):
        PortwatchMetrics(registry)


def test_openmetrics_exposition_parses() -> None:
    from prometheus_client.openmetrics.exposition import generate_latest as om_latest
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    result = result_of(snap([listen("0.0.0.0:40100")], RANGE))
    registry, metrics = new_metrics()
    metrics.record_scan(result, result.findings, 1.0)
    metrics.record_reload(True, 1.0)
    # prometheus_client's OpenMetrics functions carry no annotations
    exposition: bytes = om_latest(registry)  # type: ignore[no-untyped-call]
    families = om_parse(exposition.decode())  # type: ignore[no-untyped-call]
    names = {f.name for f in families}
    assert {"portwatch_findings_detected", "portwatch_scans", "portwatch_scan_duration_seconds",
            "portwatch_listener_in_ephemeral_range"} <= names


def test_scrapes_during_updates_see_consistent_figures() -> None:
    """Scrapes in other threads while scans are recorded: scans_total and the histogram count always agree."""
    registry, metrics = new_metrics()
    results = [result_of(snap([listen(f"0.0.0.0:{40100 + i}")], RANGE)) for i in range(3)]
    stop = threading.Event()
    problems: list[str] = []

    def scraper() -> None:
        while not stop.is_set():
            s = scrape(registry)
            if s[("portwatch_scans_total", ())] != s[("portwatch_scan_duration_seconds_count", ())]:
                problems.append("scans_total and histogram count disagree")

    threads = [threading.Thread(target=scraper) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(300):
            if i % 7 == 0:
                metrics.record_scan_error(0.001, float(i))
            else:
                metrics.record_scan(results[i % 3], (), float(i))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not problems
    assert scrape(registry)[("portwatch_scans_total", ())] == 300


# ----------------------------------------------------------------- several namespaces

def in_namespace(result: ScanResult, name: str, kind: NamespaceKind = NamespaceKind.NAMED,
                 inode: int = 1) -> ScanResult:
    """``result`` as a scan of the namespace ``name`` (its snapshot labelled with it)."""
    ns = NamespaceInfo(inode=inode, dev=4, kind=kind, name=name)
    return dataclasses.replace(result, snapshot=dataclasses.replace(result.snapshot, namespace=ns))


def test_each_namespace_gets_its_netns_series_and_the_cap_keeps_host_then_most_findings() -> None:
    clean = result_of(snap([], RANGE))
    two = result_of(snap([listen("0.0.0.0:40100"), listen("0.0.0.0:40101")], (40000, 40499)))
    one = result_of(snap([listen("0.0.0.0:40100")], RANGE))
    results = (in_namespace(clean, "host", NamespaceKind.HOST), in_namespace(clean, "a-clean", inode=2),
               in_namespace(one, "b-one", NamespaceKind.CONTAINER, 3), in_namespace(two, "c-two", inode=4))
    registry, metrics = new_metrics(max_series=2)
    metrics.record_pass(NamespacesResult(results, duration=0.5), (), 1.0)
    s = scrape(registry)
    assert only(s, "portwatch_ephemeral_port_range_high") == {lab(netns="host"): 40999, lab(netns="c-two"): 40499}
    assert {dict(k)["netns"] for k in only(s, "portwatch_findings")} == {"host", "c-two"}
    assert s[("portwatch_findings", lab(netns="c-two", kind="listener_in_ephemeral_range", severity="warning"))] == 2
    assert s[("portwatch_namespaces_left_out", ())] == 2
    assert s[("portwatch_namespaces_skipped", ())] == 0
    assert only(s, "portwatch_namespaces") == {lab(kind=k.value): {"host": 1, "named": 2, "container": 1}.get(k.value, 0)
                                               for k in NamespaceKind}
    assert s[("portwatch_scan_duration_seconds_sum", ())] == pytest.approx(0.5)  # the whole pass

    metrics.set_max_series(10)
    metrics.record_pass(NamespacesResult(results, duration=0.5), (), 2.0)
    s = scrape(registry)
    assert {dict(k)["netns"] for k in only(s, "portwatch_ephemeral_ports_usable")} == {"host", "a-clean", "b-one", "c-two"}
    assert s[("portwatch_namespaces_left_out", ())] == 0


def test_the_host_is_kept_even_with_fewer_findings_and_ties_go_by_key() -> None:
    one = result_of(snap([listen("0.0.0.0:40100")], RANGE))
    host = in_namespace(result_of(snap([], RANGE)), "host", NamespaceKind.HOST)
    others = [in_namespace(one, name, inode=i) for i, name in enumerate(["zz", "aa", "mm"], start=2)]
    shown, left_out = shown_results([*others, host], 2)
    assert [netns_label(r) for r in shown] == ["host", "aa"]
    assert left_out == 2
    # a scan without a namespace (the own one only) is labelled as the host's
    assert netns_label(one) == "host"


def test_every_metric_family_is_documented_with_its_labels() -> None:
    from pathlib import Path
    docs = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    _registry, metrics = new_metrics()
    for family in metrics.describe():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}" in docs, name
    assert "### `portwatch_findings{netns, kind, severity}`" in docs
    assert "### `portwatch_namespaces_left_out` (gauge" in docs
