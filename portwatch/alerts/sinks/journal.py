"""The ``journal`` sink: one structured journal entry per notification.

Fields of each entry:

- ``MESSAGE``: ``portwatch alert firing [critical] page: <summary>`` (``resolved`` when it resolved);
- ``PRIORITY``: from the alert's severity while firing (critical 2, warning 4, info 6), 5 (notice)
  for a resolution;
- ``SYSLOG_IDENTIFIER``: ``syslog_identifier`` (default ``portwatch``);
- ``PORTWATCH_ALERT_STATUS`` (``firing``/``resolved``), ``PORTWATCH_ALERT_REASON``,
  ``PORTWATCH_ALERT_RULE``, ``PORTWATCH_ALERT_KEY``, ``PORTWATCH_ALERT_ID``;
- ``PORTWATCH_KIND``, ``PORTWATCH_KEY`` (the finding's key), ``PORTWATCH_SEVERITY``,
  and when known ``PORTWATCH_PORT``, ``PORTWATCH_PID``, ``PORTWATCH_PROCESS``,
  ``PORTWATCH_UNIT`` (of the first process), ``PORTWATCH_REMEDIATION``.

One line per finding event: the daemon already logs each finding when it
appears (``new warning finding [KEY]: ...``, logger ``portwatch.findings``,
with ``PORTWATCH_KIND``, ``PORTWATCH_KEY``, ``PORTWATCH_SEVERITY``,
``PORTWATCH_PORT``, ``PORTWATCH_PID``) and when it resolves. So the
built-in ``journal`` sink, left at its defaults (no ``journal`` sink in the
file, or one with the default settings), writes no entry for the built-in
rule ``default``'s notifications that are those same events: its firing at
the finding's first scan (reason ``new``; the rule has no ``for``) and its
resolution. Its repeats and severity changes are still written, and a
journal sink the file configures (another ``syslog_identifier``, another
name) writes every notification.

Without a journal (no systemd-python, or no journal socket) the entry goes
to the ``portwatch.alerts`` logger instead, at a level from the same
mapping, with the same fields as ``extra`` (so a journal log handler keeps
them). Sending to the journal never fails a delivery: an error falls back to
the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

from portwatch.alerts.notification import Notification, Reason, Status
from portwatch.alerts.sinks.base import sink_section
from portwatch.alerts.sinks.core import JournalSend, NamedSink, SinkContext
import portwatch.config.schema as s
from portwatch.config.schema import Key
from portwatch.config.types import BUILTIN_SINK, DEFAULT_ALERT_RULES, SinkConfig
from portwatch.model import Severity

__all__ = ["SHAPE", "JournalSink", "JournalSinkConfig", "build", "fields", "priority"]


@dataclass(frozen=True, kw_only=True)
class JournalSinkConfig(SinkConfig):
    """The ``journal`` sink: one structured journal entry per notification (the log without a journal)."""

    type: str = "journal"
    syslog_identifier: str = "portwatch"


SHAPE = sink_section(JournalSinkConfig, "journal", [
    Key("syslog_identifier", s.string(), "non-empty string", "the journal's `SYSLOG_IDENTIFIER`"),
])

_PRIORITY: Mapping[Severity, int] = {Severity.CRITICAL: 2, Severity.WARNING: 4, Severity.INFO: 6}
_RESOLVED_PRIORITY = 5
#: The notifications of the built-in rule the daemon's finding lines already are.
_LOGGED_BY_THE_DAEMON = frozenset({Reason.NEW, Reason.RESOLVED})
_LEVEL: Mapping[int, int] = {2: logging.CRITICAL, 4: logging.WARNING, 5: logging.INFO, 6: logging.INFO}


def priority(note: Notification) -> int:
    """The syslog priority of ``note``'s entry."""
    return _RESOLVED_PRIORITY if note.status is Status.RESOLVED else _PRIORITY[note.severity]


def fields(note: Notification, identifier: str) -> dict[str, str]:
    """The journal fields of ``note`` (see the module documentation), all strings."""
    out = {
        "MESSAGE": f"portwatch alert {note.status.value} [{note.severity.value}] {note.rule}: {note.summary}",
        "PRIORITY": str(priority(note)),
        "SYSLOG_IDENTIFIER": identifier,
        "PORTWATCH_ALERT_STATUS": note.status.value,
        "PORTWATCH_ALERT_REASON": note.reason.value,
        "PORTWATCH_ALERT_RULE": note.rule,
        "PORTWATCH_ALERT_KEY": note.alert_key,
        "PORTWATCH_ALERT_ID": note.id,
        "PORTWATCH_KIND": note.kind,
        "PORTWATCH_KEY": note.finding_key,
        "PORTWATCH_SEVERITY": note.severity.value,
    }
    if note.port is not None:
        out["PORTWATCH_PORT"] = str(note.port)
    if note.processes:
        first = note.processes[0]
        for field, name in (("PORTWATCH_PID", "pid"), ("PORTWATCH_PROCESS", "name"), ("PORTWATCH_UNIT", "unit")):
            if first.get(name) is not None:
                out[field] = str(first[name])
    if note.remediation:
        out["PORTWATCH_REMEDIATION"] = note.remediation
    return out


class JournalSink(NamedSink):
    """Writes notifications to the journal (or the log). See the module documentation."""

    def __init__(self, name: str, config: JournalSinkConfig, send: JournalSend | None,
                 logger: logging.Logger) -> None:
        super().__init__(name)
        self._builtin = name == BUILTIN_SINK and config == JournalSinkConfig()
        self._identifier = config.syslog_identifier
        self._send = send
        self._log = logger

    def logged_by_the_daemon(self, note: Notification) -> bool:
        """True when ``note`` is a finding event the daemon's own line already logged (see the module doc)."""
        return (self._builtin and note.rule == DEFAULT_ALERT_RULES[0].name
                and note.reason in _LOGGED_BY_THE_DAEMON)

    def send(self, note: Notification) -> None:
        """Write one entry (none for what the daemon logged already); never raises (a journal error falls back to the log)."""
        if self.logged_by_the_daemon(note):
            return
        entry = fields(note, self._identifier)
        if self._send is not None:
            try:
                self._send(entry)
                return
            except (OSError, ValueError) as exc:
                self._log.warning("journal sink %s: cannot write to the journal (%s); logging instead",
                                  self._name, exc)
        extra = {k: v for k, v in entry.items() if k not in ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER")}
        self._log.log(_LEVEL[priority(note)], "%s", entry["MESSAGE"], extra=extra)


def build(name: str, config: JournalSinkConfig, context: SinkContext) -> JournalSink:
    """The journal sink ``name``. Never raises."""
    return JournalSink(name, config, context.journal_send, context.logger)
