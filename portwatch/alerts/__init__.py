"""Config-driven alerting: rules, sinks, delivery that loses nothing (docs/alerting.md).

The daemon uses :class:`Alerting`; ``portwatch scan --alerts-dry-run`` uses
:func:`dry_run`. Modules: :mod:`.rules` (the pure rule engine: imports portwatch.config.types, never the YAML loader),
:mod:`.notification` (what sinks get), :mod:`.sinks` (one module per sink
type, same interface), :mod:`.delivery` (queues, workers, retries, metrics),
:mod:`.store` (state across restarts), :mod:`.engine` (all of it together).

:class:`Alerting` is imported on first use (it brings in the Prometheus
client and the delivery threads), so that the config loader, which imports
the sink registry for the sinks' shapes, stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from portwatch.alerts.notification import Notification, Reason, Status
from portwatch.alerts.rules import AlertState, DryRunEntry, dry_run, evaluate, rule_matches
from portwatch.alerts.sinks import Sink, SinkBuildError, SinkContext, SinkError

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    """``Alerting``, imported from :mod:`portwatch.alerts.engine` on first use."""
    if name == "Alerting":
        from portwatch.alerts.engine import Alerting

        return Alerting
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
