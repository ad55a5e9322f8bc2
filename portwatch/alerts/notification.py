"""What the rule engine hands to the sinks: one :class:`Notification` per alert event and sink.

A notification is self-contained and JSON-ready (the finding travels as
:func:`finding_data`: its ``Finding.to_dict()`` form with a ``namespace``
object, see :func:`namespace_data`), so it can wait in a queue, be written to the
state directory when the daemon stops, and be delivered after the next start
by a sink that reads nothing else. :func:`document` is the JSON document the
``webhook`` and ``exec`` sinks send (its shape is documented in
docs/alerting.md; additions are possible, removals or renames bump
:data:`DOCUMENT_VERSION`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, overload

from portwatch import __version__
from portwatch.model import Finding, NamespaceInfo, Severity
from portwatch.model.text import iso_time as _iso_time
from portwatch.model.values import finite_number

__all__ = ["DOCUMENT_VERSION", "Notification", "Reason", "Status", "document", "finding_data", "iso_time",
           "namespace_data", "number_field", "number_value", "text_field"]

#: Version of the webhook/exec JSON document.
DOCUMENT_VERSION = 1


class Status(str, enum.Enum):
    """Whether the alert is firing or resolved."""

    FIRING = "firing"
    RESOLVED = "resolved"


class Reason(str, enum.Enum):
    """Why the notification was made."""

    NEW = "new"  # the alert fired (or a sink was added to a firing alert's rule)
    REPEAT = "repeat"  # still firing, repeat_interval (or an alertmanager sink's resend_interval) passed
    SEVERITY_CHANGED = "severity_changed"  # still firing, with another severity
    RESOLVED = "resolved"  # the finding went away (or no longer matches the rule)


#: Makes the exception of a bad field from its message and its value: ``(message, value) -> exception``.
FieldError = Callable[[str, object], Exception]


def _value_error(message: str, value: object) -> Exception:
    return ValueError(message)


def number_value(value: object, name: str, error: FieldError = _value_error) -> float:
    """``value`` (the field ``name`` of a JSON document) as a finite number.

    Raises ``error("NAME is not a finite number", value)`` (default: a
    ``ValueError`` of that message) for anything else. The readers of
    portwatch's own files (this module, the alert store, the daemon's state)
    check their numbers with it and :func:`number_field`.
    """
    number = finite_number(value)
    if number is None:
        raise error(f"{name} is not a finite number", value)
    return number


@overload
def number_field(entry: Mapping[str, Any], name: str, *, optional: Literal[False] = False,
                 error: FieldError = _value_error) -> float: ...
@overload
def number_field(entry: Mapping[str, Any], name: str, *, optional: bool,
                 error: FieldError = _value_error) -> float | None: ...
def number_field(entry: Mapping[str, Any], name: str, *, optional: bool = False,
                 error: FieldError = _value_error) -> float | None:
    """``entry[name]`` as a finite number; None when it is absent (or null) and ``optional``.

    Raises as :func:`number_value`.
    """
    value = entry.get(name)
    if value is None and optional:
        return None
    return number_value(value, name, error)


@overload
def text_field(entry: Mapping[str, Any], name: str, *, optional: Literal[False] = False,
               error: FieldError = _value_error) -> str: ...
@overload
def text_field(entry: Mapping[str, Any], name: str, *, optional: bool,
               error: FieldError = _value_error) -> str | None: ...
def text_field(entry: Mapping[str, Any], name: str, *, optional: bool = False,
               error: FieldError = _value_error) -> str | None:
    """``entry[name]`` as a non-empty string; None when it is absent (or null) and ``optional``.

    Raises ``error("NAME is not a non-empty string", value)`` (default: a
    ``ValueError`` of that message) for anything else.
    """
    value = entry.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise error(f"{name} is not a non-empty string", value)
    return value


def iso_time(ts: float) -> str:
    """A Unix time as RFC 3339 UTC with milliseconds: ``2024-05-01T12:00:00.000Z``."""
    return _iso_time(ts, "milliseconds")


def namespace_data(namespace: NamespaceInfo | None) -> dict[str, Any] | None:
    """The ``namespace`` object of an alert's finding: ``id`` (inode), ``name``, ``key`` (the metrics'
    ``netns`` label), ``kind``, ``container``, ``pod`` (uid), ``unit`` (null when unknown); None without one."""
    if namespace is None:
        return None
    return {"id": namespace.inode, "name": namespace.name, "key": namespace.key, "kind": namespace.kind.value,
            "container": namespace.container, "pod": namespace.pod_uid, "unit": namespace.unit}


def finding_data(finding: Finding) -> dict[str, Any]:
    """What a notification carries of ``finding``: its ``to_dict()``, and ``namespace`` (:func:`namespace_data`)
    when the finding's network namespace is known (so a notification without one is as before namespaces)."""
    data = finding.to_dict()
    if finding.namespace is not None:
        data["namespace"] = namespace_data(finding.namespace)
    return data


@dataclass(frozen=True)
class Notification:
    """One alert event for one sink.

    ``alert_key`` is ``"<rule>/<finding key>"``; ``starts_at`` is when the
    alert fired; ``ends_at`` when it resolved (None while firing);
    ``created_at`` when the engine made this notification (all Unix times).
    ``previous_severity`` is set for :attr:`Reason.SEVERITY_CHANGED`.
    ``finding`` is the finding's ``to_dict()`` as of the latest scan that
    reported it. ``id`` is unique per notification: a receiver that sees an
    id twice got a retry of a delivery whose outcome portwatch could not know.
    """

    id: str
    sink: str
    alert_key: str
    rule: str
    status: Status
    reason: Reason
    severity: Severity
    starts_at: float
    created_at: float
    host: str
    finding: Mapping[str, Any] = field(default_factory=dict)
    ends_at: float | None = None
    previous_severity: Severity | None = None

    # -- convenience views of the finding

    @property
    def kind(self) -> str:
        """The finding's kind (``self_connect``...)."""
        return str(self.finding.get("kind", ""))

    @property
    def finding_key(self) -> str:
        """The finding's stable key."""
        return str(self.finding.get("key", self.alert_key.split("/", 1)[-1]))

    @property
    def summary(self) -> str:
        """The finding's one-line summary."""
        return str(self.finding.get("summary", ""))

    @property
    def remediation(self) -> str | None:
        """The finding's remediation hint, if any."""
        value = self.finding.get("remediation")
        return str(value) if value else None

    @property
    def port(self) -> int | None:
        """The port the finding is about, if any."""
        value = self.finding.get("port")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def namespace(self) -> Mapping[str, Any] | None:
        """The finding's network namespace (:func:`namespace_data`), None when unknown."""
        value = self.finding.get("namespace")
        return value if isinstance(value, Mapping) else None

    @property
    def processes(self) -> list[Mapping[str, Any]]:
        """The finding's processes (dicts as ``ProcessInfo.to_dict()``)."""
        value = self.finding.get("processes")
        return [p for p in value if isinstance(p, Mapping)] if isinstance(value, list) else []

    # -- persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` reads it back."""
        return {
            "id": self.id,
            "sink": self.sink,
            "alert_key": self.alert_key,
            "rule": self.rule,
            "status": self.status.value,
            "reason": self.reason.value,
            "severity": self.severity.value,
            "previous_severity": self.previous_severity.value if self.previous_severity else None,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "created_at": self.created_at,
            "host": self.host,
            "finding": dict(self.finding),
        }

    @classmethod
    def from_dict(cls, data: object) -> Notification:
        """The notification :meth:`to_dict` made. Raises ``ValueError`` saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        finding = data.get("finding")
        if not isinstance(finding, dict):
            raise ValueError("finding is not an object")
        previous = data.get("previous_severity")
        starts_at, created_at = number_field(data, "starts_at"), number_field(data, "created_at")
        host = data.get("host")
        if not isinstance(host, str):
            raise ValueError("host is not a string")
        return cls(
            id=text_field(data, "id"),
            sink=text_field(data, "sink"),
            alert_key=text_field(data, "alert_key"),
            rule=text_field(data, "rule"),
            status=Status(data.get("status")),
            reason=Reason(data.get("reason")),
            severity=Severity(data.get("severity")),
            previous_severity=Severity(previous) if previous is not None else None,
            starts_at=starts_at,
            ends_at=number_field(data, "ends_at", optional=True),
            created_at=created_at,
            host=host,
            finding=finding,
        )


def document(note: Notification) -> dict[str, Any]:
    """The JSON document of ``note`` that the webhook and exec sinks send (docs/alerting.md).

    ``namespace`` (:func:`namespace_data`) is there when the finding's network namespace is known.
    """
    doc: dict[str, Any] = {
        "version": DOCUMENT_VERSION,
        "id": note.id,
        "status": note.status.value,
        "reason": note.reason.value,
        "host": note.host,
        "alert": {
            "key": note.alert_key,
            "rule": note.rule,
            "severity": note.severity.value,
            "previous_severity": note.previous_severity.value if note.previous_severity else None,
            "starts_at": iso_time(note.starts_at),
            "ends_at": iso_time(note.ends_at) if note.ends_at is not None else None,
        },
        "created_at": iso_time(note.created_at),
        "summary": note.summary,
        "remediation": note.remediation,
        "processes": [dict(p) for p in note.processes],
        "finding": dict(note.finding),
        "portwatch_version": __version__,
    }
    if note.namespace is not None:
        doc["namespace"] = dict(note.namespace)  # an addition: only when the finding's namespace is known
    return doc
