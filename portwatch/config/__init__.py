"""Configuration: YAML to typed config, every error reported with its key path.

The public interface:

- :func:`load_config` reads a YAML file (or returns the built-in defaults);
- :func:`parse_config` validates already-parsed YAML data;
- :class:`ConfigError` carries *every* problem found, each as ``"path: problem"``
  (``services[2].port: must be 1..65535, got 70000``);
- :func:`config_to_dict` turns a :class:`Config` back into plain data that
  :func:`parse_config` accepts (``--dump-config``);
- :func:`ignore_matches` tells whether an ignore rule drops a finding;
- :func:`parse_duration` and :func:`parse_listen_address` parse the two small
  string syntaxes the file uses; :func:`schema_keys` lists every key accepted.

Validation is declarative: the file's shape is a tree of schema nodes
(:class:`_Section` for a mapping with fixed keys that builds a dataclass,
:class:`_ListOf`, :class:`_MapOf`, :class:`_Scalar` for a leaf with one check
function). To add a section (``alerts:`` is next): write its dataclass, add a
field to :class:`Config`, describe its keys with a ``_Section`` and add one
``_Key`` to ``_CONFIG``; then document every key in docs/configuration.md (a
test walks the schema and fails on an undocumented key).

Conventions the schema applies everywhere:

- an unknown key is an error, with a did-you-mean suggestion;
- a key set to ``null`` (or left empty) means the same as leaving it out;
- bools are not numbers; floats are not integers; numbers are not strings.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import yaml

from portwatch.model import Finding, Kind, PortRange, Protocol, Severity, normalize_ip

#: The metrics endpoint's default port: below 32768 (outside the default
#: ephemeral range, so an outgoing connection can never take it), above 1024
#: (no privilege needed) and not a well-known service port.
DEFAULT_PORT = 9731
DEFAULT_LISTEN_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"

#: Shortest scan interval accepted, in seconds.
MIN_INTERVAL = 1.0

#: The socket sources ``source:`` accepts.
SOURCES: tuple[str, ...] = ("auto", "netlink", "psutil")

#: How to make a bcrypt hash, quoted in the error for a plain-text password.
BCRYPT_HINT = (
    "python3 -c 'import bcrypt; print(bcrypt.hashpw(b\"secret\", bcrypt.gensalt()).decode())'"
)


@dataclass(frozen=True)
class Service:
    """A declared service: its port must stay free for it (``port_taken``, ``service_port_at_risk``)."""

    name: str
    port: int
    protocol: Protocol = Protocol.TCP
    address: str | None = None  # canonical (model.normalize_ip); None = any address


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
    :attr:`host` and :attr:`port` split it. TLS file paths are absolute and
    were readable when the configuration was loaded.
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


# --------------------------------------------------------------------------
# Alerting (the ``alerts`` section; the engine is portwatch.alerts)

#: How long an alert that keeps firing waits before it is sent again (Alertmanager's default).
DEFAULT_REPEAT_INTERVAL = 4 * 3600.0
#: The sink every configuration has, whether or not ``alerts.sinks`` names it.
BUILTIN_SINK = "journal"
#: The sink types ``alerts.sinks.NAME.type`` accepts.
SINK_TYPES: tuple[str, ...] = ("journal", "webhook", "alertmanager", "exec")
#: Alertmanager labels portwatch sets itself (``instance`` may be overridden).
RESERVED_ALERT_LABELS: frozenset[str] = frozenset({"alertname", "severity", "kind", "port", "key", "rule"})


@dataclass(frozen=True)
class JournalSinkConfig:
    """The ``journal`` sink: one structured journal entry per notification (the log without a journal)."""

    type: str = "journal"
    syslog_identifier: str = "portwatch"
    queue_size: int = 1000
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 300.0


@dataclass(frozen=True)
class WebhookSinkConfig:
    """The ``webhook`` sink: a JSON document POSTed to ``url`` per notification.

    ``headers`` are sent as given (their values are never logged);
    ``bearer_token_file`` (absolute, readable when loaded) is read when the
    sink is built and sent as ``Authorization: Bearer ...``.
    """

    url: str
    type: str = "webhook"
    timeout: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)
    bearer_token_file: Path | None = None
    tls_verify: bool = True
    tls_ca_file: Path | None = None
    queue_size: int = 1000
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 300.0


@dataclass(frozen=True)
class AlertmanagerSinkConfig:
    """The ``alertmanager`` sink: alerts POSTed to ``/api/v2/alerts`` of every URL (an HA set).

    ``urls`` are base URLs (``http://am1:9093``, or with a path prefix);
    ``resend_interval`` is how often a firing alert is posted again (its
    ``endsAt`` is four intervals ahead); ``labels`` are added to every alert.
    """

    urls: tuple[str, ...]
    type: str = "alertmanager"
    timeout: float = 10.0
    resend_interval: float = 60.0
    labels: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    bearer_token_file: Path | None = None
    tls_verify: bool = True
    tls_ca_file: Path | None = None
    queue_size: int = 1000
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 300.0


@dataclass(frozen=True)
class ExecSinkConfig:
    """The ``exec`` sink: ``command`` (argv, no shell, absolute program path) run per notification.

    The notification's JSON document is its stdin; it must exit 0 within ``timeout``.
    """

    command: tuple[str, ...]
    type: str = "exec"
    timeout: float = 10.0
    queue_size: int = 1000
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 300.0


SinkConfig = JournalSinkConfig | WebhookSinkConfig | AlertmanagerSinkConfig | ExecSinkConfig


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


@dataclass(frozen=True)
class AlertsConfig:
    """The ``alerts`` section: named sinks and the ordered rules.

    ``sinks`` holds what the file defines; :attr:`all_sinks` adds the built-in
    ``journal`` sink unless the file defines one of that name. ``rules``
    given in the file replace :data:`DEFAULT_ALERT_RULES`.
    """

    sinks: Mapping[str, SinkConfig] = field(default_factory=dict)
    rules: tuple[AlertRule, ...] = DEFAULT_ALERT_RULES

    @property
    def all_sinks(self) -> dict[str, SinkConfig]:
        """Every sink a rule may name: the built-in ``journal`` and those of the file."""
        out: dict[str, SinkConfig] = {BUILTIN_SINK: JournalSinkConfig()}
        out.update(self.sinks)
        return out


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
    alerts: AlertsConfig = field(default_factory=AlertsConfig)


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
# Public helpers: the small string syntaxes, matching


_DURATION_UNITS: tuple[tuple[str, float], ...] = (
    ("y", 365 * 86400.0),
    ("w", 7 * 86400.0),
    ("d", 86400.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
)
_DURATION_RE = re.compile("".join(rf"(?:(\d+){unit})?" for unit, _ in _DURATION_UNITS))


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus-style duration: ``"15s"``, ``"1m30s"``, ``"500ms"``, ``"1h"``.

    Takes units ``y w d h m s ms``, each an integer, largest first, each at
    most once. Returns the total in seconds (a float). Raises ``ValueError``
    for anything else, including the empty string and a bare number.
    """
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not a duration such as '15s', '1m30s' or '500ms': {text!r}")
    return sum(
        int(count) * factor
        for count, (_, factor) in zip(match.groups(), _DURATION_UNITS)
        if count is not None
    )


_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def parse_listen_address(text: str, *, any_port: bool = False) -> tuple[str, int]:
    """Split ``"host:port"``, ``"[v6]:port"`` or ``":port"`` into ``(host, port)``.

    The host must be an IPv4 address, a hostname, (in brackets) an IPv6
    address, or empty: every address of both families, as in Go exporters'
    ``:9100``. The port is 1..65535, or 0..65535 with ``any_port`` (0: any
    free port, for tests). Returns the host without brackets (``""`` for
    every address) and the port as an int. Raises ``ValueError`` saying what
    is wrong. The one parser of listen addresses: ``web`` and
    ``--listen-address`` use it too.
    """
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]*)\]:([0-9]*)", text)
        if m is None:
            raise ValueError(f"must be 'host:port' or '[ipv6]:port', got {text!r}")
        host, port_text = m.group(1), m.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"must be 'host:port' or '[ipv6]:port', got {text!r}")
        if ":" in host:
            raise ValueError(
                f"an IPv6 address must be in brackets, as in '[::1]:{DEFAULT_PORT}', got {text!r}"
            )
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
        elif host and _HOSTNAME_RE.fullmatch(host) is None:
            raise ValueError(f"{host!r} is not an IP address or a hostname")
    low = 0 if any_port else 1
    if not (port_text.isascii() and port_text.isdigit()) or not low <= int(port_text) <= 65535:
        raise ValueError(f"the port must be {low}..65535, got {port_text!r} in {text!r}")
    return host, int(port_text)


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


# --------------------------------------------------------------------------
# The schema layer


class _Bad:
    """Marker for a value that failed validation (its errors are already recorded)."""


_BAD = _Bad()
_IDENT_RE = re.compile(r"[A-Za-z0-9_-]+")


def _join(path: str, key: object) -> str:
    """``path`` extended by a mapping key (``a.b``) or a list index given as ``"[3]"``."""
    if isinstance(key, str) and key.startswith("["):
        return path + key
    if not (isinstance(key, str) and _IDENT_RE.fullmatch(key)):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


def _at(path: str, message: str) -> str:
    """One error line: ``"path: message"``, or the message alone at the top level."""
    return f"{path}: {message}" if path else message


def _show(value: object) -> str:
    """A value as an error message quotes it: YAML spelling for scalars, the type for containers."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _suggest(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Node:
    """A schema node: validates one YAML value and builds the Python value for it."""

    def parse(self, value: object, path: str, errors: list[str]) -> object:
        """The built value, or ``_BAD`` after appending ``"path: problem"`` lines to ``errors``."""
        raise NotImplementedError

    def dump(self, value: Any) -> object:
        """Plain YAML/JSON data that :meth:`parse` turns back into ``value``."""
        raise NotImplementedError

    def keys(self, path: str) -> Iterator[str]:
        """Every key path accepted below ``path`` (lists as ``name[]``)."""
        return iter(())


class _Scalar(_Node):
    """A leaf: ``check`` turns the YAML value into the Python value or raises ``ValueError``.

    The ``ValueError``'s message is the problem, without the path.
    """

    def __init__(
        self, check: Callable[[object], object], dump: Callable[[Any], object] = lambda v: v
    ) -> None:
        self._check = check
        self._dump = dump

    def parse(self, value: object, path: str, errors: list[str]) -> object:
        try:
            return self._check(value)
        except ValueError as exc:
            errors.append(_at(path, str(exc)))
            return _BAD

    def dump(self, value: Any) -> object:
        return self._dump(value)


#: A cross-field check of a section: takes the built object (None when some
#: key failed its own check) and the keys given (non-null, known or not);
#: yields (relative key or "", problem).
_SectionCheck = Callable[[Any, frozenset[object]], Iterable[tuple[str, str]]]

#: A check over a list: takes (index, built item) for the valid items; yields
#: (relative path such as "[3]", problem).
_ListCheck = Callable[[Sequence[tuple[int, Any]]], Iterable[tuple[str, str]]]


@dataclass(frozen=True)
class _Key:
    """One key of a section: its YAML name, its node, the dataclass field (if named otherwise)."""

    name: str
    node: _Node
    attr: str | None = None
    required: bool = False

    @property
    def field_name(self) -> str:
        """The dataclass field this key fills."""
        return self.attr or self.name


class _Section(_Node):
    """A mapping with a fixed set of keys, built into a dataclass by keyword.

    Keys left out (or null) take the dataclass default. ``checks`` report
    cross-field problems; they get the built object, or None when some key
    failed its own check (so checks on key presence alone still run).
    """

    def __init__(
        self,
        build: Callable[..., object],
        keys: Sequence[_Key],
        checks: Sequence[_SectionCheck] = (),
    ) -> None:
        self._build = build
        self._keys = tuple(keys)
        self._checks = tuple(checks)

    def parse(self, value: object, path: str, errors: list[str]) -> object:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            where = "the top level" if not path else "this section"
            errors.append(_at(path, f"{where} must be a mapping of keys, got {_show(value)}"))
            return _BAD
        before = len(errors)
        names = [k.name for k in self._keys]
        for key in value:
            if key not in names:
                errors.append(_at(path, f"unknown key {_show(key)}{_suggest(key, names)}"))
        kwargs: dict[str, object] = {}
        fields_ok = True
        for k in self._keys:
            raw = value.get(k.name)
            if raw is None:
                if k.required:
                    errors.append(_at(path, f"missing required key {k.name!r}"))
                    fields_ok = False
                continue
            parsed = k.node.parse(raw, _join(path, k.name), errors)
            if parsed is _BAD:
                fields_ok = False
            else:
                kwargs[k.field_name] = parsed
        built = self._build(**kwargs) if fields_ok else None
        given = frozenset(key for key, v in value.items() if v is not None)
        for check in self._checks:
            for key, problem in check(built, given):
                errors.append(_at(_join(path, key) if key else path, problem))
        return _BAD if len(errors) > before or built is None else built

    def dump(self, value: Any) -> dict[str, object]:
        out: dict[str, object] = {}
        for k in self._keys:
            v = getattr(value, k.field_name)
            if v is not None:
                out[k.name] = k.node.dump(v)
        return out

    def keys(self, path: str) -> Iterator[str]:
        for k in self._keys:
            sub = _join(path, k.name)
            yield sub
            yield from k.node.keys(sub)


class _ListOf(_Node):
    """A list of items of one node, built into a tuple; ``checks`` look across items."""

    def __init__(self, item: _Node, checks: Sequence[_ListCheck] = ()) -> None:
        self._item = item
        self._checks = tuple(checks)

    def parse(self, value: object, path: str, errors: list[str]) -> object:
        if value is None:
            return ()
        if not isinstance(value, list):
            errors.append(_at(path, f"must be a list, got {_show(value)}"))
            return _BAD
        before = len(errors)
        good: list[tuple[int, object]] = []
        for i, raw in enumerate(value):
            parsed = self._item.parse(raw, f"{path}[{i}]", errors)
            if parsed is not _BAD:
                good.append((i, parsed))
        for check in self._checks:
            for sub, problem in check(good):
                errors.append(_at(path + sub, problem))
        return _BAD if len(errors) > before else tuple(item for _, item in good)

    def dump(self, value: Any) -> list[object]:
        return [self._item.dump(v) for v in value]

    def keys(self, path: str) -> Iterator[str]:
        return self._item.keys(path + "[]")


class _MapOf(_Node):
    """A mapping with free keys (checked by ``key``, which raises ``ValueError``) and values of one node.

    ``documented_keys`` are the keys that :meth:`keys` lists when the set of
    keys is closed (e.g. every finding kind); a null value is an error here.
    """

    def __init__(
        self,
        key: Callable[[object], object],
        value: _Node,
        dump_key: Callable[[Any], str] = str,
        documented_keys: Sequence[str] = (),
    ) -> None:
        self._key = key
        self._value = value
        self._dump_key = dump_key
        self._documented = tuple(documented_keys)

    def parse(self, value: object, path: str, errors: list[str]) -> object:
        if value is None:
            return {}
        if not isinstance(value, dict):
            errors.append(_at(path, f"must be a mapping, got {_show(value)}"))
            return _BAD
        before = len(errors)
        out: dict[object, object] = {}
        for raw_key, raw_value in value.items():
            try:
                key = self._key(raw_key)
            except ValueError as exc:
                errors.append(_at(path, str(exc)))
                continue
            parsed = self._value.parse(raw_value, _join(path, raw_key), errors)
            if parsed is not _BAD:
                out[key] = parsed
        return _BAD if len(errors) > before else out

    def dump(self, value: Any) -> dict[str, object]:
        return {self._dump_key(k): self._value.dump(v) for k, v in value.items()}

    def keys(self, path: str) -> Iterator[str]:
        for key in self._documented:
            sub = _join(path, key)
            yield sub
            yield from self._value.keys(sub)


# --------------------------------------------------------------------------
# Leaf checks (each raises ValueError with the problem, without the path)


def _integer(low: int, high: int | None = None) -> _Scalar:
    """An int in ``low..high`` (``high`` None = no upper bound); bools and floats are refused."""

    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {_show(value)}")
        if high is None and value < low:
            raise ValueError(f"must be >= {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise ValueError(f"must be {low}..{high}, got {value}")
        return value

    return _Scalar(check)


def _ratio() -> _Scalar:
    """A number ``0 < x <= 1`` (ints accepted), stored as float."""

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {_show(value)}")
        if not 0 < value <= 1:
            raise ValueError(f"must be > 0 and <= 1, got {_show(value)}")
        return float(value)

    return _Scalar(check)


def _duration(minimum: float) -> _Scalar:
    """Seconds as a number or a :func:`parse_duration` string, at least ``minimum``; stored as float."""

    def check(value: object) -> float:
        if isinstance(value, str):
            try:
                seconds = parse_duration(value)
            except ValueError:
                seconds = math.nan
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            seconds = math.nan
        if not math.isfinite(seconds):
            raise ValueError(
                "must be a number of seconds or a duration such as '15s', '1m30s' or '500ms',"
                f" got {_show(value)}"
            )
        if seconds < minimum:
            raise ValueError(f"must be at least {minimum:g}s, got {_show(value)}")
        return seconds

    return _Scalar(check)


def _string() -> _Scalar:
    """A non-empty string."""

    def check(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {_show(value)}")
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    return _Scalar(check)


def _choice(choices: Sequence[str], what: str = "") -> Callable[[object], str]:
    """A check for one of ``choices`` (a string), with a did-you-mean suggestion."""

    def check(value: object) -> str:
        if isinstance(value, str) and value in choices:
            return value
        listed = ", ".join(choices)
        hint = _suggest(value, choices)
        if what:
            raise ValueError(f"unknown {what} {_show(value)}{hint}; must be one of {listed}")
        raise ValueError(f"must be one of {listed}, got {_show(value)}{hint}")

    return check


def _enum(enum_type: type[Kind] | type[Severity] | type[Protocol]) -> _Scalar:
    """One of an enum's values, built into the enum member."""
    check = _choice([m.value for m in enum_type])
    return _Scalar(lambda v: enum_type(check(v)), lambda m: m.value)


def _ip() -> _Scalar:
    """An IPv4 or IPv6 address, stored canonical (:func:`portwatch.model.normalize_ip`)."""

    def check(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be an IP address, got {_show(value)}")
        try:
            return normalize_ip(value)
        except ValueError:
            raise ValueError(f"must be an IP address, got {_show(value)}") from None

    return _Scalar(check)


def _port_range() -> _Scalar:
    """A port (int, or digits in a string) or an inclusive range ``"low-high"``, as a PortRange."""

    def check(value: object) -> PortRange:
        problem = f"must be a port 1..65535 or a range such as '40000-40100', got {_show(value)}"
        if isinstance(value, int) and not isinstance(value, bool):
            low = high = value
        elif isinstance(value, str) and (m := re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", value)):
            low = int(m.group(1))
            high = int(m.group(2)) if m.group(2) is not None else low
        else:
            raise ValueError(problem)
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            raise ValueError(problem)
        if low > high:
            raise ValueError(f"the range's low end is above its high end, got {_show(value)}")
        return PortRange(low, high)

    def dump(ports: PortRange) -> object:
        return ports.low if ports.low == ports.high else f"{ports.low}-{ports.high}"

    return _Scalar(check, dump)


def _absolute_path() -> _Scalar:
    """An absolute path (a string starting with ``/``), stored as a Path."""

    def check(value: object) -> Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be an absolute path, got {_show(value)}")
        if not value.startswith("/"):
            raise ValueError(f"must be an absolute path (starting with /), got {_show(value)}")
        return Path(value)

    return _Scalar(check, str)


def _probe_readable(path: Path) -> None:
    """Open ``path`` for reading and close it; raises ``OSError`` as the open would.

    Non-blocking, so a FIFO cannot hang the check; refuses non-regular files
    with ``IsADirectoryError`` (directories) or ``OSError`` (others).
    """
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise OSError(0, "not a regular file")
    os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))


def _readable_file() -> _Scalar:
    """An absolute path to a regular file this process can read now."""
    absolute = _absolute_path()

    def check(value: object) -> Path:
        path = absolute._check(value)
        assert isinstance(path, Path)
        try:
            _probe_readable(path)
        except FileNotFoundError:
            raise ValueError(f"cannot read {str(path)!r}: no such file") from None
        except PermissionError:
            raise ValueError(f"cannot read {str(path)!r}: permission denied") from None
        except OSError as exc:
            raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        return path

    return _Scalar(check, str)


def _listen_address() -> _Scalar:
    """A :func:`parse_listen_address` string, kept as written."""

    def check(value: object) -> str:
        if not isinstance(value, str):
            hint = ""
            if isinstance(value, list):
                hint = f" (quote a value that starts with '[', as in \"[::1]:{DEFAULT_PORT}\")"
            raise ValueError(f"must be a string 'host:port', got {_show(value)}{hint}")
        parse_listen_address(value)
        return value

    return _Scalar(check)


_BCRYPT_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def _bcrypt_hash() -> _Scalar:
    """A bcrypt hash (``$2a$``/``$2b$``/``$2y$``, 60 characters). Never quotes the value."""

    def check(value: object) -> str:
        if not isinstance(value, str) or _BCRYPT_RE.fullmatch(value) is None:
            raise ValueError(
                "must be a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters), not a plain-text"
                f" password; make one with: {BCRYPT_HINT}"
            )
        return value

    return _Scalar(check)


def _user_name(value: object) -> str:
    """A basic-auth user name: a non-empty string without ':'."""
    if not isinstance(value, str) or not value or ":" in value:
        raise ValueError(f"user names must be non-empty strings without ':', got {_show(value)}")
    return value


def _kind_key(value: object) -> Kind:
    """A finding kind used as a mapping key."""
    return Kind(_choice([k.value for k in Kind], what="kind")(value))


def _boolean() -> _Scalar:
    """``true`` or ``false`` (not 0/1, not strings)."""

    def check(value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {_show(value)}")
        return value

    return _Scalar(check)


def _name(what: str) -> Callable[[object], str]:
    """A check for a rule or sink name: letters, digits, ``_`` and ``-``."""

    def check(value: object) -> str:
        if not isinstance(value, str) or _IDENT_RE.fullmatch(value) is None:
            raise ValueError(f"{what} names are letters, digits, '_' and '-', got {_show(value)}")
        return value

    return check


def _kinds() -> _Scalar:
    """One finding kind, or a non-empty list of them, as a tuple of Kind (dumped back the same way)."""
    one = _choice([k.value for k in Kind], what="kind")

    def check(value: object) -> tuple[Kind, ...]:
        if isinstance(value, list):
            if not value:
                raise ValueError("must be a kind or a non-empty list of kinds")
            kinds = tuple(Kind(one(v)) for v in value)
            if len(set(kinds)) != len(kinds):
                raise ValueError("lists a kind twice")
            return kinds
        return (Kind(one(value)),)

    def dump(kinds: tuple[Kind, ...]) -> object:
        return kinds[0].value if len(kinds) == 1 else [k.value for k in kinds]

    return _Scalar(check, dump)


def redact_url(url: str) -> str:
    """``url`` without credentials, for messages: ``https://***@host/path`` for ``https://user:pw@host/path``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{tail}"


def _url() -> _Scalar:
    """An ``http://`` or ``https://`` URL with a host (credentials in it are never quoted back)."""

    def check(value: object) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be an http:// or https:// URL, got {_show(value)}")
        shown = repr(redact_url(value))
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc}): {shown}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"must be an http:// or https:// URL, got {shown}")
        if not parts.hostname:
            raise ValueError(f"has no host: {shown}")
        if port == 0:
            raise ValueError(f"the port must be 1..65535: {shown}")
        if parts.fragment or any(c.isspace() for c in value):
            raise ValueError(f"must not contain spaces or a #fragment: {shown}")
        return value

    return _Scalar(check)


_HEADER_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Headers portwatch sets itself on every request.
_OWN_HEADERS = frozenset({"content-type", "content-length", "host", "user-agent"})


def _header_name(value: object) -> str:
    """An HTTP header name that portwatch does not set itself."""
    if not isinstance(value, str) or _HEADER_RE.fullmatch(value) is None:
        raise ValueError(f"header names are HTTP tokens (letters, digits, '-', ...), got {_show(value)}")
    if value.lower() in _OWN_HEADERS:
        raise ValueError(f"header {value!r} is set by portwatch and cannot be configured")
    return value


def _header_value() -> _Scalar:
    """A header value: a string without line breaks. Never quoted in errors (it may be a secret)."""

    def check(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError("must be a string (the value is not shown: it may be a secret)")
        if "\r" in value or "\n" in value or "\0" in value:
            raise ValueError("must not contain line breaks or NUL (the value is not shown)")
        return value

    return _Scalar(check)


_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _label_name(value: object) -> str:
    """An Alertmanager label name that portwatch does not set itself."""
    if not isinstance(value, str) or _LABEL_RE.fullmatch(value) is None or value.startswith("__"):
        raise ValueError(f"label names match [a-zA-Z_][a-zA-Z0-9_]* and do not start with '__',"
                         f" got {_show(value)}")
    if value in RESERVED_ALERT_LABELS:
        raise ValueError(f"label {value!r} is set by portwatch (reserved:"
                         f" {', '.join(sorted(RESERVED_ALERT_LABELS))})")
    return value


def _absolute_program() -> _Scalar:
    """A command line (list of strings) whose first item is an absolute path to an executable file."""

    def check(value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise ValueError(f"must be a non-empty list of strings (program and arguments; no shell),"
                             f" got {_show(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or (i == 0 and not item):
                raise ValueError(f"item {i} must be a string, got {_show(item)}")
            if "\0" in item:
                raise ValueError(f"item {i} contains a NUL character")
        program = value[0]
        if not program.startswith("/"):
            raise ValueError(f"the program must be an absolute path (no shell, no PATH lookup),"
                             f" got {program!r}")
        if not os.path.isfile(program):
            raise ValueError(f"cannot execute {program!r}: no such file")
        if not os.access(program, os.X_OK):
            raise ValueError(f"cannot execute {program!r}: not executable by this user")
        return tuple(value)

    return _Scalar(check, list)


# --------------------------------------------------------------------------
# Cross-field checks


def _check_service_duplicates(items: Sequence[tuple[int, Any]]) -> Iterator[tuple[str, str]]:
    """Two services with the same (port, protocol, address) are an error naming both indexes."""
    first: dict[tuple[int, Protocol, str | None], int] = {}
    for index, service in items:
        key = (service.port, service.protocol, service.address)
        if key in first:
            where = service.address if service.address is not None else "any address"
            yield (
                f"[{index}]",
                f"same port, protocol and address as services[{first[key]}]"
                f" ({service.port}/{service.protocol.value}, {where})",
            )
        else:
            first[key] = index


def _check_rule_not_empty(
    rule: IgnoreRule | None, given: frozenset[object]
) -> Iterator[tuple[str, str]]:
    """A rule with no keys at all would drop every finding."""
    if not given:
        yield "", "empty rule would ignore every finding"


def _check_thresholds(t: Thresholds | None, given: frozenset[object]) -> Iterator[tuple[str, str]]:
    """The critical ratio must not be below the warning ratio."""
    if t is not None and t.exhaustion_critical < t.exhaustion_warning:
        default = "" if "exhaustion_warning" in given else ", the default"
        yield (
            "exhaustion_critical",
            f"must be >= exhaustion_warning ({t.exhaustion_warning:g}{default}),"
            f" got {t.exhaustion_critical:g}",
        )


def _check_tls(web: WebConfig | None, given: frozenset[object]) -> Iterator[tuple[str, str]]:
    """Certificate and key come together; a client CA needs both (judged on the keys given)."""
    cert, key = "tls_cert_file" in given, "tls_key_file" in given
    if cert and not key:
        yield "tls_key_file", "required when tls_cert_file is set"
    if key and not cert:
        yield "tls_cert_file", "required when tls_key_file is set"
    if "tls_client_ca_file" in given and not (cert and key):
        yield (
            "tls_client_ca_file",
            "needs tls_cert_file and tls_key_file (client certificates are only checked over TLS)",
        )


# --------------------------------------------------------------------------
# The schema


_SERVICE = _Section(
    Service,
    [
        _Key("name", _string(), required=True),
        _Key("port", _integer(1, 65535), required=True),
        _Key("protocol", _enum(Protocol)),
        _Key("address", _ip()),
    ],
)

_IGNORE_RULE = _Section(
    IgnoreRule,
    [
        _Key("kind", _enum(Kind)),
        _Key("port", _port_range(), attr="ports"),
        _Key("address", _ip()),
        _Key("process", _string()),
        _Key("unit", _string()),
    ],
    checks=[_check_rule_not_empty],
)

_THRESHOLDS = _Section(
    Thresholds,
    [
        _Key("exhaustion_warning", _ratio()),
        _Key("exhaustion_critical", _ratio()),
        _Key("close_wait", _integer(1)),
        _Key("min_range_size", _integer(1)),
    ],
    checks=[_check_thresholds],
)

_WEB = _Section(
    WebConfig,
    [
        _Key("listen_address", _listen_address()),
        _Key("tls_cert_file", _readable_file()),
        _Key("tls_key_file", _readable_file()),
        _Key("tls_client_ca_file", _readable_file()),
        _Key("basic_auth_users", _MapOf(_user_name, _bcrypt_hash())),
    ],
    checks=[_check_tls],
)

_METRICS = _Section(MetricsConfig, [_Key("top_destinations", _integer(0, 1000))])


# --------------------------------------------------------------------------
# The alerts section


def _check_retry(sink: Any, given: frozenset[object]) -> Iterator[tuple[str, str]]:
    """``retry_max_delay`` must not be below ``retry_initial_delay``."""
    if sink is not None and sink.retry_max_delay < sink.retry_initial_delay:
        yield ("retry_max_delay",
               f"must be >= retry_initial_delay ({sink.retry_initial_delay:g}s), got {sink.retry_max_delay:g}s")


def _check_http(sink: Any, given: frozenset[object]) -> Iterator[tuple[str, str]]:
    """A bearer token file and an ``Authorization`` header exclude each other."""
    if sink is not None and sink.bearer_token_file is not None and any(
            h.lower() == "authorization" for h in sink.headers):
        yield "headers", "sets Authorization, and so does bearer_token_file: use one of them"


def _check_urls(sink: AlertmanagerSinkConfig | None, given: frozenset[object]) -> Iterator[tuple[str, str]]:
    """At least one URL."""
    if sink is not None and not sink.urls:
        yield "urls", "must list at least one Alertmanager URL"


def _check_url_list(items: Sequence[tuple[int, Any]]) -> Iterator[tuple[str, str]]:
    """No URL twice (a trailing slash does not make another URL)."""
    seen: set[str] = set()
    for index, url in items:
        if url.rstrip("/") in seen:
            yield f"[{index}]", "listed twice"
        seen.add(url.rstrip("/"))


def _check_sink_list(items: Sequence[tuple[int, Any]]) -> Iterator[tuple[str, str]]:
    """A rule names each sink at most once."""
    seen: set[str] = set()
    for index, name in items:
        if name in seen:
            yield f"[{index}]", f"sink {name!r} is listed twice"
        seen.add(name)


def _check_rule_names(items: Sequence[tuple[int, Any]]) -> Iterator[tuple[str, str]]:
    """Rule names are unique (alert state across restarts is keyed by them)."""
    first: dict[str, int] = {}
    for index, rule in items:
        if rule.name in first:
            yield f"[{index}].name", f"duplicate rule name {rule.name!r} (first at [{first[rule.name]}])"
        else:
            first[rule.name] = index


_RETRY_KEYS = [
    _Key("queue_size", _integer(1, 1_000_000)),
    _Key("retry_initial_delay", _duration(0.01)),
    _Key("retry_max_delay", _duration(0.01)),
]
_HTTP_KEYS = [
    _Key("timeout", _duration(0.1)),
    _Key("headers", _MapOf(_header_name, _header_value())),
    _Key("bearer_token_file", _readable_file()),
    _Key("tls_verify", _boolean()),
    _Key("tls_ca_file", _readable_file()),
]


def _type_key(name: str) -> _Key:
    return _Key("type", _Scalar(_choice([name])), required=True)


_SINK_SECTIONS: Mapping[str, _Section] = {
    "journal": _Section(
        JournalSinkConfig,
        [_type_key("journal"), _Key("syslog_identifier", _string()), *_RETRY_KEYS],
        checks=[_check_retry],
    ),
    "webhook": _Section(
        WebhookSinkConfig,
        [_type_key("webhook"), _Key("url", _url(), required=True), *_HTTP_KEYS, *_RETRY_KEYS],
        checks=[_check_retry, _check_http],
    ),
    "alertmanager": _Section(
        AlertmanagerSinkConfig,
        [
            _type_key("alertmanager"),
            _Key("urls", _ListOf(_url(), checks=[_check_url_list]), required=True),
            _Key("resend_interval", _duration(1.0)),
            _Key("labels", _MapOf(_label_name, _string())),
            *_HTTP_KEYS,
            *_RETRY_KEYS,
        ],
        checks=[_check_retry, _check_http, _check_urls],
    ),
    "exec": _Section(
        ExecSinkConfig,
        [_type_key("exec"), _Key("command", _absolute_program(), required=True),
         _Key("timeout", _duration(0.1)), *_RETRY_KEYS],
        checks=[_check_retry],
    ),
}


class _Tagged(_Node):
    """A mapping whose ``type`` key picks the section (of ``sections``) that validates the rest."""

    def __init__(self, sections: Mapping[str, _Section]) -> None:
        self._sections = dict(sections)

    def parse(self, value: object, path: str, errors: list[str]) -> object:
        types = ", ".join(self._sections)
        if not isinstance(value, dict):
            errors.append(_at(path, f"must be a mapping with a 'type' ({types}), got {_show(value)}"))
            return _BAD
        kind = value.get("type")
        if kind is None:
            errors.append(_at(path, f"missing required key 'type' (one of {types})"))
            return _BAD
        if not isinstance(kind, str) or kind not in self._sections:
            errors.append(_at(_join(path, "type"),
                              f"unknown sink type {_show(kind)}{_suggest(kind, self._sections)};"
                              f" must be one of {types}"))
            return _BAD
        return self._sections[kind].parse(value, path, errors)

    def dump(self, value: Any) -> object:
        return self._sections[value.type].dump(value)

    def keys(self, path: str) -> Iterator[str]:
        seen: set[str] = set()
        for section in self._sections.values():
            for key in section.keys(path):
                if key not in seen:
                    seen.add(key)
                    yield key


class _SinkMap(_MapOf):
    """``alerts.sinks``: free names; :meth:`keys` lists every sink key once, under ``NAME``."""

    def keys(self, path: str) -> Iterator[str]:
        return self._value.keys(_join(path, "NAME"))


class _AlertsSection(_Section):
    """The ``alerts`` section, plus the check that every sink a rule names exists.

    That check reads the raw YAML, so it runs (and reports) even when other
    parts of the section are invalid.
    """

    def parse(self, value: object, path: str, errors: list[str]) -> object:
        built = super().parse(value, path, errors)
        if not isinstance(value, dict):
            return built
        raw_sinks, raw_rules = value.get("sinks"), value.get("rules")
        if raw_sinks is not None and not isinstance(raw_sinks, dict):
            return built
        names = {BUILTIN_SINK, *(k for k in (raw_sinks or {}) if isinstance(k, str))}
        if not isinstance(raw_rules, list):
            return built
        defined = ", ".join(sorted(names))
        for i, rule in enumerate(raw_rules):
            sinks = rule.get("sinks") if isinstance(rule, dict) else None
            if not isinstance(sinks, list):
                continue
            for j, name in enumerate(sinks):
                if isinstance(name, str) and _IDENT_RE.fullmatch(name) and name not in names:
                    where = _join(path, "rules") + f"[{i}].sinks[{j}]"
                    errors.append(_at(where, f"unknown sink {name!r}{_suggest(name, names)};"
                                             f" defined sinks: {defined}"))
                    built = _BAD
        return built


_ALERT_RULE = _Section(
    AlertRule,
    [
        _Key("name", _Scalar(_name("rule")), required=True),
        _Key("kind", _kinds(), attr="kinds"),
        _Key("min_severity", _enum(Severity)),
        _Key("port", _port_range(), attr="ports"),
        _Key("address", _ip()),
        _Key("process", _string()),
        _Key("unit", _string()),
        _Key("severity", _enum(Severity)),
        _Key("for", _duration(0.0), attr="for_"),
        _Key("repeat_interval", _duration(0.0)),
        _Key("send_resolved", _boolean()),
        _Key("continue", _boolean(), attr="continue_"),
        _Key("sinks", _ListOf(_Scalar(_name("sink")), checks=[_check_sink_list]), required=True),
    ],
)

_ALERTS = _AlertsSection(
    AlertsConfig,
    [
        _Key("sinks", _SinkMap(_name("sink"), _Tagged(_SINK_SECTIONS))),
        _Key("rules", _ListOf(_ALERT_RULE, checks=[_check_rule_names])),
    ],
)

_CONFIG = _Section(
    Config,
    [
        _Key("interval", _duration(MIN_INTERVAL)),
        _Key("source", _Scalar(_choice(SOURCES))),
        _Key("state_directory", _absolute_path()),
        _Key("services", _ListOf(_SERVICE, checks=[_check_service_duplicates])),
        _Key("ignore", _ListOf(_IGNORE_RULE)),
        _Key("thresholds", _THRESHOLDS),
        _Key(
            "severities",
            _MapOf(
                _kind_key,
                _enum(Severity),
                dump_key=lambda k: str(k.value),
                documented_keys=[k.value for k in Kind],
            ),
        ),
        _Key("web", _WEB),
        _Key("metrics", _METRICS),
        _Key("alerts", _ALERTS),
    ],
)


def schema_keys() -> list[str]:
    """Every key path the configuration accepts, in schema order.

    Nested keys are dotted (``thresholds.close_wait``), list items are
    ``[]`` (``services[].port``), and ``severities`` lists one key per kind
    (``severities.self_connect``). Free-form mapping keys (user names) are
    not listed. Takes nothing; never raises.
    """
    return list(_CONFIG.keys(""))


# --------------------------------------------------------------------------
# Entry points


def parse_config(data: object, source: str = "<string>") -> Config:
    """Validate already-parsed YAML ``data`` and build the :class:`Config`.

    ``None`` (an empty document) gives the built-in defaults. ``source``
    names where the data came from, for the error. Returns the Config.
    Raises :class:`ConfigError` listing every problem found (not just the
    first), each as ``"path: problem"``.
    """
    errors: list[str] = []
    config = _CONFIG.parse(data, "", errors)
    if errors or not isinstance(config, Config):
        raise ConfigError(errors or ["invalid configuration"], source)
    return config


def config_to_dict(config: Config) -> dict[str, object]:
    """Plain data (str keys; str, int, float, list, dict values) describing ``config`` fully.

    Every key is present except optional ones that are unset (None).
    ``parse_config(config_to_dict(c)) == c`` holds for any ``c`` that
    :func:`parse_config` or :func:`load_config` built (TLS files must still be
    readable). Never raises for such a config.
    """
    return _CONFIG.dump(config)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that records duplicate mapping keys instead of keeping the last one."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Construct the mapping as SafeLoader does, noting each repeated key with its line."""
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: SafeLoader reports it below
                continue
            mark = key_node.start_mark
            if first is None:
                seen[key] = mark.line
            else:
                self.duplicates.append(
                    f"line {mark.line + 1}, column {mark.column + 1}: duplicate key {_show(key)}"
                    f" (first at line {first + 1})"
                )
        return super().construct_mapping(node, deep=deep)


def _yaml_error(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: ``line L, column C: invalid YAML: problem (context at line N)``."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        text = f"line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {exc.problem}"
        if exc.context and exc.context_mark is not None:
            text += f" ({exc.context} at line {exc.context_mark.line + 1})"
        return text
    return f"invalid YAML: {' '.join(str(exc).split())}"


def load_yaml(text: str, source: str = "<string>") -> object:
    """Parse YAML ``text`` safely (no object construction), refusing duplicate keys.

    Returns the data (``None`` for an empty document). Raises
    :class:`ConfigError` naming ``source`` for a syntax error (with line and
    column) or for duplicate keys (all of them, with lines).
    """
    loader = _UniqueKeyLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error(exc)], source) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(loader.duplicates, source)
    return data


def load_config(path: Path | None) -> Config:
    """Read and validate the YAML configuration file at ``path``.

    ``None`` gives the built-in defaults (``Config()``), as does an empty file
    (or one with only comments). Returns the Config. Raises
    :class:`ConfigError` with ``source`` = the path for: a missing file,
    permission denied, a directory, text that is not UTF-8, a YAML syntax
    error (with line and column), duplicate keys, a top level that is not a
    mapping, and every validation problem.
    """
    if path is None:
        return Config()
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(["cannot read: no such file"], source) from None
    except IsADirectoryError:
        raise ConfigError(["cannot read: is a directory, not a YAML file"], source) from None
    except PermissionError:
        raise ConfigError(["cannot read: permission denied"], source) from None
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"], source) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"not UTF-8 text: invalid byte at offset {exc.start}"], source
        ) from None
    return parse_config(load_yaml(text, source), source)
