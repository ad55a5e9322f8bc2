"""The ``alertmanager`` sink: alerts POSTed to Alertmanager's API v2 (``/api/v2/alerts``).

Each notification becomes one alert (two for a severity change)::

    labels:      alertname (PortwatchSelfConnect, ... see ALERTNAMES), severity, kind,
                 instance (this host, unless ``labels`` overrides it), port (when the
                 finding has one), key (the finding's key), rule, netns (the namespace's
                 key, as the metrics' ``netns`` label), container and pod (its container
                 id and pod uid) when the finding's network namespace is known,
                 transient ("true" for a finding seen only in socket-destroy events), and
                 the sink's ``labels``
    annotations: summary, remediation (when known), processes (``name[pid] user=... unit=...``)
    startsAt:    when the alert fired
    endsAt:      firing: now + 4 x resend_interval; resolved: when it resolved

Alertmanager keeps an alert active until its ``endsAt``; portwatch posts a
firing alert again every ``resend_interval`` (the sink's
:attr:`~portwatch.alerts.rules.SinkPolicy.resend_interval`), which moves
``endsAt`` forward, and posts it with ``endsAt`` = the resolution time when
the finding goes away (always: Alertmanager's own ``send_resolved`` decides
who hears of it). If portwatch stops for good, Alertmanager resolves its
alerts by itself four intervals after the last post. A severity change
resolves the alert with the old ``severity`` label and fires the new one.

Every URL of ``urls`` gets every post (an HA pair gossips, but each member
must hear from the sender, as with Prometheus). A delivery succeeds when at
least one Alertmanager accepted it; one that was down catches up with the
next post of a firing alert. Each failing URL is logged once per outage.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from portwatch.alerts.notification import Notification, Reason, Status, iso_time
from portwatch.alerts.rules import SinkPolicy
from portwatch.alerts.sinks.base import HTTP_KEYS, HttpSinkConfig, check_http, sink_section, TIMEOUT_KEY
from portwatch.alerts.sinks.core import SinkContext, SinkError
import portwatch.config.schema as s
from portwatch.config.grammar import label_name, redact_url
from portwatch.config.schema import Key, ListOf, MapOf
from portwatch.config.types import RESERVED_ALERT_LABELS
from portwatch.detect.registry import ALERTNAMES as REGISTRY_ALERTNAMES

if TYPE_CHECKING:
    from portwatch.alerts.http import HttpPoster

__all__ = ["ALERTNAMES", "API_PATH", "SHAPE", "AlertmanagerSink", "AlertmanagerSinkConfig", "alerts_for",
           "build", "labels_for"]


@dataclass(frozen=True, kw_only=True)
class AlertmanagerSinkConfig(HttpSinkConfig):
    """The ``alertmanager`` sink: alerts POSTed to ``/api/v2/alerts`` of every URL (an HA set).

    ``urls`` are base URLs (``http://am1:9093``, or with a path prefix);
    ``resend_interval`` is how often a firing alert is posted again (its
    ``endsAt`` is four intervals ahead); ``labels`` are added to every alert.
    """

    urls: tuple[str, ...]
    type: str = "alertmanager"
    resend_interval: float = 60.0
    labels: Mapping[str, str] = field(default_factory=dict)


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


def _label(value: object) -> str:
    return label_name(value, RESERVED_ALERT_LABELS)


SHAPE = sink_section(AlertmanagerSinkConfig, "alertmanager", [
    Key("urls", ListOf(s.url(), checks=[_check_url_list]), "list of URLs", "base URL of every Alertmanager"
        " of the (HA) set, e.g. `http://am1:9093`; portwatch POSTs to `/api/v2/alerts` below it", required=True),
    Key("resend_interval", s.duration(1.0), "duration, at least `1s`", "how often a firing alert is posted"
        " again; its `endsAt` is four intervals ahead, so Alertmanager resolves it by itself only if portwatch"
        " is gone that long"),
    Key("labels", MapOf(_label, s.string()), "mapping label → string", "labels added to every alert;"
        " `instance` may be overridden, `alertname`, `severity`, `kind`, `port`, `key`, `rule` and `transient` are"
        " portwatch's"),
    TIMEOUT_KEY,
    *HTTP_KEYS,
], checks=[check_http, _check_urls])

API_PATH = "/api/v2/alerts"
#: A firing alert's endsAt is this many resend intervals after the post.
ENDS_AFTER_INTERVALS = 4

#: The ``alertname`` of each kind value, as the detect registry declares them (the names
#: config/prometheus/portwatch.rules.yml uses). A kind this version does not know (a
#: notification saved by another version) is sent as plain "Portwatch".
ALERTNAMES: Mapping[str, str] = REGISTRY_ALERTNAMES


def _describe(process: Mapping[str, Any]) -> str:
    name = process.get("name") or "?"
    out = f"{name}[{process.get('pid')}]"
    if process.get("user"):
        out += f" user={process['user']}"
    if process.get("unit"):
        out += f" unit={process['unit']}"
    return out


def labels_for(note: Notification, extra: Mapping[str, str]) -> dict[str, str]:
    """The alert's labels (see the module documentation); empty values are left out."""
    labels = {
        "alertname": ALERTNAMES.get(note.kind, "Portwatch"),
        "severity": note.severity.value,
        "kind": note.kind,
        "instance": note.host,
        "port": str(note.port) if note.port is not None else "",
        "key": note.finding_key,
        "rule": note.rule,
    }
    ns = note.namespace or {}
    for label, field_name in (("netns", "key"), ("container", "container"), ("pod", "pod")):
        value = ns.get(field_name)
        labels[label] = value if isinstance(value, str) else ""
    details = note.finding.get("details")
    labels["transient"] = "true" if isinstance(details, Mapping) and details.get("transient") is True else ""
    labels.update(extra)
    return {k: v for k, v in labels.items() if v}


def annotations_for(note: Notification) -> dict[str, str]:
    """The alert's annotations: summary, remediation and processes (the latter two when known)."""
    out = {"summary": note.summary}
    if note.remediation:
        out["remediation"] = note.remediation
    if note.processes:
        out["processes"] = "; ".join(_describe(p) for p in note.processes)
    return {k: v for k, v in out.items() if v}


def alerts_for(note: Notification, now: float, resend_interval: float,
               extra: Mapping[str, str]) -> list[dict[str, Any]]:
    """The API v2 alert objects that deliver ``note`` at ``now``."""
    ends = note.ends_at if note.status is Status.RESOLVED and note.ends_at is not None \
        else now + ENDS_AFTER_INTERVALS * resend_interval
    alert = {
        "labels": labels_for(note, extra),
        "annotations": annotations_for(note),
        "startsAt": iso_time(note.starts_at),
        "endsAt": iso_time(ends),
    }
    out = []
    if note.reason is Reason.SEVERITY_CHANGED and note.previous_severity is not None:
        old = replace(note, severity=note.previous_severity)
        out.append({"labels": labels_for(old, extra), "annotations": annotations_for(old),
                    "startsAt": iso_time(note.starts_at), "endsAt": iso_time(note.created_at)})
    out.append(alert)
    return out


class AlertmanagerSink:
    """Posts alerts to every Alertmanager of ``urls``."""

    def __init__(self, name: str, config: AlertmanagerSinkConfig, poster: HttpPoster,
                 clock: Callable[[], float], logger: logging.Logger) -> None:
        self._name = name
        self._endpoints = [url.rstrip("/") + API_PATH for url in config.urls]
        self._resend = config.resend_interval
        self._labels = dict(config.labels)
        self._poster = poster
        self._clock = clock
        self._log = logger
        self._down: set[str] = set()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The sink's name."""
        return self._name

    @property
    def policy(self) -> SinkPolicy:
        """Firing alerts are posted every resend_interval; resolutions always."""
        return SinkPolicy(resend_interval=self._resend, always_resolve=True)

    def send(self, note: Notification) -> None:
        """Post ``note`` to every Alertmanager. Returns when at least one accepted it.

        Raises :class:`SinkError`: temporary unless every Alertmanager refused it for good.
        """
        body = json.dumps(alerts_for(note, self._clock(), self._resend, self._labels),
                          separators=(",", ":")).encode("utf-8")
        errors: list[SinkError] = []
        for url in self._endpoints:
            try:
                self._poster.post(url, body)
            except SinkError as exc:
                errors.append(exc)
                with self._lock:
                    first = url not in self._down
                    self._down.add(url)
                if first and len(self._endpoints) > 1:
                    self._log.warning("alertmanager sink %s: %s", self._name, exc)
            else:
                with self._lock:
                    back = url in self._down
                    self._down.discard(url)
                if back and len(self._endpoints) > 1:
                    self._log.info("alertmanager sink %s: %s accepts alerts again", self._name, redact_url(url))
        if len(errors) < len(self._endpoints):
            return
        if len(errors) == 1:
            raise errors[0]
        permanent = all(e.permanent for e in errors)
        retry_after = max((e.retry_after for e in errors if e.retry_after is not None), default=None)
        raise SinkError("; ".join(str(e) for e in errors), permanent=permanent, retry_after=retry_after)


def build(name: str, config: AlertmanagerSinkConfig, context: SinkContext) -> AlertmanagerSink:
    """The alertmanager sink ``name``. Raises :class:`~portwatch.alerts.sinks.SinkBuildError`
    when the token or CA file cannot be read."""
    from portwatch.alerts.http import HttpPoster, read_token  # urllib and ssl: loaded only to send

    token = read_token(config.bearer_token_file) if config.bearer_token_file is not None else None
    poster = HttpPoster(config.timeout, config.headers, token, config.tls_verify, config.tls_ca_file)
    return AlertmanagerSink(name, config, poster, context.clock, context.logger)
