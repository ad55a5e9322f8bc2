"""Config-driven alerting: rules, sinks, delivery that loses nothing (docs/alerting.md).

The daemon uses :class:`Alerting`; ``portwatch scan --alerts-dry-run`` uses
:func:`dry_run`. Modules: :mod:`.rules` (the pure rule engine: imports
portwatch.config.types, never the YAML loader), :mod:`.notification` (what
sinks get), :mod:`.sinks` (the registry; one module per sink type, each
owning its config shape and ``build``), :mod:`.http` (HTTP POST for the HTTP
sinks), :mod:`.delivery` (queues, workers, retries, metrics), :mod:`.store`
(state across restarts), :mod:`.engine` (all of it together).

The names below are imported from their module on first use, so importing
the pure rule engine (``portwatch.alerts.rules``) runs no I/O module and the
config loader, which imports the sink registry, does not bring in the
Prometheus client and the delivery threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from portwatch.lazy import lazy_getattr

if TYPE_CHECKING:
    from portwatch.alerts.engine import Alerting as Alerting
    from portwatch.alerts.notification import Notification as Notification
    from portwatch.alerts.notification import Reason as Reason
    from portwatch.alerts.notification import Status as Status
    from portwatch.alerts.rules import AlertState as AlertState
    from portwatch.alerts.rules import DryRunEntry as DryRunEntry
    from portwatch.alerts.rules import dry_run as dry_run
    from portwatch.alerts.rules import evaluate as evaluate
    from portwatch.alerts.rules import rule_matches as rule_matches
    from portwatch.alerts.sinks import Sink as Sink
    from portwatch.alerts.sinks import SinkBuildError as SinkBuildError
    from portwatch.alerts.sinks import SinkContext as SinkContext
    from portwatch.alerts.sinks import SinkError as SinkError

#: Each public name -> the module that defines it.
_NAMES = {
    "AlertState": "portwatch.alerts.rules",
    "Alerting": "portwatch.alerts.engine",
    "DryRunEntry": "portwatch.alerts.rules",
    "Notification": "portwatch.alerts.notification",
    "Reason": "portwatch.alerts.notification",
    "Sink": "portwatch.alerts.sinks",
    "SinkBuildError": "portwatch.alerts.sinks",
    "SinkContext": "portwatch.alerts.sinks",
    "SinkError": "portwatch.alerts.sinks",
    "Status": "portwatch.alerts.notification",
    "dry_run": "portwatch.alerts.rules",
    "evaluate": "portwatch.alerts.rules",
    "rule_matches": "portwatch.alerts.rules",
}

__all__ = [
    "AlertState", "Alerting", "DryRunEntry", "Notification", "Reason", "Sink", "SinkBuildError", "SinkContext",
    "SinkError", "Status", "dry_run", "evaluate", "rule_matches",
]

__getattr__ = lazy_getattr(__name__, _NAMES, globals())
