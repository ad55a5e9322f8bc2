"""The configuration's data: frozen dataclasses, :class:`ConfigError`, and the pure matchers.

What the rest of portwatch reads: :class:`Config` and its parts, built by
:func:`portwatch.config.parse_config` (``Config()`` is the built-in
default). :func:`ignore_matches` and :func:`finding_matches` decide whether
a rule applies to a finding. A sink's own settings are a subclass of
:class:`SinkConfig` defined by its module in :mod:`portwatch.alerts.sinks`.

May import: the standard library, :mod:`portwatch.model` and
:mod:`portwatch.config.grammar` (pure, no I/O, no YAML): the detectors and the
alert rule engine import this module.
"""

from __future__ import annotations

from portwatch.model.records import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from portwatch.config.grammar import DEFAULT_LISTEN_ADDRESS, DEFAULT_PORT, parse_listen_address
from portwatch.model import Finding, Kind, PortRange, Protocol, Severity

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Collection, Mapping, Sequence

__all__ = [
    "BUILTIN_SINK", "DEFAULT_ALERT_RULES", "DEFAULT_LISTEN_ADDRESS", "DEFAULT_PORT", "DEFAULT_REPEAT_INTERVAL",
    "MIN_INTERVAL", "NAMESPACE_SCOPES", "RESERVED_ALERT_LABELS", "AlertRule", "AlertsConfig", "Config", "ConfigError",
    "IgnoreRule", "MetricsConfig", "NamespacesConfig", "Service", "SinkConfig", "Thresholds", "WebConfig", "finding_matches",
    "ignore_matches", "namespace_selected", "service_applies",
]

#: Shortest scan interval accepted, in seconds.
MIN_INTERVAL = 1.0

#: The socket sources ``source:`` accepts.


@dataclass(frozen=True)
class Service:
    """A declared service: its port must stay free for it (``port_taken``, ``service_port_at_risk``)."""

    name: str
    port: int
    protocol: Protocol = Protocol.TCP
    address: str | None = None  # canonical (model.normalize_ip); None = any address
    # The network namespace it lives in: a netns name, container id, pod uid or
    # pod NAMESPACE/NAME (see service_applies); None = the host namespace.
    namespace: str | None = None
    process: str | None = None  # executable name or path of the service's process; None = unknown
    unit: str | None = None  # systemd unit of the service's process; None = unknown


@dataclass(frozen=True)
class IgnoreRule:
    """Drops findings that match every field given (None = any). At least one field is set.

    In YAML the port field is spelled ``port`` and takes a port (``8080``) or an
    inclusive range string (``"40000-40100"``); see :func:`ignore_matches`.
    """

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
    """The HTTP(S) endpoint serving /metrics.

    ``listen_address`` is ``host:port`` or ``[v6]:port`` (already validated);
    :attr:`host` and :attr:`port` split it. TLS file paths are absolute;
    whether they are readable is checked by :mod:`portwatch.config.preflight`.
    """

    listen_address: str = DEFAULT_LISTEN_ADDRESS
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    basic_auth_users: Mapping[str, str] = field(default_factory=dict)  # user -> bcrypt hash

    @property
    def host(self) -> str:
        """The host part of ``listen_address``, without IPv6 brackets."""
        return parse_listen_address(self.listen_address)[0]

    @property
    def port(self) -> int:
        """The port part of ``listen_address``."""
        return parse_listen_address(self.listen_address)[1]

    @property
    def tls(self) -> bool:
        """True when the endpoint serves HTTPS (a certificate and key are configured)."""
        return self.tls_cert_file is not None and self.tls_key_file is not None


@dataclass(frozen=True)
class MetricsConfig:
    """What /metrics exports."""

    top_destinations: int = 10  # K of the top-K destinations by ephemeral usage ratio


#: What ``namespaces.scan`` accepts: every network namespace on the host, or portwatch's own only.
NAMESPACE_SCOPES: tuple[str, ...] = ("all", "own")


@dataclass(frozen=True)
class NamespacesConfig:
    """Which network namespaces the daemon scans (the ``namespaces`` section).

    ``scan``: ``all`` (every namespace found, each pass) or ``own`` (the
    daemon's own namespace, as before namespaces). ``include``/``exclude``:
    fnmatch patterns matched against every name of a namespace (see
    :func:`namespace_selected`). ``max_series``: at most this many
    namespaces get their own metric series (the host's always does).
    """

    scan: str = "all"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_series: int = 512


def namespace_selected(config: NamespacesConfig, names: Collection[str]) -> bool:
    """True when the namespace known by ``names`` is scanned under ``config``.

    ``names`` are every name of one namespace (name, key, ``ip netns`` name,
    container id, pod uid, pod ``NAMESPACE/NAME``, unit: :func:`portwatch.scan.namespace_names`;
    ``*`` matches ``/`` too, so ``default/*`` is every pod of ``default``). Selected: no
    ``include`` or some include pattern matches one of the names, and no
    ``exclude`` pattern matches any (patterns as :func:`fnmatch.fnmatchcase`).
    Pure; never raises.
    """
    def hit(patterns: Sequence[str]) -> bool:
        return any(fnmatchcase(name, pattern) for pattern in patterns for name in names)

    return (not config.include or hit(config.include)) and not hit(config.exclude)


# --------------------------------------------------------------------------
# Failure capture (the ``capture`` section; the backend is portwatch.collect.capture)

__all__ += ["FAILURE_CAPTURES", "CaptureConfig", "EventsConfig"]

#: The values of ``capture.failures``: off, or the audit subsystem.
FAILURE_CAPTURES: tuple[str, ...] = ("off", "audit")


@dataclass(frozen=True)
class CaptureConfig:
    """Opt-in capture of failed system calls: ``failures`` is ``off`` (default) or ``audit``.

    Off by default because audit rules are host-wide: every process's failed
    connect()/bind() on the host is recorded, not only a namespace's.
    """

    failures: str = "off"


@dataclass(frozen=True)
class EventsConfig:
    """The socket-destroy listeners of the daemon (the ``events`` section).

    ``listen``: listen to every scanned namespace's destroy events between
    passes (transient self-connects and loop pairs). ``quiet_period``:
    seconds without a repeat after which a transient finding resolves.
    """

    listen: bool = True
    quiet_period: float = 300.0


# --------------------------------------------------------------------------
# Alerting (the ``alerts`` section; the engine is portwatch.alerts)

#: How long an alert that keeps firing waits before it is sent again (Alertmanager's default).
DEFAULT_REPEAT_INTERVAL = 4 * 3600.0
#: The sink every configuration has, whether or not ``alerts.sinks`` names it.
BUILTIN_SINK = "journal"
#: Alertmanager labels portwatch sets itself (``instance`` may be overridden).
RESERVED_ALERT_LABELS: frozenset[str] = frozenset({"alertname", "severity", "kind", "port", "key", "rule", "transient"})


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule: which findings it matches, how the alert behaves, where it goes.

    Matching fields (None = any): ``kinds`` (YAML ``kind``: one kind or a
    list), ``min_severity``, ``ports`` (YAML ``port``), ``address``,
    ``process``, ``unit`` (as :class:`IgnoreRule`). ``severity`` replaces the
    finding's severity in the alert. ``for_`` (YAML ``for``) is how long the
    finding must persist before the alert fires; ``repeat_interval`` (0 =
    never) how often a firing alert is sent again; ``continue_`` (YAML
    ``continue``) lets later rules match too. An empty ``sinks`` silences the
    findings it matches (later rules do not see them unless ``continue_``).
    """

    name: str
    sinks: tuple[str, ...]
    kinds: tuple[Kind, ...] | None = None
    min_severity: Severity | None = None
    ports: PortRange | None = None
    address: str | None = None
    process: str | None = None
    unit: str | None = None
    severity: Severity | None = None
    for_: float = 0.0
    repeat_interval: float = DEFAULT_REPEAT_INTERVAL
    send_resolved: bool = True
    continue_: bool = False


#: The built-in rule: every warning or worse finding goes to the journal sink.
DEFAULT_ALERT_RULES: tuple[AlertRule, ...] = (
    AlertRule(name="default", sinks=(BUILTIN_SINK,), min_severity=Severity.WARNING),
)


@dataclass(frozen=True, kw_only=True)
class SinkConfig:
    """What every sink's configuration has: its ``type`` and its delivery queue and retry settings.

    Each sink module (:mod:`portwatch.alerts.sinks`) subclasses this with
    its own keys. ``queue_size`` bounds the notifications waiting; a failed
    attempt waits ``retry_initial_delay``, doubled per failure up to
    ``retry_max_delay`` (seconds).
    """

    type: str = ""
    queue_size: int = 1000
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 300.0


@dataclass(frozen=True)
class AlertsConfig:
    """The ``alerts`` section: named sinks and the ordered rules.

    ``sinks`` holds what the file defines (the built-in ``journal`` sink is
    added by :func:`portwatch.alerts.sinks.all_sinks` unless the file defines
    one of that name). ``rules`` given in the file replace
    :data:`DEFAULT_ALERT_RULES`.
    """

    sinks: Mapping[str, SinkConfig] = field(default_factory=dict)
    rules: tuple[AlertRule, ...] = DEFAULT_ALERT_RULES

    @property
    def sink_names(self) -> frozenset[str]:
        """Every sink a rule may name: the built-in ``journal`` and those of the file."""
        return frozenset({BUILTIN_SINK, *self.sinks})


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
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    namespaces: NamespacesConfig = field(default_factory=NamespacesConfig)
    events: EventsConfig = field(default_factory=EventsConfig)


class ConfigError(Exception):
    """A configuration that cannot be used, with every problem found.

    ``errors`` holds one ``"path: problem"`` string per problem (for problems
    of the file as a whole, such as a YAML syntax error, just the problem);
    ``source`` names the file, or ``"<string>"``. ``str()`` gives one line per
    error, each prefixed with the source.
    """

    def __init__(self, errors: Sequence[str], source: str = "<string>") -> None:
        super().__init__(list(errors), source)
        self.errors: list[str] = list(errors)
        self.source: str = source

    def __str__(self) -> str:
        return "\n".join(f"{self.source}: {error}" for error in self.errors)



# --------------------------------------------------------------------------
# Matching


def ignore_matches(rule: IgnoreRule, finding: Finding) -> bool:
    """True when ``rule`` drops ``finding``: every field set in the rule matches.

    ``kind`` equals the finding's kind; the finding's ``port`` is inside
    ``ports`` (a finding without a port never matches a rule with ports);
    ``address`` is one of the finding's addresses; ``process`` equals the name
    of one of the finding's processes; ``unit`` equals the systemd unit of
    one of them. Fields left ``None`` match anything. Pure; never raises.
    """
    if rule.kind is not None and finding.kind is not rule.kind:
        return False
    return finding_matches(finding, rule.ports, rule.address, rule.process, rule.unit)


def finding_matches(finding: Finding, ports: PortRange | None, address: str | None,
                    process: str | None, unit: str | None) -> bool:
    """The matching ignore rules and alert rules share; ``None`` matches anything.

    ``ports``: the finding's port is in the range (a finding without a port
    never matches); ``address``: one of the finding's addresses; ``process``
    and ``unit``: the name or systemd unit of one of its processes. Pure.
    """
    if ports is not None and (finding.port is None or finding.port not in ports):
        return False
    if address is not None and address not in finding.addresses:
        return False
    if process is not None and not any(p.name == process for p in finding.processes):
        return False
    if unit is not None and not any(p.unit == unit for p in finding.processes):
        return False
    return True


def service_applies(service: Service, names: Collection[str], host: bool) -> bool:
    """True when ``service`` lives in the network namespace known by ``names``.

    ``names`` are every name of one namespace (its ``ip netns`` name, stable
    key, container id, pod uid, pod ``NAMESPACE/NAME``, unit); ``host`` says
    it is the host namespace (or portwatch's own, in a scan of that one
    only). A service without ``namespace`` applies to the host namespace
    only; one with ``namespace`` to the namespace having that name (a
    container id may be given by a prefix of 12 characters or more; a pod's
    ``NAMESPACE/NAME``, with its ``/``, only whole). Pure; never raises.
    """
    if service.namespace is None:
        return host
    wanted = service.namespace
    prefix = len(wanted) >= 12 and "/" not in wanted
    return any(wanted == name or (prefix and name.startswith(wanted)) for name in names)
