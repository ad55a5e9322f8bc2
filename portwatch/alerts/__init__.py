"""Config-driven alerting: rules, sinks, delivery that loses nothing (docs/alerting.md).

The daemon uses :class:`Alerting`; ``portwatch scan --alerts-dry-run`` uses
:func:`dry_run`. Modules: :mod:`.rules` (the pure rule engine),
:mod:`.notification` (what sinks get), :mod:`.sinks` (one module per sink
type, same interface), :mod:`.delivery` (queues, workers, retries, metrics),
:mod:`.store` (state across restarts), :mod:`.engine` (all of it together).
"""

from __future__ import annotations

from portwatch.alerts.notification import Notification, Reason, Status
from portwatch.alerts.rules import AlertState, DryRunEntry, dry_run, evaluate, rule_matches
from portwatch.alerts.sinks import Sink, SinkBuildError, SinkContext, SinkError
from portwatch.alerts.engine import Alerting

__all__ = [
    "AlertState",
    "Alerting",
    "DryRunEntry",
    "Notification",
    "Reason",
    "Sink",
    "SinkBuildError",
    "SinkContext",
    "SinkError",
    "Status",
    "dry_run",
    "evaluate",
    "rule_matches",
]
