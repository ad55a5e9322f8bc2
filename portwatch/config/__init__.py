"""Configuration: the YAML file to a typed, frozen :class:`Config`; every error with its key path.

Modules, from the bottom up:

- :mod:`.types`: the dataclasses, :class:`ConfigError`, the pure matchers
  (:func:`ignore_matches`, :func:`finding_matches`); what detect and the
  alert rule engine import;
- :mod:`.grammar`: the small syntaxes (durations, listen addresses, ports,
  IPs, URLs, names) and how values are quoted in errors;
- :mod:`.schema`: the schema machinery; each key is written once, as a
  :class:`~.schema.Key` (its check, docs and preflight); :mod:`.shapes`: the
  core sections (each sink module owns its own section);
- :mod:`.loading`: YAML, reading the file, :func:`load_config`,
  :func:`parse_config` (pure), :func:`config_to_dict`, :func:`schema_keys`;
- :mod:`.preflight`: the filesystem checks, separate from parsing;
- :mod:`.docs`: generates the reference tables of docs/configuration.md
  (``python -m portwatch.config.docs``).

The names of :mod:`.loading` are imported on first use, so importing this
package (or :mod:`.types`) does not import YAML or the sink registry.
May import: everything in this package; nothing imports this package's
``__init__`` names from below it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from portwatch.lazy import lazy_getattr

from portwatch.config.grammar import (
    BCRYPT_HINT,
    DEFAULT_LISTEN_ADDRESS,
    DEFAULT_PORT,
    parse_duration,
    parse_listen_address,
    redact_url,
)
from portwatch.config.types import (
    BUILTIN_SINK,
    DEFAULT_ALERT_RULES,
    DEFAULT_REPEAT_INTERVAL,
    MIN_INTERVAL,
    RESERVED_ALERT_LABELS,
    AlertRule,
    AlertsConfig,
    Config,
    ConfigError,
    IgnoreRule,
    MetricsConfig,
    CaptureConfig,
    Service,
    SinkConfig,
    Thresholds,
    WebConfig,
    finding_matches,
    ignore_matches,
)

if TYPE_CHECKING:
    from portwatch.alerts.sinks.alertmanager import AlertmanagerSinkConfig as AlertmanagerSinkConfig
    from portwatch.alerts.sinks.exec import ExecSinkConfig as ExecSinkConfig
    from portwatch.alerts.sinks.journal import JournalSinkConfig as JournalSinkConfig
    from portwatch.alerts.sinks.webhook import WebhookSinkConfig as WebhookSinkConfig
    from portwatch.config.loading import config_to_dict as config_to_dict
    from portwatch.config.loading import load_config as load_config
    from portwatch.config.loading import load_yaml as load_yaml
    from portwatch.config.loading import parse_config as parse_config
    from portwatch.config.loading import schema_keys as schema_keys

__all__ = [
    "BCRYPT_HINT", "BUILTIN_SINK", "DEFAULT_ALERT_RULES", "DEFAULT_LISTEN_ADDRESS", "DEFAULT_PORT",
    "DEFAULT_REPEAT_INTERVAL", "MIN_INTERVAL", "RESERVED_ALERT_LABELS", "AlertRule",
    "AlertmanagerSinkConfig", "AlertsConfig", "Config", "ConfigError", "ExecSinkConfig", "IgnoreRule",
    "JournalSinkConfig", "MetricsConfig", "CaptureConfig", "Service", "SinkConfig", "Thresholds", "WebConfig",
    "WebhookSinkConfig", "config_to_dict", "finding_matches", "ignore_matches", "load_config", "load_yaml",
    "parse_config", "parse_duration", "parse_listen_address", "redact_url", "schema_keys",
]

#: Names imported on first use: name -> the module that defines it.
_LAZY = {
    "config_to_dict": "portwatch.config.loading",
    "load_config": "portwatch.config.loading",
    "load_yaml": "portwatch.config.loading",
    "parse_config": "portwatch.config.loading",
    "schema_keys": "portwatch.config.loading",
    "JournalSinkConfig": "portwatch.alerts.sinks.journal",
    "WebhookSinkConfig": "portwatch.alerts.sinks.webhook",
    "AlertmanagerSinkConfig": "portwatch.alerts.sinks.alertmanager",
    "ExecSinkConfig": "portwatch.alerts.sinks.exec",
}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
