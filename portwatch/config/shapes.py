"""The shape of every core section of the configuration, each key written once (see :mod:`.schema`).

The sinks' shapes are not here: each sink module of
:mod:`portwatch.alerts.sinks` owns its own; :func:`config_shape` takes them
and assembles the whole file's shape (:mod:`portwatch.config.loading` calls
it with the sink registry's shapes).

May import: the standard library, :mod:`portwatch.model`,
:mod:`portwatch.config.types`, :mod:`.grammar` and :mod:`.schema` (pure).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import portwatch.config.grammar as grammar
import portwatch.config.schema as s
from portwatch.collect.sources import SOURCE_NAMES
from portwatch.config.schema import Key, ListOf, MapOf, Section, Tagged, at, join
from portwatch.config.types import (
    BUILTIN_SINK,
    FAILURE_CAPTURES,
    MIN_INTERVAL,
    AlertRule,
    AlertsConfig,
    CaptureConfig,
    Config,
    EventsConfig,
    IgnoreRule,
    NAMESPACE_SCOPES,
    MetricsConfig,
    NamespacesConfig,
    Service,
    Thresholds,
    WebConfig,
)
from portwatch.model import Kind, Protocol, Severity

__all__ = ["ALERT_RULE", "CAPTURE", "EVENTS", "IGNORE_RULE", "METRICS", "NAMESPACES", "SERVICE", "THRESHOLDS", "WEB",
           "config_shape"]


def _check_service_duplicates(items: Sequence[tuple[int, Any]]) -> Iterator[tuple[str, str]]:
    """Two services with the same (port, protocol, address, namespace) are an error naming both indexes."""
    first: dict[tuple[int, Protocol, str | None, str | None], int] = {}
    for index, service in items:
        key = (service.port, service.protocol, service.address, service.namespace)
        if key in first:
            where = service.address if service.address is not None else "any address"
            yield (f"[{index}]", f"same port, protocol and address as services[{first[key]}]"
                                 f" ({service.port}/{service.protocol.value}, {where})")
        else:
            first[key] = index


def _check_rule_not_empty(rule: IgnoreRule | None, given: frozenset[object]) -> Iterator[tuple[str, str]]:
    """A rule with no keys at all would drop every finding."""
    if not given:
        yield "", "empty rule would ignore every finding"


def _check_thresholds(t: Thresholds | None, given: frozenset[object]) -> Iterator[tuple[str, str]]:
    """The critical ratio must not be below the warning ratio."""
    if t is not None and t.exhaustion_critical < t.exhaustion_warning:
        default = "" if "exhaustion_warning" in given else ", the default"
        yield ("exhaustion_critical", f"must be >= exhaustion_warning ({t.exhaustion_warning:g}{default}),"
                                      f" got {t.exhaustion_critical:g}")


def _check_tls(web: WebConfig | None, given: frozenset[object]) -> Iterator[tuple[str, str]]:
    """Certificate and key come together; a client CA needs both (judged on the keys given)."""
    cert, key = "tls_cert_file" in given, "tls_key_file" in given
    if cert and not key:
        yield "tls_key_file", "required when tls_cert_file is set"
    if key and not cert:
        yield "tls_cert_file", "required when tls_key_file is set"
    if "tls_client_ca_file" in given and not (cert and key):
        yield ("tls_client_ca_file",
               "needs tls_cert_file and tls_key_file (client certificates are only checked over TLS)")


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


def _kind_key(value: object) -> Kind:
    """A finding kind used as a mapping key."""
    return Kind(grammar.choice(value, [k.value for k in Kind], what="kind"))


def _kinds() -> s.Scalar:
    """One finding kind, or a non-empty list of them, as a tuple of Kind (dumped back the same way)."""
    values = [k.value for k in Kind]

    def check(value: object) -> tuple[Kind, ...]:
        if isinstance(value, list):
            if not value:
                raise ValueError("must be a kind or a non-empty list of kinds")
            kinds = tuple(Kind(grammar.choice(v, values, what="kind")) for v in value)
            if len(set(kinds)) != len(kinds):
                raise ValueError("lists a kind twice")
            return kinds
        return (Kind(grammar.choice(value, values, what="kind")),)

    def dump(kinds: tuple[Kind, ...]) -> object:
        return kinds[0].value if len(kinds) == 1 else [k.value for k in kinds]

    return s.Scalar(check, dump)


SEVERITY_TYPE = "`info`, `warning` or `critical`"
_ANY = "any"

SERVICE = Section(Service, [
    Key("name", s.string(), "non-empty string", "label used in reports and alerts", required=True),
    Key("port", s.integer(1, 65535), "integer 1..65535", "the service's port", required=True),
    Key("protocol", s.enum(Protocol), "`tcp` or `udp`", "the service's transport protocol"),
    Key("address", s.ip(), "IP address", "the address the service binds, when it binds one",
        default="any address"),
    Key("namespace", s.string(), "non-empty string",
        "the network namespace the service lives in: an `ip netns` name, a container id (or a prefix of"
        " 12 characters or more), a pod uid or a pod's `NAMESPACE/NAME` (`default/web-1`, when its"
        " runtime's bundle is readable), as `portwatch scan -A` names them",
        default="the host namespace"),
    Key("process", s.string(), "non-empty string",
        "the service's process: its name (as `ps -o comm` shows it) or executable path; sockets of it"
        " holding the port while no listener is up"
        " are its own draining connections: `port_taken` is then info, not critical",
        default="not known"),
    Key("unit", s.string(), "non-empty string",
        "the systemd unit of the service's process, suffix included (`nginx.service`); as `process`",
        default="not known"),
])

IGNORE_RULE = Section(IgnoreRule, [
    Key("kind", s.enum(Kind), "a finding kind (below)", "the finding is of this kind", default=_ANY),
    Key("port", s.port_range(), 'port, or range `"low-high"`',
        "the port the finding is about is this port or inside the range (inclusive); a finding without"
        " a port never matches a rule with `port`", attr="ports", default=_ANY),
    Key("address", s.ip(), "IP address", "the address is one of the finding's addresses", default=_ANY),
    Key("process", s.string(), "non-empty string",
        "one of the finding's processes has exactly this name (as `ps -o comm` shows it)", default=_ANY),
    Key("unit", s.string(), "non-empty string", "one of the finding's processes belongs to exactly this"
        " systemd unit, suffix included (`nginx.service`)", default=_ANY),
], checks=[_check_rule_not_empty])

THRESHOLDS = Section(Thresholds, [
    Key("exhaustion_warning", s.ratio(), "number, `0 < x <= 1`",
        "`ephemeral_exhaustion` is a warning when the sockets of one (local ip, remote ip, remote port)"
        " use this share of the usable range (the range minus reserved ports), TIME_WAIT included"),
    Key("exhaustion_critical", s.ratio(), "number, `exhaustion_warning <= x <= 1`",
        "… and critical from this share"),
    Key("close_wait", s.integer(1), "integer >= 1",
        "`close_wait_buildup` when one process holds more CLOSE_WAIT sockets than this"),
    Key("min_range_size", s.integer(1), "integer >= 1",
        "`range_misconfigured` when the usable range has fewer ports than this"),
], checks=[_check_thresholds])

WEB = Section(WebConfig, [
    Key("listen_address", s.listen_address(), '`"host:port"`, `"[ipv6]:port"` or `":port"`',
        "where to listen; host is an IPv4 address, a hostname, an IPv6 address in brackets, or empty for"
        " every address of both families; port 1..65535 (`--listen-address` takes the same forms)"),
    Key("tls_cert_file", s.absolute_path(), "absolute path",
        "HTTPS certificate (PEM); needs `web.tls_key_file`", preflight="readable"),
    Key("tls_key_file", s.absolute_path(), "absolute path",
        "the certificate's private key (PEM); needs `web.tls_cert_file`", preflight="readable"),
    Key("tls_client_ca_file", s.absolute_path(), "absolute path",
        "require client certificates signed by this CA; needs the certificate and key", preflight="readable"),
    Key("basic_auth_users", MapOf(grammar.user_name, s.bcrypt_hash()), "mapping user → bcrypt hash",
        "when set, every request needs one of these users' credentials"),
], checks=[_check_tls])

METRICS = Section(MetricsConfig, [
    Key("top_destinations", s.integer(0, 1000), "integer 0..1000",
        "how many (local ip, remote ip, remote port) destinations, the busiest by share of the usable"
        " range, get their own series; `0` turns them off"),
])

def _failure_capture(value: object) -> str:
    """``capture.failures``: one of FAILURE_CAPTURES; YAML's ``off`` (read as false) is ``off``."""
    return "off" if value is False else grammar.choice(value, FAILURE_CAPTURES)


CAPTURE = Section(CaptureConfig, [
    Key("failures", s.Scalar(_failure_capture), grammar.one_of(FAILURE_CAPTURES),
        "`audit`: report every connect() that fails with EADDRNOTAVAIL and every bind() that fails with"
        " EADDRINUSE, from audit rules tagged `portwatch` (host-wide; needs CAP_AUDIT_CONTROL and"
        " CAP_AUDIT_READ; see docs/failures.md)"),
])

EVENTS = Section(EventsConfig, [
    Key("listen", s.boolean(), "`true` or `false`",
        "listen to the socket-destroy events of every scanned namespace between passes, to report"
        " self-connects and loop pairs however short they live (transient findings)"),
    Key("quiet_period", s.duration(1.0), "duration, at least `1s`",
        "a transient finding resolves (its alert too) after this long without a repeat"),
])

_PATTERNS = "list of fnmatch patterns"
_NAMES = ("a name of the namespace: its name or key (`host`, `netns:INODE`), `ip netns` name, container id,"
          " pod uid, pod `NAMESPACE/NAME` (`default/web-*`; `*` matches `/` too), or systemd unit")

NAMESPACES = Section(NamespacesConfig, [
    Key("scan", s.choice(NAMESPACE_SCOPES), grammar.one_of(NAMESPACE_SCOPES),
        "which network namespaces the daemon scans each pass: `all` (every one on the host, found again"
        " every pass; needs CAP_SYS_ADMIN and CAP_SYS_PTRACE, without them the own namespace only, said"
        " once) or `own` (its own namespace only); `portwatch scan` scans its own unless given `-A`/`--netns`"),
    Key("include", ListOf(s.string()), _PATTERNS,
        f"with `scan: all`, scan only the namespaces where a pattern (`*`, `?`, `[...]`) matches {_NAMES}",
        default="every namespace"),
    Key("exclude", ListOf(s.string()), _PATTERNS,
        "with `scan: all`, leave out the namespaces where a pattern matches any of their names (as"
        " `include`; wins over it)"),
    Key("max_series", s.integer(1, 100_000), "integer 1..100000",
        "at most this many namespaces get their own `/metrics` series (the host's always does; then"
        " those with the most findings, then by key); the rest are counted in"
        " `portwatch_namespaces_left_out`"),
])

ALERT_RULE = Section(AlertRule, [
    Key("name", s.name("rule"), "letters, digits, `_`, `-`",
        "unique; names the alert (with the finding's key) across restarts and in metrics", required=True),
    Key("kind", _kinds(), "a finding kind, or a list of kinds",
        "matches findings of this kind (one of these kinds)", attr="kinds", default=_ANY),
    Key("min_severity", s.enum(Severity), SEVERITY_TYPE, "matches findings of this severity or worse",
        default=_ANY),
    Key("port", s.port_range(), 'port, or range `"low-high"`', "as in `ignore[].port`", attr="ports",
        default=_ANY),
    Key("address", s.ip(), "IP address", "as in `ignore[].address`", default=_ANY),
    Key("process", s.string(), "non-empty string", "as in `ignore[].process`", default=_ANY),
    Key("unit", s.string(), "non-empty string", "as in `ignore[].unit`", default=_ANY),
    Key("severity", s.enum(Severity), SEVERITY_TYPE, "the alert's severity instead of the finding's",
        default="the finding's"),
    Key("for", s.duration(0.0), "duration", "how long the finding must persist (be reported by every scan)"
        " before the alert fires; `0` fires on the first scan that reports it", attr="for_"),
    Key("repeat_interval", s.duration(0.0), "duration", "send a still-firing alert again this often; `0`"
        " never repeats (alertmanager sinks use their `resend_interval` instead)"),
    Key("send_resolved", s.boolean(), "`true` or `false`",
        "tell the sinks when the alert resolves (alertmanager sinks are always told)"),
    Key("continue", s.boolean(), "`true` or `false`", "after this rule matched, try the following rules too",
        attr="continue_"),
    Key("sinks", ListOf(s.name("sink"), checks=[_check_sink_list]), "list of sink names",
        "where the alert goes; every name must be a defined sink (or `journal`); an empty list `[]`"
        " silences what the rule matches", required=True),
])


class _AlertsSection(Section):
    """The ``alerts`` section, plus the check that every sink a rule names exists.

    That check reads the raw YAML, so it runs (and reports) even when other
    parts of the section are invalid.
    """

    def parse(self, value: object, path: str, errors: list[str]) -> Any:
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
                if isinstance(name, str) and grammar.IDENT_RE.fullmatch(name) and name not in names:
                    where = join(path, "rules") + f"[{i}].sinks[{j}]"
                    errors.append(at(where, f"unknown sink {name!r}{grammar.suggest(name, names)};"
                                            f" defined sinks: {defined}"))
                    built = s.BAD
        return built


def alerts_shape(sinks: Mapping[str, Section]) -> Section:
    """The ``alerts`` section for the sink types ``sinks`` (type -> that sink's section)."""
    return _AlertsSection(AlertsConfig, [
        Key("sinks", MapOf(lambda v: grammar.name(v, "sink"), Tagged(sinks), placeholder="NAME"),
            "mapping name → sink", "where alerts can go; names are letters, digits, `_` and `-`",
            default="only the built-in `journal`"),
        Key("rules", ListOf(ALERT_RULE, checks=[_check_rule_names]), "list of rules",
            "which findings alert, how, and to which sinks; given rules replace the built-in one",
            default="the built-in rule above"),
    ])


def config_shape(sinks: Mapping[str, Section]) -> Section:
    """The whole file's shape, with ``sinks`` (type -> section) as the sink types ``alerts`` accepts."""
    return Section(Config, [
        Key("interval", s.duration(MIN_INTERVAL), f"duration, at least `{grammar.format_duration(MIN_INTERVAL)}`",
            "time between two scans"),
        Key("source", s.choice(SOURCE_NAMES), grammar.one_of(SOURCE_NAMES), "where the socket table comes from"),
        Key("state_directory", s.absolute_path(), "absolute path", "what portwatch remembers across restarts"),
        Key("services", ListOf(SERVICE, checks=[_check_service_duplicates]), "list of services",
            "ports that must stay free for their service"),
        Key("ignore", ListOf(IGNORE_RULE), "list of rules", "findings to drop"),
        Key("thresholds", THRESHOLDS, "mapping", "detector thresholds"),
        Key("severities", MapOf(_kind_key, s.enum(Severity), dump_key=lambda k: str(k.value),
                                documented_keys=[k.value for k in Kind]),
            "mapping kind → severity", "per-kind severity overrides"),
        Key("web", WEB, "mapping", "the `/metrics` HTTP endpoint"),
        Key("metrics", METRICS, "mapping", "what `/metrics` exports"),
        Key("capture", CAPTURE, "mapping", "opt-in capture of failed connect()/bind() calls"),
        Key("alerts", alerts_shape(sinks), "mapping", "where findings are sent: sinks and rules",
            default="see below"),
        Key("namespaces", NAMESPACES, "mapping", "which network namespaces the daemon scans"),
        Key("events", EVENTS, "mapping", "the daemon's socket-destroy listeners (transient findings)"),
    ])
