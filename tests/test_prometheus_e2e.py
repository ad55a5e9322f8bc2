"""A real Prometheus scrapes a real `portwatch run` in a namespace holding real failures.

The namespace holds a real TCP self-connect and a real listener inside the
ephemeral range; the daemon scans it every second; Prometheus (in the same
namespace) scrapes it every second with the shipped alerting rules loaded.
The rules' ``for:`` durations are shortened to 0s in a copy (their durations
are covered by ``promtool test rules``); the expressions are the shipped ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require_binary
from tests.netns import NetNS
from tests.promserver import SHIPPED_RULES, PrometheusServer
from tests.test_daemon import METRICS_PORT, RealDaemon


def rules_without_for(tmp_path: Path) -> Path:
    """A copy of the shipped rules with every ``for:`` set to 0s."""
    doc: dict[str, Any] = yaml.safe_load(SHIPPED_RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    path = tmp_path / "portwatch.rules.for0.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def value(samples: list[dict[str, Any]]) -> float:
    assert len(samples) == 1, samples
    return float(samples[0]["value"][1])


def test_prometheus_scrapes_daemon_and_shipped_rules_fire(netns: NetNS, tmp_path: Path) -> None:
    require_binary("prometheus")
    _sc, self_info = netns.actor("self-connect")
    _ls, listen_info = netns.actor("listen", "--port", "45000")
    port = self_info["port"]
    daemon = RealDaemon(netns, tmp_path, f"interval: 1s\nstate_directory: {tmp_path / 'state'}\n")
    try:
        daemon.wait_metrics("a first scan", lambda m: m.get(("portwatch_scans_total", ()), 0) >= 1)
        with PrometheusServer(f"127.0.0.1:{METRICS_PORT}", rule_files=[rules_without_for(tmp_path)],
                              wrap=netns.wrap) as prom:
            prom.wait_for('up{job="portwatch"} == 1')
            found = prom.wait_for('portwatch_findings{kind="self_connect",severity="critical"} == 1')
            assert value(found) == 1
            listener = prom.wait_for('portwatch_listener_in_ephemeral_range{protocol="tcp",port="45000"}')
            assert listener[0]["metric"]["process"].startswith("python")
            assert value(prom.query("portwatch_ephemeral_port_range_low")) == 32768
            assert value(prom.query("portwatch_ephemeral_port_range_high")) == 60999
            assert value(prom.query('portwatch_sockets{protocol="tcp",state="LISTEN"}')) >= 1
            assert value(prom.query("portwatch_last_scan_success")) == 1

            alert = prom.wait_for_alert("PortwatchSelfConnect", "firing")
            assert alert["labels"]["severity"] == "critical"
            alert = prom.wait_for_alert("PortwatchListenerInEphemeralRange", "firing", labels={"port": "45000"})
            assert alert["labels"]["severity"] == "warning"
            # Quiet where all is well: nothing else fires. With every `for:` at 0s,
            # PortwatchDown (absent(up)) fires on the rule evaluations before the first
            # scrape; give the health rules a bounded while to see the target up.
            expected = {"PortwatchSelfConnect", "PortwatchListenerInEphemeralRange"}
            deadline = time.monotonic() + 30
            while True:
                names = {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}
                if names == expected or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert names == expected, names
        assert port and listen_info["pid"]
    finally:
        assert daemon.stop() == 0
