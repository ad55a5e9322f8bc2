"""The Grafana dashboard stays valid against the real metrics; the alert rules link to runbooks.

- every panel expression, with the dashboard's variables substituted, passes
  ``promtool check rules`` as a recording rule;
- every metric an expression names appears in a real scrape of ``portwatch run``
  (in a network namespace holding a self-connect and a listener inside the range,
  so that the per-finding series exist);
- panel ids and the uid are unique, and every panel queries the datasource variable
  and filters on the job and instance variables, and on the netns variable wherever it
  selects a per-namespace series.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.conftest import require_binary
from tests.netns import NetNS
from tests.test_daemon import RealDaemon

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "config" / "grafana" / "portwatch.json"
#: Where every alert's runbook link points: the runbooks the package installs.
RUNBOOKS_URL = "file:///usr/share/portwatch/prometheus/runbooks.md"
#: What Grafana puts in place of the variables, for promtool.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h",
             "$job": "portwatch", "$instance": ".*", "$netns": ".*"}
#: Names in expressions that are functions, keywords or label names, not metrics.
NOT_METRICS = {"sum", "by", "max", "min", "topk", "rate", "increase", "time", "histogram_quantile",
               "without", "le", "instance", "job", "kind", "severity", "protocol", "port", "process",
               "local_ip", "remote_ip", "remote_port", "state", "version", "python_version", "rule",
               "sink", "reason", "netns"}
#: The series that carry a ``netns`` label (one per scanned network namespace).
PER_NAMESPACE = {"portwatch_ephemeral_port_range_low", "portwatch_ephemeral_port_range_high",
                 "portwatch_ephemeral_ports_usable", "portwatch_reserved_ports", "portwatch_sockets",
                 "portwatch_findings", "portwatch_destination_ephemeral_usage_ratio"}
#: Metrics the dashboard names that the daemon does not export yet (each with the change
#: that will add it); the scrape check tolerates exactly these. The failure capture's
#: (docs/failures.md) are exported once the capture is wired into the daemon, and then only
#: with `capture.failures: audit`: remove them when this test's daemon configures the capture.
NOT_YET_EXPORTED = {"portwatch_failures_total", "portwatch_connect_failures_by_destination_total",
                    "portwatch_bind_failures_by_port_total", "portwatch_failure_capture_active",
                    "portwatch_failure_capture_lost_total"}


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _expressions() -> list[tuple[str, str]]:
    """``(panel title + refId, expression with variables substituted)`` of every target."""
    out = []
    for panel in _panels(_dashboard()):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((f"{panel['title']} {target['refId']}", expr))
    return out


def _metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {n for n in names if n not in NOT_METRICS}


def test_panel_ids_and_uid_are_unique_and_panels_use_the_variables() -> None:
    doc = _dashboard()
    ids = [p["id"] for p in _panels(doc)]
    assert len(ids) == len(set(ids)) and ids
    assert doc["uid"] == "portwatch-overview"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert {"datasource", "job", "instance", "netns"} <= set(variables)
    netns = variables["netns"]
    assert netns["multi"] is True and netns["includeAll"] is True
    # "All" is a regex that also matches series without the label (an older daemon's).
    assert netns["allValue"] == ".*"
    assert netns["query"]["query"].startswith("label_values(portwatch_findings{") and \
        netns["query"]["query"].endswith(", netns)")
    for panel in _panels(doc):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job", instance=~"$instance"' in target["expr"], panel["title"]
            for name in _metric_names(target["expr"]) & PER_NAMESPACE:
                assert f'{name}{{job=~"$job", instance=~"$instance", netns=~"$netns"}}' in target["expr"], \
                    (panel["title"], name)
    titles = " ".join(p["title"] for p in _panels(doc)).lower()
    for subject in ("findings by kind and severity", "listeners inside", "usage",
                    "scan duration", "notifications", "findings by namespace", "usage by namespace",
                    "namespaces scanned and left out"):
        assert subject in titles


def test_per_namespace_panels_group_by_namespace() -> None:
    panels = {p["title"]: p for p in _panels(_dashboard())}
    for title in ("Findings by namespace", "Ephemeral range usage by namespace", "Usable ephemeral ports",
                  "Ephemeral port range"):
        for target in panels[title]["targets"]:
            assert "by (instance, netns)" in target["expr"], (title, target["expr"])
            if target.get("format") != "table":  # a table shows the netns label as a column
                assert "{{netns}}" in target["legendFormat"], title
    scanned = {t["refId"]: t["expr"] for t in panels["Namespaces scanned and left out"]["targets"]}
    assert _metric_names(scanned["A"]) == {"portwatch_namespaces"} and "by (instance, kind)" in scanned["A"]
    assert _metric_names(scanned["B"]) == {"portwatch_namespaces_left_out"}
    assert _metric_names(scanned["C"]) == {"portwatch_namespaces_skipped"}


def test_every_expression_passes_promtool_as_a_recording_rule(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    expressions = _expressions()
    assert len(expressions) >= 10
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}", "expr": expr} for i, (_, expr) in enumerate(expressions)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in done.stdout


@pytest.mark.netns
def test_every_metric_appears_in_a_real_scrape(netns: NetNS, tmp_path: Path) -> None:
    netns.actor("self-connect")
    netns.actor("listen", "--port", "45000")
    wanted = set().union(*(_metric_names(expr) for _, expr in _expressions()))
    assert "portwatch_findings" in wanted and "portwatch_scan_duration_seconds_bucket" in wanted
    assert NOT_YET_EXPORTED <= wanted
    daemon = RealDaemon(netns, tmp_path, f"interval: 1s\nstate_directory: {tmp_path / 'state'}\n")
    try:
        daemon.wait_metrics("a scan that saw the listener and the self-connect", lambda m: any(
            name == "portwatch_listener_in_ephemeral_range" for name, _ in m) and any(
            name == "portwatch_destination_ephemeral_usage_ratio" for name, _ in m))
        text = daemon.fetch()
        assert text is not None
    finally:
        assert daemon.stop() == 0
    scraped = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    assert sorted(wanted - scraped - NOT_YET_EXPORTED) == []


def test_every_alert_links_to_its_runbook_section() -> None:
    rules = yaml.safe_load((REPO / "config" / "prometheus" / "portwatch.rules.yml").read_text())
    runbooks = (REPO / "config" / "prometheus" / "runbooks.md").read_text()
    sections = {line[3:].strip().lower() for line in runbooks.splitlines() if line.startswith("## ")}
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert alerts
    # The package installs runbooks.md at the links' path.
    installed = [f"file:///{dest.strip('/')}/runbooks.md" for line in
                 (REPO / "debian" / "portwatch.install").read_text().splitlines()
                 for source, dest in [line.split()] if source == "config/prometheus/runbooks.md"]
    assert installed == [RUNBOOKS_URL]
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        # The copy the Debian package installs (debian/portwatch.install).
        assert url == RUNBOOKS_URL + "#" + rule["alert"].lower(), rule["alert"]
        assert rule["alert"].lower() in sections, rule["alert"]
