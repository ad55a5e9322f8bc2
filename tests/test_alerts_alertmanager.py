"""The alertmanager sink against a REAL Alertmanager on loopback: labels, annotations,
startsAt/endsAt, resolution, severity changes, an HA pair with one member down, retries."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client import CollectorRegistry

from portwatch.alerts import Alerting
from portwatch.alerts.notification import iso_time
from portwatch.config import AlertsConfig, load_yaml, parse_config
from portwatch.model import Finding, Kind, ProcessInfo, Protocol, Severity
from tests.alertmanager import Alertmanager, Receiver, free_port, receiver, wait_for  # noqa: F401

HOST = "testhost"
PORT = 40004
SELF = Finding(kind=Kind.SELF_CONNECT, severity=Severity.CRITICAL, key=f"self_connect:tcp:127.0.0.1:{PORT}",
               summary=f"tcp socket 127.0.0.1:{PORT} is connected to itself", port=PORT, protocol=Protocol.TCP,
               addresses=("127.0.0.1",),
               processes=(ProcessInfo(pid=4242, name="client", user="app", unit="client.service"),),
               remediation="start the server before the client")
EXHAUST = Finding(kind=Kind.EPHEMERAL_EXHAUSTION, severity=Severity.WARNING,
                  key="ephemeral_exhaustion:127.0.0.1->127.0.0.1:8080", summary="82% of the range to 8080",
                  port=8080, protocol=Protocol.TCP, addresses=("127.0.0.1",))


def am_alerts(urls: list[str], resend: str = "1h", labels: str = "") -> AlertsConfig:
    listed = ", ".join(f'"{u}"' for u in urls)
    return parse_config(load_yaml(f"""
alerts:
  sinks:
    am:
      type: alertmanager
      urls: [{listed}]
      resend_interval: {resend}
      timeout: 5s
      retry_initial_delay: 20ms
      retry_max_delay: 200ms
{labels}
  rules:
    - name: page
      sinks: [am]
""")).alerts


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def am(tmp_path: Path) -> Iterator[Alertmanager]:
    a = Alertmanager(tmp_path / "am")
    try:
        yield a.start()
    finally:
        a.stop()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def make(config: AlertsConfig, tmp_path: Path, registry: CollectorRegistry) -> Alerting:
    alerting = Alerting(config, tmp_path / "state", HOST, registry, journal=lambda: None)
    alerting.start()
    return alerting


def one(am: Alertmanager, **labels: str) -> dict[str, Any]:
    (alert,) = wait_for(f"an alert {labels} in Alertmanager", lambda: am.find(**labels) or None,
                        explain=lambda: f"alerts: {am.alerts()}")
    return alert


def test_labels_annotations_times_and_resolution(am: Alertmanager, tmp_path: Path,
                                                 registry: CollectorRegistry) -> None:
    alerting = make(am_alerts([am.url], labels="      labels: {team: network}"), tmp_path, registry)
    try:
        fired = time.time()
        alerting.process([SELF], fired)
        alert = one(am, alertname="PortwatchSelfConnect")
        assert alert["labels"] == {"alertname": "PortwatchSelfConnect", "severity": "critical",
                                   "kind": "self_connect", "instance": HOST, "port": str(PORT),
                                   "key": SELF.key, "rule": "page", "team": "network"}
        assert alert["annotations"] == {"summary": SELF.summary, "remediation": SELF.remediation,
                                        "processes": "client[4242] user=app unit=client.service"}
        assert alert["startsAt"] == iso_time(fired)
        # endsAt is four resend intervals (1h) after the post: Alertmanager will not time it out
        assert parse_time(alert["endsAt"]) >= fired + 4 * 3600 - 60
        assert alert["status"]["state"] == "active"
        alerting.process([], time.time())
        wait_for("the alert to be resolved in Alertmanager", lambda: am.find(alertname="PortwatchSelfConnect") == [],
                 explain=lambda: f"alerts: {am.alerts()}")
        # Alertmanager has the resolution before the worker counts its post: wait for the count
        wait_for("both posts counted", lambda: registry.get_sample_value(
            "portwatch_alerts_sent_total", {"sink": "am"}) == 2,
            explain=lambda: str(registry.get_sample_value("portwatch_alerts_sent_total", {"sink": "am"})))
    finally:
        alerting.stop(5)


def test_alertmanager_notifies_its_receiver_of_firing_and_resolved(tmp_path: Path, receiver: Receiver,
                                                                    registry: CollectorRegistry) -> None:
    am = Alertmanager(tmp_path / "am", receiver_url=receiver.url).start()
    alerting = make(am_alerts([am.url]), tmp_path, registry)
    try:
        alerting.process([SELF], time.time())
        firing = wait_for("Alertmanager's firing notification",
                          lambda: [r.json for r in receiver.accepted() if r.json["status"] == "firing"] or None)
        assert firing[0]["alerts"][0]["labels"]["key"] == SELF.key
        resolved_at = time.time()
        alerting.process([], resolved_at)
        resolved = wait_for("Alertmanager's resolved notification",
                            lambda: [r.json for r in receiver.accepted() if r.json["status"] == "resolved"] or None)
        (alert,) = resolved[0]["alerts"]
        assert alert["labels"]["key"] == SELF.key and alert["status"] == "resolved"
        assert abs(parse_time(alert["endsAt"]) - resolved_at) < 0.01  # the time portwatch resolved it
    finally:
        alerting.stop(5)
        am.stop()


def test_severity_change_resolves_the_old_label_set(am: Alertmanager, tmp_path: Path,
                                                   registry: CollectorRegistry) -> None:
    alerting = make(am_alerts([am.url]), tmp_path, registry)
    try:
        alerting.process([EXHAUST], time.time())
        one(am, alertname="PortwatchEphemeralPortExhaustion", severity="warning")
        critical = replace(EXHAUST, severity=Severity.CRITICAL)
        alerting.process([critical], time.time())
        one(am, alertname="PortwatchEphemeralPortExhaustion", severity="critical")
        wait_for("the warning to be resolved", lambda: am.find(severity="warning") == [])
    finally:
        alerting.stop(5)


def test_ha_pair_with_one_member_down(am: Alertmanager, tmp_path: Path, registry: CollectorRegistry) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    alerting = make(am_alerts([down, am.url]), tmp_path, registry)
    try:
        alerting.process([SELF], time.time())
        one(am, key=SELF.key)
        wait_for("the delivery to count", lambda: registry.get_sample_value(
            "portwatch_alerts_sent_total", {"sink": "am"}) == 1)
        assert registry.get_sample_value("portwatch_alerts_failed_total", {"sink": "am"}) == 0
    finally:
        alerting.stop(5)


def test_alertmanager_down_then_up(tmp_path: Path, registry: CollectorRegistry) -> None:
    port = free_port()
    alerting = make(am_alerts([f"http://127.0.0.1:{port}"]), tmp_path, registry)
    am = Alertmanager(tmp_path / "am", port=port)
    try:
        alerting.process([SELF], time.time())
        wait_for("failed attempts", lambda: (registry.get_sample_value(
            "portwatch_alerts_failed_total", {"sink": "am"}) or 0) >= 2)
        am.start()
        one(am, key=SELF.key)
        assert (registry.get_sample_value("portwatch_alerts_retried_total", {"sink": "am"}) or 0) >= 2
    finally:
        alerting.stop(5)
        am.stop()
