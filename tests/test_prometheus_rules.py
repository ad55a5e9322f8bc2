"""The shipped Prometheus rules: promtool checks and unit tests, and a real server.

- ``promtool check rules`` and ``promtool test rules`` pass on ``config/prometheus/``;
- the unit tests cover every alert name of the rules file, each firing at least once;
- a real Prometheus (:class:`tests.promserver.PrometheusServer`) loads the shipped rules,
  scrapes a tiny exporter that serves portwatch_* series, and evaluates the alerts.
"""

from __future__ import annotations

import copy
import re
import selectors
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from tests.conftest import require_binary
from tests.netns import NetNS
from tests.promserver import SHIPPED_RULES, PrometheusServer, Sample, pick_free_port

RULES_TEST = SHIPPED_RULES.parent / "portwatch.rules.test.yml"
KINDS = ["self_connect", "loop_pair", "listener_in_ephemeral_range", "port_taken",
         "service_port_at_risk", "ephemeral_exhaustion", "close_wait_buildup", "range_misconfigured"]
SEVERITIES = ["info", "warning", "critical"]


def _load(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def _alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the shipped rules file."""
    return [rule for group in _load(SHIPPED_RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120,
                          cwd=SHIPPED_RULES.parent)


# ---------------------------------------------------------------------- static checks

def test_shipped_rules_pass_promtool_check() -> None:
    done = _promtool("check", "rules", SHIPPED_RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shipped_rules_pass_their_promtool_unit_tests() -> None:
    done = _promtool("test", "rules", RULES_TEST.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_severity_annotations_and_a_for() -> None:
    """Every alert has a severity, summary/description/remediation, and a ``for``."""
    names = {rule["alert"] for rule in _alert_rules()}
    assert names >= {"PortwatchSelfConnect", "PortwatchPortTaken", "PortwatchListenerInEphemeralRange",
                     "PortwatchEphemeralPortExhaustion", "PortwatchCloseWaitBuildup",
                     "PortwatchScansFailing", "PortwatchDown", "PortwatchConfigReloadFailed"}
    for rule in _alert_rules():
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        assert {"summary", "description", "remediation"} <= set(rule.get("annotations", {})), rule["alert"]
        assert rule.get("for"), f"{rule['alert']} has no 'for': it would fire on a single evaluation"


def test_unit_tests_cover_every_alert() -> None:
    """Each alert name of the rules file is expected firing, and expected silent, somewhere."""
    tests = _load(RULES_TEST)
    assert tests["rule_files"] == [SHIPPED_RULES.name]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert names - fired == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested not firing"
    assert (fired | silent) - names == set(), "tests for alerts that do not exist"
    # Alerts with several rules (severities, reasons): each rule's labels fire somewhere.
    fired_labels = {(check["alertname"], tuple(sorted(alert["exp_labels"].items())))
                    for case in tests["tests"] for check in case.get("alert_rule_test", [])
                    for alert in check.get("exp_alerts") or []}
    for rule in _alert_rules():
        static = set(rule["labels"].items())
        assert any(name == rule["alert"] and static <= {(k, str(v)) for k, v in labels}
                   for name, labels in fired_labels), f"{rule['alert']} {rule['labels']} never fires in a test"


def test_no_rule_aggregates_the_netns_label_away() -> None:
    """Per-namespace alerts: every aggregation of a finding series keeps ``netns``."""
    for rule in _alert_rules():
        expr = " ".join(rule["expr"].split())
        for clause in re.findall(r"\bwithout \(([^)]*)\)", expr):
            assert "netns" not in clause, rule["alert"]
        for clause in re.findall(r"\bby \(([^)]*)\)", expr):
            assert "netns" in clause, rule["alert"]


def test_unit_tests_have_a_host_with_two_namespaces_alerting_apart() -> None:
    """Some test feeds one instance's series from two namespaces and expects an alert for each."""
    cases = []
    for case in _load(RULES_TEST)["tests"]:
        namespaces: dict[str, set[str]] = {}
        for series in case["input_series"]:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', series["series"]))
            if "netns" in labels:
                namespaces.setdefault(labels["instance"], set()).add(labels["netns"])
        alerted = {(check["alertname"], alert["exp_labels"].get("instance"), alert["exp_labels"].get("netns"))
                   for check in case.get("alert_rule_test", []) for alert in check.get("exp_alerts") or []}
        for instance, names in namespaces.items():
            for alertname in {a for a, _, _ in alerted}:
                if len({n for a, i, n in alerted if a == alertname and i == instance and n in names}) >= 2:
                    cases.append((case["name"], alertname))
    assert {a for _, a in cases} >= {"PortwatchSelfConnect", "PortwatchEphemeralPortExhaustion"}, cases


# ---------------------------------------------------------------------- a real Prometheus

@pytest.fixture
def exporter() -> Iterator[str]:
    """A tiny exporter in this process serving portwatch_* series: its ``host:port``.

    One self-connect finding (critical), one listener inside the range, healthy scans.
    """
    import time

    registry = CollectorRegistry()
    Gauge("portwatch_build_info", "build", ["version", "python_version"], registry=registry) \
        .labels("0.1.0", "3.11").set(1)
    Gauge("portwatch_ephemeral_port_range_low", "low", registry=registry).set(32768)
    Gauge("portwatch_ephemeral_port_range_high", "high", registry=registry).set(60999)
    Gauge("portwatch_ephemeral_ports_usable", "usable", registry=registry).set(28232)
    findings = Gauge("portwatch_findings", "findings", ["kind", "severity"], registry=registry)
    for kind in KINDS:
        for severity in SEVERITIES:
            findings.labels(kind, severity).set(0)
    findings.labels("self_connect", "critical").set(1)
    Gauge("portwatch_listener_in_ephemeral_range", "listener", ["protocol", "port", "process"],
          registry=registry).labels("tcp", "40000", "myservice").set(1)
    Gauge("portwatch_destination_ephemeral_usage_ratio", "ratio", ["local_ip", "remote_ip", "remote_port"],
          registry=registry).labels("127.0.0.1", "127.0.0.1", "5432").set(0.25)
    Counter("portwatch_scans_total", "scans", registry=registry).inc(3)
    Counter("portwatch_scan_errors_total", "errors", registry=registry)
    Gauge("portwatch_last_scan_timestamp_seconds", "ts", registry=registry).set(time.time())
    Gauge("portwatch_last_scan_success", "ok", registry=registry).set(1)
    Gauge("portwatch_config_last_reload_successful", "ok", registry=registry).set(1)

    port = pick_free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _override_rules(path: Path) -> Path:
    """A copy of the shipped PortwatchSelfConnect rule without ``for``, labelled harness=override.

    The shipped rule waits 1m before firing; the copy fires at its first evaluation, so
    the test sees the whole path to "firing" without waiting a minute.
    """
    rule = copy.deepcopy(next(r for r in _alert_rules() if r["alert"] == "PortwatchSelfConnect"))
    rule.pop("for", None)
    rule["labels"]["harness"] = "override"
    path.write_text(yaml.safe_dump({"groups": [{"name": "harness-override", "rules": [rule]}]}))
    return path


def _value(sample: Sample) -> float:
    return float(sample["value"][1])


def test_real_prometheus_scrapes_and_evaluates_shipped_rules(exporter: str, tmp_path: Path) -> None:
    binary = require_binary("prometheus")
    override = _override_rules(tmp_path / "override.rules.yml")
    with PrometheusServer(exporter, rule_files=[SHIPPED_RULES, override], binary=binary) as prom:
        prom.wait_for('up{job="portwatch"} == 1', timeout=30)

        (target,) = prom.targets()
        assert target["labels"]["job"] == "portwatch"
        assert target["scrapeUrl"] == f"http://{exporter}/metrics"
        assert target["health"] == "up", target

        (finding,) = prom.query('portwatch_findings{kind="self_connect",severity="critical"}')
        assert finding["metric"]["instance"] == exporter and _value(finding) == 1
        assert len(prom.query("portwatch_findings")) == len(KINDS) * len(SEVERITIES)
        assert [_value(s) for s in prom.query("portwatch_ephemeral_port_range_low")] == [32768]
        (listener,) = prom.query("portwatch_listener_in_ephemeral_range")
        assert {k: listener["metric"][k] for k in ("protocol", "port", "process")} == \
            {"protocol": "tcp", "port": "40000", "process": "myservice"}

        # The copy without `for` fires, with its annotations rendered from the real series.
        alert = prom.wait_for_alert("PortwatchSelfConnect", "firing", {"harness": "override"}, timeout=30)
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["instance"] == exporter
        assert alert["annotations"]["summary"] == f"Self-connected TCP socket on {exporter}"
        assert alert["annotations"]["description"].startswith(f"1 socket(s) on {exporter} are connected")

        # The shipped rules are loaded and active on the same data; the shipped `for`
        # keeps them pending for a while (firing only if this test were very slow).
        groups = {g["name"]: g for g in prom.rules()}
        assert {"portwatch-findings", "portwatch-health", "harness-override"} <= set(groups)
        for group in groups.values():
            for rule in group["rules"]:
                assert rule["health"] == "ok", rule
        for name, labels in [("PortwatchSelfConnect", {"instance": exporter}),
                             ("PortwatchListenerInEphemeralRange", {"port": "40000", "process": "myservice"})]:
            shipped = prom.wait_for_alert(name, ("pending", "firing"), {**labels, "harness": None}, timeout=30)
            assert shipped["labels"]["severity"] in SEVERITIES
        # Healthy scans, reachable target, no exhaustion: these never become active.
        quiet = {"PortwatchScansFailing", "PortwatchEphemeralPortExhaustion", "PortwatchConfigReloadFailed",
                 "PortwatchCloseWaitBuildup", "PortwatchPortTaken"}
        assert [a for a in prom.alerts() if a["labels"]["alertname"] in quiet] == []

        proc = prom.proc
        assert proc is not None
    assert proc.poll() is not None, "prometheus still running after stop"
    assert not prom.workdir.exists()


_NS_EXPORTER = textwrap.dedent("""
    import sys
    from prometheus_client import CollectorRegistry, Gauge, start_http_server
    from tests.promserver import pick_free_port
    registry = CollectorRegistry()
    Gauge("portwatch_ephemeral_ports_usable", "usable", registry=registry).set(123)
    port = pick_free_port()
    start_http_server(port, addr="127.0.0.1", registry=registry)
    print(f"READY {port}", flush=True)
    sys.stdin.read()  # serve until the test closes stdin or stops us
""")


@pytest.mark.netns
def test_real_prometheus_in_network_namespace(netns: NetNS) -> None:
    """With ``wrap=netns.wrap`` the server runs in the namespace and scrapes its loopback."""
    binary = require_binary("prometheus")
    netns.sysctl("net/ipv4/ip_local_port_range", "10000 60000")
    proc = netns.popen([sys.executable, "-c", _NS_EXPORTER])
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    assert sel.select(30), "exporter in the namespace printed nothing within 30s"
    line = proc.stdout.readline()
    assert line.startswith("READY "), f"exporter failed: {line!r}"
    target = f"127.0.0.1:{line.split()[1]}"

    with PrometheusServer(target, binary=binary, wrap=netns.wrap) as prom:
        assert not 10000 <= prom.port <= 60000, "listen port should be outside the namespace's range"
        (sample,) = prom.wait_for("portwatch_ephemeral_ports_usable", timeout=30)
        assert _value(sample) == 123 and sample["metric"]["instance"] == target
        assert prom.targets()[0]["health"] == "up"
        server = prom.proc
        assert server is not None
    assert server.poll() is not None, "prometheus still running after stop"
    assert not prom.workdir.exists()
