"""Configuration: YAML to typed config, every error reported with its key path.

SKELETON: the dataclasses below are the contract other modules import. The
loader/validator (``load_config``, ``parse_config``, ``ConfigError``) is being
written; keep the names and fields, add to them as needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from portwatch.model import Kind, PortRange, Protocol, Severity

#: The metrics endpoint's default port: below 32768 (outside the default
#: ephemeral range, so an outgoing connection can never take it), above 1024
#: (no privilege needed) and not a well-known service port.
DEFAULT_PORT = 9731
DEFAULT_LISTEN_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"


@dataclass(frozen=True)
class Service:
    """A declared service: its port must stay free for it (``port_taken``, ``service_port_at_risk``)."""

    name: str
    port: int
    protocol: Protocol = Protocol.TCP
    address: str | None = None  # canonical (model.normalize_ip); None = any address


@dataclass(frozen=True)
class IgnoreRule:
    """Drops findings that match every field given (None = any). At least one field is set."""

    kind: Kind | None = None
    ports: PortRange | None = None
    address: str | None = None
    process: str | None = None
    unit: str | None = None


@dataclass(frozen=True)
class Thresholds:
    """Detector thresholds."""

    exhaustion_warning: float = 0.8  # ratio of usable range, 0 < w <= c <= 1
    exhaustion_critical: float = 0.95
    close_wait: int = 100  # a process holding more CLOSE_WAIT sockets than this is flagged
    min_range_size: int = 1000  # a usable range smaller than this is range_misconfigured


@dataclass(frozen=True)
class WebConfig:
    """The HTTP(S) endpoint serving /metrics."""

    listen_address: str = DEFAULT_LISTEN_ADDRESS
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    basic_auth_users: Mapping[str, str] = field(default_factory=dict)  # user -> bcrypt hash


@dataclass(frozen=True)
class MetricsConfig:
    """What /metrics exports."""

    top_destinations: int = 10  # K of the top-K destinations by ephemeral usage ratio


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``Config()`` is the built-in default."""

    interval: float = 15.0  # seconds between scans
    source: str = "auto"  # auto | netlink | psutil
    state_directory: Path = Path("/var/lib/portwatch")
    services: tuple[Service, ...] = ()
    ignore: tuple[IgnoreRule, ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)
    severities: Mapping[Kind, Severity] = field(default_factory=dict)  # per-kind overrides
    web: WebConfig = field(default_factory=WebConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
