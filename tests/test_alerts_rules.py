"""The rule engine (portwatch.alerts.rules) as tables: matching, `for`, repeat_interval,
send_resolved, continue, silencing rules, severity, resolution; with an injected clock."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Sequence

import pytest

from portwatch.alerts.notification import Reason, Status
from portwatch.alerts.rules import AlertState, SinkPolicy, dry_run, evaluate, route, rule_matches
from portwatch.config import AlertRule, AlertsConfig
from portwatch.model import Finding, Kind, PortRange, ProcessInfo, Protocol, Severity
from tests.test_config import FIELD_MATCHES


def finding(kind: Kind = Kind.SELF_CONNECT, key: str = "A", severity: Severity = Severity.CRITICAL,
            port: int | None = 40000, addresses: tuple[str, ...] = ("127.0.0.1",),
            process: str | None = "client", unit: str | None = "client.service") -> Finding:
    procs = (ProcessInfo(pid=42, name=process, unit=unit),) if process or unit else ()
    return Finding(kind=kind, severity=severity, key=key, summary=f"summary of {key}", port=port,
                   protocol=Protocol.TCP, addresses=addresses, processes=procs, remediation=f"fix {key}")


A = finding(key="A")
B = finding(kind=Kind.LISTENER_IN_EPHEMERAL_RANGE, key="B", severity=Severity.WARNING, port=45000,
            addresses=("0.0.0.0",), process="api", unit="api.service")
C = finding(kind=Kind.RANGE_MISCONFIGURED, key="C", severity=Severity.INFO, port=None, addresses=(),
            process=None, unit=None)
A_WARNING = replace(A, severity=Severity.WARNING)


def rule(name: str = "r", sinks: Sequence[str] = ("s",), **kw: object) -> AlertRule:
    return AlertRule(name=name, sinks=tuple(sinks), **kw)  # type: ignore[arg-type]


Event = tuple[float, str, str, str, str, str]  # (now, sink, alert key, status, reason, severity)


def run(rules: Sequence[AlertRule], steps: Sequence[tuple[float, Sequence[Finding]]],
        policies: dict[str, SinkPolicy] | None = None,
        rules_at: dict[float, Sequence[AlertRule]] | None = None) -> list[Event]:
    """Feed the scans in ``steps`` through evaluate; the notifications as tuples."""
    ids = (f"id{i}" for i in itertools.count())
    alerts: dict[str, AlertState] = {}
    out: list[Event] = []
    for now, findings in steps:
        if rules_at and now in rules_at:
            rules = rules_at[now]
        result = evaluate(rules, findings, alerts, now, host="h", new_id=lambda: next(ids), policies=policies)
        alerts = result.alerts
        for n in result.notifications:
            assert n.created_at == now and n.host == "h"
            out.append((now, n.sink, n.alert_key, n.status.value, n.reason.value, n.severity.value))
    return out


def fire(now: float, key: str = "r/A", sink: str = "s", severity: str = "critical") -> Event:
    return (now, sink, key, "firing", "new", severity)


def repeat(now: float, key: str = "r/A", sink: str = "s", severity: str = "critical") -> Event:
    return (now, sink, key, "firing", "repeat", severity)


def resolve(now: float, key: str = "r/A", sink: str = "s", severity: str = "critical") -> Event:
    return (now, sink, key, "resolved", "resolved", severity)


CASES = [
    pytest.param([rule()], [(0, [A]), (15, [A])], None, [fire(0)], id="for-0-fires-on-first-scan"),
    pytest.param([rule(for_=60.0)], [(0, [A]), (30, [A]), (59, [A]), (60, [A]), (75, [A])], None,
                 [fire(60)], id="for-fires-once-persisted-long-enough"),
    pytest.param([rule(for_=60.0)], [(0, [A]), (30, []), (45, [A]), (90, [A]), (105, [A])], None,
                 [fire(105)], id="for-restarts-when-the-finding-goes-away"),
    pytest.param([rule(for_=60.0)], [(0, [A]), (30, [A]), (45, [])], None, [],
                 id="pending-alert-that-goes-away-says-nothing"),
    pytest.param([rule(repeat_interval=100.0)], [(0, [A]), (50, [A]), (100, [A]), (150, [A]), (199, [A]),
                                                 (200, [A])], None,
                 [fire(0), repeat(100), repeat(200)], id="repeat-interval"),
    pytest.param([rule(repeat_interval=0.0)], [(0, [A]), (10**6, [A]), (10**7, [A])], None, [fire(0)],
                 id="repeat-interval-0-never-repeats"),
    pytest.param([rule()], [(0, [A]), (15, [A]), (30, [])], None, [fire(0), resolve(30)],
                 id="send-resolved-default"),
    pytest.param([rule(send_resolved=False)], [(0, [A]), (30, [])], None, [fire(0)],
                 id="send-resolved-false"),
    pytest.param([rule(sinks=("s", "am"), send_resolved=False, repeat_interval=0.0)],
                 [(0, [A]), (60, [A]), (90, [])],
                 {"s": SinkPolicy(), "am": SinkPolicy(resend_interval=60.0, always_resolve=True)},
                 [fire(0), fire(0, sink="am"), repeat(60, sink="am"), resolve(90, sink="am")],
                 id="alertmanager-policy-resends-and-always-resolves"),
    pytest.param([rule("first", sinks=("s1",), continue_=True), rule("second", sinks=("s2",))],
                 [(0, [A]), (10, [])], None,
                 [fire(0, "first/A", "s1"), fire(0, "second/A", "s2"),
                  resolve(10, "first/A", "s1"), resolve(10, "second/A", "s2")],
                 id="continue-lets-later-rules-match"),
    pytest.param([rule("first", sinks=("s1",)), rule("second", sinks=("s2",))], [(0, [A])], None,
                 [fire(0, "first/A", "s1")], id="first-match-wins"),
    pytest.param([rule("quiet", sinks=(), kinds=(Kind.SELF_CONNECT,)), rule("all")], [(0, [A, B])], None,
                 [fire(0, "all/B", severity="warning")], id="rule-without-sinks-silences"),
    pytest.param([rule("quiet", sinks=(), kinds=(Kind.SELF_CONNECT,), continue_=True), rule("all")],
                 [(0, [A])], None, [fire(0, "all/A")], id="silencing-rule-with-continue"),
    pytest.param([rule(min_severity=Severity.WARNING)], [(0, [A, B, C])], None,
                 [fire(0), fire(0, "r/B", severity="warning")], id="min-severity"),
    pytest.param([rule(severity=Severity.INFO)], [(0, [A])], None, [fire(0, severity="info")],
                 id="severity-override"),
    pytest.param([rule()], [(0, [A]), (10, [A_WARNING]), (20, [A_WARNING]), (30, [])], None,
                 [fire(0), (10, "s", "r/A", "firing", "severity_changed", "warning"),
                  resolve(30, severity="warning")],
                 id="severity-change-while-firing-notifies-at-once"),
    pytest.param([rule(for_=30.0)], [(0, [A]), (10, [A_WARNING]), (30, [A_WARNING])], None,
                 [fire(30, severity="warning")], id="severity-change-while-pending-is-silent"),
    pytest.param([rule(sinks=("s1", "s2"))], [(0, [A]), (5, [])], None,
                 [fire(0, sink="s1"), fire(0, sink="s2"), resolve(5, sink="s1"), resolve(5, sink="s2")],
                 id="every-sink-of-the-rule"),
    pytest.param([rule(repeat_interval=100.0)], [(1000, [A]), (500, [A]), (599, [A]), (600, [A])], None,
                 [fire(1000), repeat(600)], id="clock-going-back-restarts-the-interval"),
]


@pytest.mark.parametrize("rules, steps, policies, expected", CASES)
def test_alerts_fire_repeat_and_resolve_as_the_rules_say(rules: list[AlertRule], steps: list[tuple[float, list[Finding]]],
                     policies: dict[str, SinkPolicy] | None, expected: list[Event]) -> None:
    assert run(rules, steps, policies) == expected


MATCH = [
    (rule(), A, True),
    (rule(kinds=(Kind.SELF_CONNECT,)), A, True),
    (rule(kinds=(Kind.LOOP_PAIR, Kind.PORT_TAKEN)), A, False),
    (rule(kinds=(Kind.LOOP_PAIR, Kind.SELF_CONNECT)), A, True),
    (rule(min_severity=Severity.CRITICAL), A, True),
    (rule(min_severity=Severity.CRITICAL), B, False),
    (rule(min_severity=Severity.INFO), C, True),
    # ports, address, process, unit: the matchers of ignore rules (config.types.finding_matches)
    *[(rule(**fields), f, expected) for fields, f, expected in FIELD_MATCHES],
    (rule(kinds=(Kind.SELF_CONNECT,), process="client", ports=PortRange(40000, 40000)), A, True),
    (rule(kinds=(Kind.SELF_CONNECT,), process="api"), A, False),
]


@pytest.mark.parametrize("r, f, expected", MATCH)
def test_rule_matches_a_finding_only_when_every_matcher_matches(r: AlertRule, f: Finding, expected: bool) -> None:
    assert rule_matches(r, f) is expected


def test_route_stops_at_first_match_without_continue() -> None:
    rules = [rule("a", continue_=True), rule("b", sinks=()), rule("c")]
    assert [r.name for r in route(rules, A)] == ["a", "b"]


def test_removed_rule_resolves_its_alerts() -> None:
    events = run([rule("old")], [(0, [A]), (10, [A]), (20, [A])], rules_at={10: [rule("new")]})
    assert events == [fire(0, "old/A"), fire(10, "new/A"), resolve(10, "old/A")]


def test_sink_added_to_and_removed_from_a_firing_rule() -> None:
    events = run([rule(sinks=("s1",))], [(0, [A]), (10, [A]), (20, [A])],
                 rules_at={10: [rule(sinks=("s2",))]})
    assert events == [fire(0, sink="s1"), resolve(10, sink="s1"), fire(10, sink="s2")]


def test_sink_that_no_longer_exists_gets_nothing() -> None:
    policies = {"s": SinkPolicy()}
    assert run([rule(sinks=("s", "gone"))], [(0, [A]), (5, [])], policies) == [fire(0), resolve(5)]


def test_notification_carries_the_finding_and_times() -> None:
    r1 = evaluate([rule(for_=10.0)], [A], {}, 100.0, host="h", new_id=lambda: "x")
    r2 = evaluate([rule(for_=10.0)], [A], r1.alerts, 110.0, host="h", new_id=lambda: "y")
    (n,) = r2.notifications
    assert (n.id, n.starts_at, n.ends_at, n.created_at) == ("y", 110.0, None, 110.0)
    assert n.finding == A.to_dict() and n.summary == "summary of A" and n.port == 40000
    assert n.remediation == "fix A" and n.processes[0]["name"] == "client"
    assert r2.alerts["r/A"].since == 100.0 and r2.alerts["r/A"].fired_at == 110.0
    r3 = evaluate([rule()], [], r2.alerts, 125.0, host="h", new_id=lambda: "z")
    (m,) = r3.notifications
    assert (m.status, m.reason, m.starts_at, m.ends_at) == (Status.RESOLVED, Reason.RESOLVED, 110.0, 125.0)
    assert r3.alerts == {}


def test_same_finding_twice_in_one_scan_is_one_alert() -> None:
    r = evaluate([rule()], [A, A], {}, 0.0, host="h", new_id=lambda: "x")
    assert len(r.notifications) == 1 and list(r.alerts) == ["r/A"]


def test_dry_run_shows_which_rules_would_fire_and_where_without_sending() -> None:
    config = AlertsConfig(rules=(
        rule("quiet", sinks=(), kinds=(Kind.RANGE_MISCONFIGURED,)),
        rule("page", sinks=("hook", "am"), kinds=(Kind.SELF_CONNECT,), continue_=True),
        rule("slow", sinks=("journal",), for_=120.0, severity=Severity.CRITICAL),
    ))
    alerts = evaluate(config.rules, [A], {}, 0.0, host="h", new_id=lambda: "x").alerts
    entries = dry_run(config, [A, B, C], alerts, 30.0)
    got = [(e.finding_key, e.rule, e.severity.value if e.severity else None, e.sinks, e.state, e.fires_in)
           for e in entries]
    assert got == [
        ("A", "page", "critical", ("hook", "am"), "firing", None),
        ("A", "slow", "critical", ("journal",), "pending", 90.0),
        ("B", "slow", "critical", ("journal",), "pending", 120.0),
        ("C", "quiet", "info", (), "silenced", None),
    ]
    assert dry_run(AlertsConfig(rules=(rule(kinds=(Kind.LOOP_PAIR,)),)), [A], {}, 0.0)[0].state == "not alerted"
    assert entries[0].to_dict()["sinks"] == ["hook", "am"]


def test_default_rule_sends_warning_and_worse_to_journal() -> None:
    config = AlertsConfig()
    r = evaluate(config.rules, [A, B, C], {}, 0.0, host="h", new_id=lambda: "x")
    assert sorted((n.alert_key, n.sink) for n in r.notifications) == [
        ("default/A", "journal"), ("default/B", "journal")]
