"""Alerting end to end through the webhook sink, with a REAL HTTP receiver on loopback:
payload and headers, retries after 500s and while the receiver is down, nothing lost and
nothing duplicated, the queue bound, delivery of pending notifications after a restart."""

from __future__ import annotations

import json
import logging
import re
import ssl
import subprocess
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
from prometheus_client import CollectorRegistry

from portwatch.alerts import Alerting, SinkBuildError
from portwatch.alerts.notification import iso_time
from portwatch.alerts.store import ALERTS_FILE
from portwatch.config import AlertsConfig, load_yaml, parse_config
from portwatch.model import Finding, Kind, ProcessInfo, Protocol, Severity
from tests.alertmanager import Receiver, receiver, wait_for  # noqa: F401 (fixture)
from tests.conftest import require_binary

HOST = "testhost"
TOKEN = "s3cret-token-value"


def finding(key: str, kind: Kind = Kind.SELF_CONNECT, severity: Severity = Severity.CRITICAL,
            port: int = 40000) -> Finding:
    return Finding(kind=kind, severity=severity, key=key, summary=f"{key} is connected to itself", port=port,
                   protocol=Protocol.TCP, addresses=("127.0.0.1",),
                   processes=(ProcessInfo(pid=4242, name="client", cmdline=("client", "--x"), user="app",
                                          unit="client.service"),),
                   remediation=f"restart the client of {key}", details={"n": 1})


A, B, D, E = (finding(f"self_connect:tcp:127.0.0.1:{40000 + i}", port=40000 + i) for i in (0, 2, 4, 6))


def alerts_config(text: str) -> AlertsConfig:
    return parse_config(load_yaml(text)).alerts


def webhook_config(url: str, extra: str = "", rule: str = "") -> AlertsConfig:
    return alerts_config(f"""
alerts:
  sinks:
    hook:
      type: webhook
      url: {url}/hook
      retry_initial_delay: 10ms
      retry_max_delay: 50ms
{extra}
  rules:
    - name: page
      sinks: [hook]
{rule}
""")


class Harness:
    """Alerting instances sharing one state directory; every one started is stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.state_dir = tmp_path / "state"
        self.started: list[Alerting] = []
        self.registry = CollectorRegistry()

    def new(self, config: AlertsConfig, registry: CollectorRegistry | None = None) -> Alerting:
        self.registry = registry or CollectorRegistry()
        alerting = Alerting(config, self.state_dir, HOST, self.registry, journal=lambda: None)
        alerting.start()
        self.started.append(alerting)
        return alerting

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def wait_metric(self, name: str, at_least: float, **labels: str) -> None:
        wait_for(f"{name}{labels} >= {at_least}", lambda: self.metric(name, **labels) >= at_least)

    def close(self) -> None:
        for a in self.started:
            a.stop(timeout=5)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


def docs(requests: Sequence[Any]) -> list[dict[str, Any]]:
    return [r.json for r in requests]


def test_webhook_posts_the_document_with_headers_and_token(harness: Harness, receiver: Receiver, tmp_path: Path,
                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = webhook_config(receiver.url, extra=f"""      bearer_token_file: {token_file}
      headers:
        X-Team: network
        X-Secret-Header: another-secret""")
    alerting = harness.new(config)
    alerting.process([A], 1_700_000_000.0)
    (req,) = receiver.wait_accepted(1)
    assert (req.method, req.path) == ("POST", "/hook")
    assert req.headers["content-type"] == "application/json"
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert req.headers["x-team"] == "network" and req.headers["x-secret-header"] == "another-secret"
    assert req.headers["user-agent"].startswith("portwatch/")
    doc = req.json
    assert doc["version"] == 1 and re.fullmatch(r"[0-9a-f]{32}", doc["id"])
    assert (doc["status"], doc["reason"], doc["host"]) == ("firing", "new", HOST)
    assert doc["alert"] == {"key": f"page/{A.key}", "rule": "page", "severity": "critical",
                            "previous_severity": None, "starts_at": "2023-11-14T22:13:20.000Z", "ends_at": None}
    assert doc["summary"] == A.summary and doc["remediation"] == A.remediation
    assert doc["processes"] == [{"pid": 4242, "name": "client", "cmdline": ["client", "--x"], "user": "app",
                                 "unit": "client.service", "gone": False}]
    assert doc["finding"] == json.loads(json.dumps(A.to_dict()))
    assert doc["created_at"] == iso_time(1_700_000_000.0)

    alerting.process([], 1_700_000_060.0)
    _, resolved = receiver.wait_accepted(2)
    r = resolved.json
    assert (r["status"], r["reason"]) == ("resolved", "resolved") and r["id"] != doc["id"]
    assert r["alert"]["starts_at"] == doc["alert"]["starts_at"]
    assert r["alert"]["ends_at"] == "2023-11-14T22:14:20.000Z"
    harness.wait_metric("portwatch_alerts_sent_total", 2, sink="hook")  # counted after the receiver answered
    alerting.stop(timeout=5)
    text = caplog.text + (harness.state_dir / ALERTS_FILE).read_text()
    assert TOKEN not in text and "another-secret" not in text  # secrets are neither logged nor saved


def test_retries_after_500s_deliver_once(harness: Harness, receiver: Receiver) -> None:
    receiver.answer(500, 503, 502)
    alerting = harness.new(webhook_config(receiver.url))
    alerting.process([A], 1000.0)
    receiver.wait_accepted(1)
    reqs = receiver.requests
    assert [r.status for r in reqs] == [500, 503, 502, 200]
    assert len({r.json["id"] for r in reqs}) == 1  # the same notification, retried
    harness.wait_metric("portwatch_alerts_sent_total", 1, sink="hook")
    assert harness.metric("portwatch_alerts_failed_total", sink="hook") == 3
    assert harness.metric("portwatch_alerts_retried_total", sink="hook") == 3
    assert harness.metric("portwatch_alerts_dropped_total", sink="hook", reason="queue_full") == 0
    assert alerting.queued("hook") == []


def test_receiver_down_then_back_nothing_lost_nothing_duplicated(harness: Harness, receiver: Receiver) -> None:
    receiver.stop()
    alerting = harness.new(webhook_config(receiver.url))
    alerting.process([A, B], 1000.0)
    harness.wait_metric("portwatch_alerts_failed_total", 3, sink="hook")
    alerting.process([B], 1015.0)  # A resolves while the receiver is still down
    alerting.process([B], 1030.0)
    assert [n.status.value + ":" + n.alert_key for n in alerting.queued("hook")] == [
        f"firing:page/{A.key}", f"firing:page/{B.key}", f"resolved:page/{A.key}"]
    receiver.start()
    got = docs(receiver.wait_accepted(3))
    assert [(d["status"], d["alert"]["key"]) for d in got] == [
        ("firing", f"page/{A.key}"), ("firing", f"page/{B.key}"), ("resolved", f"page/{A.key}")]
    assert len({d["id"] for d in got}) == 3
    harness.wait_metric("portwatch_alerts_sent_total", 3, sink="hook")
    assert receiver.requests == receiver.accepted()  # nothing reached it while down: no duplicate
    assert harness.metric("portwatch_alerts_retried_total", sink="hook") >= 1
    assert harness.metric("portwatch_alerts_dropped_total", sink="hook", reason="queue_full") == 0


def test_permanent_refusal_is_dropped_and_the_queue_goes_on(harness: Harness, receiver: Receiver) -> None:
    receiver.answer(400)
    alerting = harness.new(webhook_config(receiver.url))
    alerting.process([A], 1000.0)
    alerting.process([A, B], 1010.0)
    got = receiver.wait_accepted(1)
    assert [r.status for r in receiver.requests] == [400, 200]
    assert got[0].json["alert"]["key"] == f"page/{B.key}"
    harness.wait_metric("portwatch_alerts_dropped_total", 1, sink="hook", reason="rejected")
    assert harness.metric("portwatch_alerts_retried_total", sink="hook") == 0


def test_repeat_interval_over_http(harness: Harness, receiver: Receiver) -> None:
    alerting = harness.new(webhook_config(receiver.url, rule="      repeat_interval: 1m"))
    for t in (0.0, 30.0, 60.0, 90.0, 120.0):
        alerting.process([A], 1000.0 + t)
        wait_for("an empty queue", lambda: not alerting.queued("hook"))  # as between real scans
    got = docs(receiver.wait_accepted(3))
    assert [(d["reason"], d["created_at"]) for d in got] == [
        ("new", iso_time(1000.0)), ("repeat", iso_time(1060.0)), ("repeat", iso_time(1120.0))]


def test_queue_bound_drops_what_the_documentation_says(harness: Harness, receiver: Receiver) -> None:
    """docs/alerting.md, "When a sink is down": coalesced repeats, then superseded, repeats, oldest."""
    slow = webhook_config(receiver.url, rule="      repeat_interval: 10s").sinks["hook"]
    hour = alerts_config(f"""
alerts:
  sinks:
    hook: {{type: webhook, url: "{receiver.url}/hook", queue_size: 3,
            retry_initial_delay: 1h, retry_max_delay: 1h}}
  rules: [{{name: page, sinks: [hook], repeat_interval: 10s}}]
""")
    alerting = harness.new(hour)
    alerting.process([A], 0.0)
    receiver.wait_accepted(1, "(A fires while the receiver is up)")
    receiver.stop()

    def queued() -> list[str]:
        return [f"{n.reason.value}:{n.alert_key.split(':')[-1]}" for n in alerting.queued("hook")]

    def dropped() -> float:
        return harness.metric("portwatch_alerts_dropped_total", sink="hook", reason="queue_full")

    alerting.process([A], 10.0)  # A repeats: the worker tries, fails, waits an hour
    harness.wait_metric("portwatch_alerts_failed_total", 1, sink="hook")
    assert queued() == ["repeat:40000"]
    steps: list[tuple[float, list[Finding], list[str], float]] = [
        (11.0, [A, B], ["repeat:40000", "new:40002"], 0),
        (12.0, [A, B, D], ["repeat:40000", "new:40002", "new:40004"], 0),
        # full: E's firing pushes out the oldest repeat (A's: A was sent before)
        (13.0, [A, B, D, E], ["new:40002", "new:40004", "new:40006"], 1),
        # A resolves: nothing superseded, no repeat queued: the oldest (B's firing) goes
        (14.0, [B, D, E], ["new:40004", "new:40006", "resolved:40000"], 2),
        # B and E resolve: B's resolution pushes out the oldest (D's firing);
        # E's resolution supersedes E's queued firing, which goes
        (15.0, [D], ["resolved:40000", "resolved:40002", "resolved:40006"], 4),
        # D repeats (none of its notifications is queued) into a full queue without
        # superseded notifications or repeats: the arriving repeat itself is dropped
        (22.0, [D], ["resolved:40000", "resolved:40002", "resolved:40006"], 5),
    ]
    for now, findings, expected, drops in steps:
        alerting.process(findings, now)
        assert (queued(), dropped()) == (expected, drops), f"after the scan at t={now:g}"
    assert harness.metric("portwatch_alerts_queued", sink="hook") == 3
    assert harness.metric("portwatch_alerts_coalesced_total", sink="hook") == 0

    # the receiver comes back; a reload (with short delays) retries at once
    receiver.start()
    alerting.reload(webhook_config(receiver.url, rule="      repeat_interval: 10s"))
    assert slow == alerting.config.sinks["hook"]
    got = docs(receiver.wait_accepted(4))
    assert [(d["status"], d["alert"]["key"].split(":")[-1]) for d in got] == [
        ("firing", "40000"), ("resolved", "40000"), ("resolved", "40002"), ("resolved", "40006")]
    # D, still firing, is told at its next repeat
    alerting.process([D], 32.0)
    last = receiver.wait_accepted(5)[-1].json
    assert (last["status"], last["reason"], last["alert"]["key"].split(":")[-1]) == ("firing", "repeat", "40004")
    assert dropped() == 5


def test_repeat_is_coalesced_while_a_firing_notification_waits(harness: Harness, receiver: Receiver) -> None:
    receiver.stop()
    config = alerts_config(f"""
alerts:
  sinks:
    hook: {{type: webhook, url: "{receiver.url}/hook", retry_initial_delay: 1h, retry_max_delay: 1h}}
  rules: [{{name: page, sinks: [hook], repeat_interval: 10s}}]
""")
    alerting = harness.new(config)
    alerting.process([A], 0.0)
    harness.wait_metric("portwatch_alerts_failed_total", 1, sink="hook")
    for t in (10.0, 20.0, 30.0):
        alerting.process([A], t)
    assert [n.reason.value for n in alerting.queued("hook")] == ["new"]
    assert harness.metric("portwatch_alerts_coalesced_total", sink="hook") == 3
    assert harness.metric("portwatch_alerts_dropped_total", sink="hook", reason="queue_full") == 0


def test_pending_notifications_survive_a_restart(harness: Harness, receiver: Receiver) -> None:
    receiver.stop()
    config = webhook_config(receiver.url)
    first = harness.new(config)
    first.process([A, B], 1000.0)
    harness.wait_metric("portwatch_alerts_failed_total", 1, sink="hook")
    first.stop(timeout=1.0)
    saved = json.loads((harness.state_dir / ALERTS_FILE).read_text())
    assert [(p["notification"]["alert_key"], p["notification"]["status"]) for p in saved["pending"]] == [
        (f"page/{A.key}", "firing"), (f"page/{B.key}", "firing")]
    assert sorted(a["key"] for a in saved["alerts"]) == sorted([f"page/{A.key}", f"page/{B.key}"])
    ids = [p["notification"]["id"] for p in saved["pending"]]

    receiver.start()
    second = harness.new(config)
    got = docs(receiver.wait_accepted(2))
    assert [d["id"] for d in got] == ids  # the very notifications, in order
    harness.wait_metric("portwatch_alerts_sent_total", 2, sink="hook")
    # firing state came back too: the same findings send nothing, a resolution is sent
    second.process([A, B], 1015.0)
    second.process([B], 1030.0)
    got = docs(receiver.wait_accepted(3))
    assert [(d["status"], d["alert"]["key"]) for d in got[2:]] == [("resolved", f"page/{A.key}")]
    assert got[2]["alert"]["starts_at"] == iso_time(1000.0)
    second.stop(timeout=5)
    assert json.loads((harness.state_dir / ALERTS_FILE).read_text())["pending"] == []
    third = harness.new(config)
    assert list(third.alerts()) == [f"page/{B.key}"]


def test_stop_delivers_what_it_can_within_the_timeout(harness: Harness, receiver: Receiver) -> None:
    alerting = harness.new(webhook_config(receiver.url))
    receiver.hold()
    alerting.process([A, B, D], 1000.0)
    receiver.wait_arrived()
    receiver.release()
    alerting.stop(timeout=30)
    assert len(receiver.accepted()) == 3
    assert json.loads((harness.state_dir / ALERTS_FILE).read_text())["pending"] == []


def test_a_hanging_receiver_never_blocks_process(harness: Harness, receiver: Receiver) -> None:
    alerting = harness.new(webhook_config(receiver.url, extra="      timeout: 1m"))
    receiver.hold()
    alerting.process([A], 1000.0)
    receiver.wait_arrived()  # the worker is now stuck in the request
    for t in range(1, 50):
        alerting.process([A, B] if t % 2 else [A], 1000.0 + t)  # returns although the sink hangs
    waiting = len(alerting.queued("hook"))  # the held one included
    assert waiting >= 2 and receiver.requests == []
    receiver.release()
    receiver.wait_accepted(waiting)
    wait_for("an empty queue", lambda: not alerting.queued("hook"))
    assert len(receiver.requests) == waiting
    assert harness.metric("portwatch_alerts_failed_total", sink="hook") == 0


def test_corrupt_state_file_is_replaced(harness: Harness, receiver: Receiver,
                                        caplog: pytest.LogCaptureFixture) -> None:
    harness.state_dir.mkdir()
    (harness.state_dir / ALERTS_FILE).write_text("{not json")
    alerting = harness.new(webhook_config(receiver.url))
    assert "corrupt" in caplog.text
    alerting.process([A], 1000.0)
    receiver.wait_accepted(1)
    alerting.stop(timeout=5)
    assert json.loads((harness.state_dir / ALERTS_FILE).read_text())["version"] == 1


def test_reload_rereads_the_token_adds_and_removes_sinks_and_resolves_removed_rules(
        harness: Harness, receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")

    def config(rules: str, sinks: str = "") -> AlertsConfig:
        return alerts_config(f"""
alerts:
  sinks:
    hook: {{type: webhook, url: "{receiver.url}/hook", bearer_token_file: {token},
           retry_initial_delay: 10ms, retry_max_delay: 50ms}}
{sinks}
  rules:
{rules}
""")

    alerting = harness.new(config("    - {name: page, sinks: [hook]}"))
    alerting.process([A], 1000.0)
    (first,) = receiver.wait_accepted(1)
    assert first.headers["authorization"] == "Bearer first"

    token.write_text("second\n")
    other = Receiver()
    try:
        alerting.reload(config("    - {name: page2, sinks: [hook, other]}",
                               sinks=f'    other: {{type: webhook, url: "{other.url}/other"}}'))
        assert harness.metric("portwatch_alerts_sent_total", sink="other") == 0  # its series exists now
        alerting.process([A], 1010.0)
        got = receiver.wait_accepted(3)
        assert {(r.json["status"], r.json["alert"]["rule"]) for r in got[1:]} == {
            ("firing", "page2"), ("resolved", "page")}  # the old rule's alert resolves
        assert all(r.headers["authorization"] == "Bearer second" for r in got[1:])
        (to_other,) = other.wait_accepted(1)
        assert to_other.json["alert"]["rule"] == "page2"

        # a sink that cannot be built (its token vanished after validation) fails the reload as a
        # whole: nothing changes
        valid = config("    - {name: page3, sinks: [hook]}")
        token.unlink()
        with pytest.raises(SinkBuildError, match="alerts.sinks.hook: cannot read bearer_token_file"):
            alerting.reload(valid)
        assert [r.name for r in alerting.config.rules] == ["page2"]

        # removing a sink discards its queue and its series
        token.write_text("third\n")
        other.stop()
        alerting.process([], 1020.0)
        wait_for("other's queue to fill", lambda: alerting.queued("other") != [])
        alerting.reload(config("    - {name: page2, sinks: [hook]}"))
        assert alerting.queued("other") == []
        assert harness.registry.get_sample_value("portwatch_alerts_sent_total", {"sink": "other"}) is None
        assert "sink 'other' was removed: discarding its 1 undelivered notification(s)" in caplog.text
    finally:
        other.stop()


def test_firing_alerts_are_counted_in_a_metric(harness: Harness, receiver: Receiver) -> None:
    alerting = harness.new(webhook_config(receiver.url, rule="      for: 1m"))
    alerting.process([A, B], 1000.0)
    assert harness.metric("portwatch_alerts_pending", rule="page") == 2
    assert harness.metric("portwatch_alerts_firing", rule="page", severity="critical") == 0
    alerting.process([A, B], 1060.0)
    assert harness.metric("portwatch_alerts_pending", rule="page") == 0
    assert harness.metric("portwatch_alerts_firing", rule="page", severity="critical") == 2
    alerting.process([A], 1075.0)
    assert harness.metric("portwatch_alerts_firing", rule="page", severity="critical") == 1
    assert harness.metric("portwatch_alerts_firing", rule="page", severity="warning") == 0


def test_stop_before_start_leaves_the_state_file_alone(harness: Harness, receiver: Receiver) -> None:
    receiver.stop()
    first = harness.new(webhook_config(receiver.url))
    first.process([A], 1000.0)
    harness.wait_metric("portwatch_alerts_failed_total", 1, sink="hook")
    first.stop(timeout=1)
    before = (harness.state_dir / ALERTS_FILE).read_text()
    never_started = Alerting(webhook_config(receiver.url), harness.state_dir, HOST, CollectorRegistry(),
                             journal=lambda: None)
    never_started.stop(timeout=1)
    assert (harness.state_dir / ALERTS_FILE).read_text() == before
    with pytest.raises(RuntimeError, match="before start"):
        Alerting(webhook_config(receiver.url), harness.state_dir, HOST, CollectorRegistry(),
                 journal=lambda: None).process([A], 1001.0)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for 127.0.0.1, and its key, made with the openssl CLI."""
    openssl = require_binary("openssl")
    cert, key = directory / "server.pem", directory / "server.key"
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=portwatch-test",
         "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE"],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"openssl failed: {result.stderr}")
    return cert, key


def test_tls_is_verified_by_default(harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    https = Receiver(tls=context)
    try:
        config = alerts_config(f"""
alerts:
  sinks:
    strict: {{type: webhook, url: "{https.url}/strict", retry_initial_delay: 1h, retry_max_delay: 1h}}
    with_ca: {{type: webhook, url: "{https.url}/with-ca", tls_ca_file: {cert}}}
    lax: {{type: webhook, url: "{https.url}/lax", tls_verify: false}}
  rules:
    - {{name: page, sinks: [strict, with_ca, lax]}}
""")
        alerting = harness.new(config)
        alerting.process([A], 1000.0)
        got = https.wait_accepted(2)
        assert sorted(r.path for r in got) == ["/lax", "/with-ca"]
        harness.wait_metric("portwatch_alerts_failed_total", 1, sink="strict")
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text or "certificate verify failed" in caplog.text
        assert [n.alert_key for n in alerting.queued("strict")] == [f"page/{A.key}"]  # kept for a retry
    finally:
        https.stop()
