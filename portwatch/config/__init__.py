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

Every name here is imported on first use (``_LAZY``): importing this package
imports none of its modules, and importing :mod:`.types` neither YAML nor the
sink registry.
May import: everything in this package; nothing imports this package's
``__init__`` names from below it.
"""

from __future__ import annotations

from portwatch.lazy import lazy_getattr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from portwatch.config.grammar import BCRYPT_HINT as BCRYPT_HINT
    from portwatch.config.grammar import DEFAULT_LISTEN_ADDRESS as DEFAULT_LISTEN_ADDRESS
    from portwatch.config.grammar import DEFAULT_PORT as DEFAULT_PORT
    from portwatch.config.grammar import parse_duration as parse_duration
    from portwatch.config.grammar import parse_listen_address as parse_listen_address
    from portwatch.config.grammar import redact_url as redact_url
    from portwatch.config.types import BUILTIN_SINK as BUILTIN_SINK
    from portwatch.config.types import DEFAULT_ALERT_RULES as DEFAULT_ALERT_RULES
    from portwatch.config.types import DEFAULT_REPEAT_INTERVAL as DEFAULT_REPEAT_INTERVAL
    from portwatch.config.types import MIN_INTERVAL as MIN_INTERVAL
    from portwatch.config.types import RESERVED_ALERT_LABELS as RESERVED_ALERT_LABELS
    from portwatch.config.types import AlertRule as AlertRule
    from portwatch.config.types import AlertsConfig as AlertsConfig
    from portwatch.config.types import Config as Config
    from portwatch.config.types import ConfigError as ConfigError
    from portwatch.config.types import IgnoreRule as IgnoreRule
    from portwatch.config.types import MetricsConfig as MetricsConfig
    from portwatch.config.types import CaptureConfig as CaptureConfig
    from portwatch.config.types import Service as Service
    from portwatch.config.types import SinkConfig as SinkConfig
    from portwatch.config.types import Thresholds as Thresholds
    from portwatch.config.types import WebConfig as WebConfig
    from portwatch.config.types import finding_matches as finding_matches
    from portwatch.config.types import ignore_matches as ignore_matches
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

#: Every name of ``__all__`` -> the module that defines it, imported on first use.
_LAZY = {
    'BCRYPT_HINT': 'portwatch.config.grammar',
    'DEFAULT_LISTEN_ADDRESS': 'portwatch.config.grammar',
    'DEFAULT_PORT': 'portwatch.config.grammar',
    'parse_duration': 'portwatch.config.grammar',
    'parse_listen_address': 'portwatch.config.grammar',
    'redact_url': 'portwatch.config.grammar',
    'BUILTIN_SINK': 'portwatch.config.types',
    'DEFAULT_ALERT_RULES': 'portwatch.config.types',
    'DEFAULT_REPEAT_INTERVAL': 'portwatch.config.types',
    'MIN_INTERVAL': 'portwatch.config.types',
    'RESERVED_ALERT_LABELS': 'portwatch.config.types',
    'AlertRule': 'portwatch.config.types',
    'AlertsConfig': 'portwatch.config.types',
    'Config': 'portwatch.config.types',
    'ConfigError': 'portwatch.config.types',
    'IgnoreRule': 'portwatch.config.types',
    'MetricsConfig': 'portwatch.config.types',
    'CaptureConfig': 'portwatch.config.types',
    'Service': 'portwatch.config.types',
    'SinkConfig': 'portwatch.config.types',
    'Thresholds': 'portwatch.config.types',
    'WebConfig': 'portwatch.config.types',
    'finding_matches': 'portwatch.config.types',
    'ignore_matches': 'portwatch.config.types',
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
