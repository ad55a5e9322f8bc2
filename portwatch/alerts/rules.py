"""The rule engine: which findings alert, when an alert fires, repeats and resolves. Pure.

:func:`evaluate` takes the rules, one scan's findings, the alerts as they
were after the previous scan, and the time, and returns the new alerts and
the notifications to queue. No I/O, no clock, no randomness (the ids come
from the ``new_id`` function it is given), so the rules are tested as
tables with an injected ``now``.

The semantics (docs/alerting.md):

- Rules are tried in order for each finding; a rule matches when every
  matcher it sets matches (:func:`rule_matches`). The first match wins
  unless the rule says ``continue``. A matching rule without sinks silences
  the finding (no alert), and, without ``continue``, hides it from later rules.
- An alert is one (rule, finding key): ``alert_key = "<rule>/<finding key>"``.
  Its severity is the rule's ``severity`` or else the finding's.
- A new alert is *pending* from the first scan that matches it; it *fires*
  at the first scan at least ``for`` seconds later (``for: 0``: at once).
  A scan that does not match it drops a pending alert without a word.
- When it fires: one :attr:`~Reason.NEW` notification per sink of the rule.
  While it fires: a :attr:`~Reason.SEVERITY_CHANGED` notification to every
  sink when its severity changes; otherwise, per sink, a
  :attr:`~Reason.REPEAT` once ``repeat_interval`` (0 = never) has passed since
  the last notification to that sink; a sink with a
  :attr:`SinkPolicy.resend_interval` (Alertmanager) uses that interval instead.
  A sink added to the rule while the alert fires gets a NEW; a sink removed
  from it gets a RESOLVED (if the alert sends resolutions to it).
- The first scan that does not match a firing alert resolves it: one
  :attr:`~Reason.RESOLVED` notification per sink it was sent to, if the rule
  says ``send_resolved`` or the sink's policy says ``always_resolve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from portwatch.config.types import AlertRule, AlertsConfig, finding_matches
from portwatch.model import Finding, Severity
from portwatch.alerts.notification import Notification, Reason, Status, finding_data

__all__ = [
    "AlertState",
    "DryRunEntry",
    "Evaluation",
    "SinkPolicy",
    "alert_key",
    "dry_run",
    "evaluate",
    "route",
    "rule_matches",
]


class SinkPolicy(NamedTuple):
    """What the engine must know of a sink: its own resend interval (None: the rule's
    ``repeat_interval``) and whether it always gets resolutions (whatever ``send_resolved`` says)."""

    resend_interval: float | None = None
    always_resolve: bool = False


_DEFAULT_POLICY = SinkPolicy()


@dataclass(frozen=True)
class AlertState:
    """One alert, pending (``fired_at`` None) or firing.

    ``since`` is the first scan that matched it; ``fired_at`` when it fired;
    ``notified`` maps each sink it was sent to onto the time of the latest
    firing notification made for that sink. ``finding`` is the latest
    finding's ``to_dict()``; ``send_resolved`` the rule's setting when it last matched.
    """

    key: str
    rule: str
    finding_key: str
    severity: Severity
    since: float
    fired_at: float | None = None
    finding: Mapping[str, Any] = field(default_factory=dict)
    send_resolved: bool = True
    notified: Mapping[str, float] = field(default_factory=dict)

    @property
    def firing(self) -> bool:
        """True once the alert fired (until it resolves and disappears)."""
        return self.fired_at is not None


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` returns: the alerts after this scan and the notifications to queue."""

    alerts: dict[str, AlertState]
    notifications: tuple[Notification, ...]


def alert_key(rule: str, finding_key: str) -> str:
    """The key of the alert of ``rule`` about the finding with ``finding_key``."""
    return f"{rule}/{finding_key}"


def rule_matches(rule: AlertRule, finding: Finding) -> bool:
    """True when every matcher ``rule`` sets matches ``finding`` (a rule without matchers matches all).

    ``kinds``: the finding's kind is one of them; ``min_severity``: the
    finding's severity is at least this; ``ports``, ``address``, ``process``,
    ``unit``: as :func:`portwatch.config.types.ignore_matches`. Pure; never raises.
    """
    if rule.kinds is not None and finding.kind not in rule.kinds:
        return False
    if rule.min_severity is not None and finding.severity < rule.min_severity:
        return False
    return finding_matches(finding, rule.ports, rule.address, rule.process, rule.unit)


def route(rules: Sequence[AlertRule], finding: Finding) -> list[AlertRule]:
    """The rules that apply to ``finding``, in order: up to and including the first match
    without ``continue``. Silencing rules (no sinks) are included."""
    out: list[AlertRule] = []
    for rule in rules:
        if rule_matches(rule, finding):
            out.append(rule)
            if not rule.continue_:
                break
    return out


def evaluate(
    rules: Sequence[AlertRule],
    findings: Iterable[Finding],
    alerts: Mapping[str, AlertState],
    now: float,
    *,
    host: str,
    new_id: Callable[[], str],
    policies: Mapping[str, SinkPolicy] | None = None,
) -> Evaluation:
    """One scan's step of the alert state machine (see the module documentation).

    Takes the rules, the findings the scan reported (after ``ignore``), the
    alerts after the previous scan, the scan's Unix time, the host name put in
    every notification, a function making unique notification ids, and the
    policy of each sink (None: every sink has the default policy; otherwise a
    sink missing from it no longer exists and gets nothing). Returns the new
    alerts and the notifications, in a stable order: by finding, rule and
    sink, then resolutions by alert key. Pure; never raises.
    """
    def policy(sink: str) -> SinkPolicy | None:
        if policies is None:
            return _DEFAULT_POLICY
        return policies.get(sink)

    notes: list[Notification] = []

    def note(state: AlertState, sink: str, status: Status, reason: Reason,
             previous: Severity | None = None) -> None:
        assert state.fired_at is not None
        notes.append(Notification(
            id=new_id(), sink=sink, alert_key=state.key, rule=state.rule, status=status, reason=reason,
            severity=state.severity, previous_severity=previous, starts_at=state.fired_at,
            ends_at=now if status is Status.RESOLVED else None, created_at=now, host=host,
            finding=state.finding))

    def resolves(state: AlertState, sink: str) -> bool:
        p = policy(sink)
        return p is not None and (state.send_resolved or p.always_resolve)

    matched: dict[str, tuple[AlertRule, Finding, Severity]] = {}
    for finding in findings:
        for rule in route(rules, finding):
            if rule.sinks:
                key = alert_key(rule.name, finding.key)
                matched.setdefault(key, (rule, finding, rule.severity or finding.severity))

    out: dict[str, AlertState] = {}
    for key, (rule, finding, severity) in matched.items():
        old = alerts.get(key)
        data = finding_data(finding)
        if old is None:
            state = AlertState(key, rule.name, finding.key, severity, since=now, finding=data,
                               send_resolved=rule.send_resolved)
        else:
            state = replace(old, finding=data, send_resolved=rule.send_resolved,
                            since=min(old.since, now))
        sinks = [s for s in rule.sinks if policy(s) is not None]
        if state.fired_at is None:
            state = replace(state, severity=severity)
            if now - state.since >= rule.for_:
                state = replace(state, fired_at=now, notified={s: now for s in sinks})
                for s in sinks:
                    note(state, s, Status.FIRING, Reason.NEW)
            out[key] = state
            continue
        notified = dict(state.notified)
        previous = state.severity
        state = replace(state, severity=severity)
        for s in sorted(set(notified) - set(rule.sinks)):  # taken out of the rule
            if resolves(state, s):
                note(replace(state, severity=previous), s, Status.RESOLVED, Reason.RESOLVED)
            del notified[s]
        for s in sinks:
            last = notified.get(s)
            if last is None:
                note(state, s, Status.FIRING, Reason.NEW)
                notified[s] = now
            elif severity is not previous:
                note(state, s, Status.FIRING, Reason.SEVERITY_CHANGED, previous)
                notified[s] = now
            else:
                p = policy(s)
                interval = p.resend_interval if p is not None and p.resend_interval else rule.repeat_interval
                if now < last:  # the clock went back: restart the interval from now
                    notified[s] = now
                elif interval > 0 and now - last >= interval:
                    note(state, s, Status.FIRING, Reason.REPEAT)
                    notified[s] = now
        out[key] = replace(state, notified=notified)

    for key in sorted(set(alerts) - set(matched)):
        old = alerts[key]
        if old.fired_at is None:
            continue
        for s in old.notified:
            if resolves(old, s):
                note(old, s, Status.RESOLVED, Reason.RESOLVED)
    return Evaluation(out, tuple(notes))


@dataclass(frozen=True)
class DryRunEntry:
    """One line of ``portwatch scan --alerts-dry-run``: a finding and a rule that applies to it.

    ``rule`` is None when no rule matches (the finding does not alert).
    ``sinks`` empty with a rule: the rule silences the finding. ``state``
    says what the engine would do now: ``"fires now"``, ``"pending"``
    (``fires_in`` seconds left if the finding persists), ``"firing"``,
    ``"silenced"`` or ``"not alerted"``.
    """

    finding_key: str
    kind: str
    finding_severity: Severity
    summary: str
    rule: str | None
    severity: Severity | None
    sinks: tuple[str, ...]
    state: str
    fires_in: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "finding": self.finding_key,
            "kind": self.kind,
            "finding_severity": self.finding_severity.value,
            "summary": self.summary,
            "rule": self.rule,
            "severity": self.severity.value if self.severity else None,
            "sinks": list(self.sinks),
            "state": self.state,
            "fires_in_seconds": self.fires_in,
        }


def dry_run(config: AlertsConfig, findings: Iterable[Finding], alerts: Mapping[str, AlertState],
            now: float) -> list[DryRunEntry]:
    """What the rules would do with ``findings`` at ``now``, given the current ``alerts``; sends nothing.

    One entry per (finding, applying rule), in finding then rule order; one
    entry with ``rule`` None for a finding no rule matches. Pure; never raises.
    """
    out: list[DryRunEntry] = []
    for f in findings:
        def entry(rule: AlertRule | None, sinks: tuple[str, ...], state: str,
                  fires_in: float | None = None, f: Finding = f) -> DryRunEntry:
            severity = (rule.severity or f.severity) if rule is not None else None
            return DryRunEntry(f.key, f.kind.value, f.severity, f.summary, rule.name if rule else None,
                               severity, sinks, state, fires_in)

        applying = route(config.rules, f)
        if not applying:
            out.append(entry(None, (), "not alerted"))
        for rule in applying:
            if not rule.sinks:
                out.append(entry(rule, (), "silenced"))
                continue
            current = alerts.get(alert_key(rule.name, f.key))
            if current is not None and current.fired_at is not None:
                out.append(entry(rule, rule.sinks, "firing"))
                continue
            since = current.since if current is not None else now
            left = rule.for_ - (now - since)
            out.append(entry(rule, rule.sinks, "fires now") if left <= 0
                       else entry(rule, rule.sinks, "pending", left))
    return out
