"""The alerting state in the state directory: firing alerts and undelivered notifications.

``<state_directory>/alerts.json`` (:data:`ALERTS_FILE`) holds, as JSON with a
``version``:

- ``alerts``: every *firing* alert (rule, finding key, severity, when it
  fired, the sinks it was sent to and when, the latest finding), so that a
  restart neither sends them again nor forgets to resolve them. Pending
  alerts (waiting for ``for``) are not kept: their countdown restarts.
- ``pending``: the notifications not delivered yet, per sink, oldest first,
  with their failed attempts; the next start queues them again before
  anything new.

The engine writes the file after every scan that changed the alerts or made
notifications (from a background thread, :class:`StateWriter`: the scan
loop never waits for the disk) and once more, synchronously, when it stops.
Writes are atomic (temporary file, ``fsync``, ``rename``). A missing file
is a first start; an unreadable or corrupt one is logged and replaced, never
fatal; a malformed entry is skipped and logged. A directory that cannot be
written is logged once per distinct error and alerting goes on in memory.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from portwatch import __version__
from portwatch.alerts.notification import Notification, number_field, number_value, text_field
from portwatch.alerts.rules import AlertState
from portwatch.jsonfile import parse_entries, problems_text, read_document, write_atomic
from portwatch.model import Severity
from portwatch.model.text import os_error_text
from portwatch.model.values import brief

__all__ = ["ALERTS_FILE", "STORE_VERSION", "Saved", "StateWriter", "from_document", "load", "to_document",
           "write_atomic"]

log = logging.getLogger("portwatch.alerts")

ALERTS_FILE = "alerts.json"
STORE_VERSION = 1
#: A file larger than this is not read (treated as corrupt).
MAX_FILE_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Saved:
    """What the file holds: firing alerts by key, and undelivered notifications with their failed attempts."""

    alerts: Mapping[str, AlertState] = field(default_factory=dict)
    pending: Sequence[tuple[Notification, int]] = ()


def _alert_to_dict(a: AlertState) -> dict[str, Any]:
    return {"key": a.key, "rule": a.rule, "finding_key": a.finding_key, "severity": a.severity.value,
            "since": a.since, "fired_at": a.fired_at, "send_resolved": a.send_resolved,
            "notified": dict(sorted(a.notified.items())), "finding": dict(a.finding)}


def _refuse_non_finite(entry: object) -> None:
    """Raise ``ValueError`` when ``entry`` holds NaN or an infinity anywhere (the writer refuses them).

    Python's JSON reader accepts ``NaN`` and ``Infinity``; kept, such an entry
    would make every later save fail. Walks without recursion.
    """
    todo = [entry]
    while todo:
        value = todo.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("holds a number that is not finite (NaN or Infinity)")
        if isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)


def _alert_from_dict(data: object) -> AlertState:
    if not isinstance(data, dict):
        raise ValueError("not an object")
    texts = {name: text_field(data, name) for name in ("key", "rule", "finding_key")}
    notified_raw = data.get("notified")
    finding = data.get("finding")
    if not isinstance(notified_raw, dict) or not isinstance(finding, dict):
        raise ValueError("notified or finding is not an object")
    notified = {str(k): number_value(v, f"notified.{k}") for k, v in notified_raw.items()}
    send_resolved = data.get("send_resolved")
    if not isinstance(send_resolved, bool):
        raise ValueError("send_resolved is not a bool")
    return AlertState(texts["key"], texts["rule"], texts["finding_key"], Severity(data.get("severity")),
                      since=number_field(data, "since"), fired_at=number_field(data, "fired_at"),
                      finding=finding, send_resolved=send_resolved, notified=notified)


def to_document(alerts: Mapping[str, AlertState], pending: Sequence[tuple[Notification, int]],
                now: float) -> dict[str, Any]:
    """The JSON-ready document: the firing alerts of ``alerts`` (sorted) and ``pending`` in order."""
    return {
        "version": STORE_VERSION,
        "written_by": f"portwatch {__version__}",
        "saved_at": now,
        "alerts": [_alert_to_dict(a) for k, a in sorted(alerts.items()) if a.fired_at is not None],
        "pending": [{"attempts": attempts, "notification": note.to_dict()} for note, attempts in pending],
    }


def _checked_alert(entry: object) -> AlertState:
    """A firing alert from its entry, refusing non-finite numbers. Raises ``ValueError`` saying what is wrong."""
    _refuse_non_finite(entry)
    return _alert_from_dict(entry)


def _pending_from_dict(entry: object) -> tuple[Notification, int]:
    """A queued notification and its delivery attempts. Raises ``ValueError`` saying what is wrong."""
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    _refuse_non_finite(entry)
    attempts = entry.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise ValueError("attempts is not a count")
    return Notification.from_dict(entry.get("notification")), attempts


def from_document(doc: object) -> tuple[Saved, list[str]]:
    """The state in ``doc`` and the problems of skipped entries. Raises ``ValueError`` when unusable as a whole."""
    if not isinstance(doc, dict):
        raise ValueError("the top level is not a JSON object")
    if doc.get("version") != STORE_VERSION:
        raise ValueError(f"unsupported version {brief(doc.get('version'))} (this portwatch reads {STORE_VERSION})")
    raw_alerts, raw_pending = doc.get("alerts"), doc.get("pending")
    if not isinstance(raw_alerts, list) or not isinstance(raw_pending, list):
        raise ValueError("'alerts' and 'pending' must be lists")
    problems: list[str] = []
    alerts = {a.key: a for a in parse_entries(raw_alerts, "alerts", _checked_alert, problems)}
    pending = parse_entries(raw_pending, "pending", _pending_from_dict, problems)
    return Saved(alerts, pending), problems


def load(path: Path, warn: Callable[[str], None] = log.warning,
         info: Callable[[str], None] = log.info) -> Saved:
    """The state in the file at ``path``; empty when missing (``info``) or unusable (``warn``). Never raises."""
    try:
        doc = read_document(path, MAX_FILE_SIZE)
    except FileNotFoundError:
        info(f"no alert state {path} yet: no firing alerts, nothing pending")
        return Saved()
    except OSError as exc:
        warn(f"cannot read alert state {path}: {os_error_text(exc)}; starting with no firing alerts")
        return Saved()
    except ValueError as exc:
        warn(f"alert state {path} is corrupt ({exc}); starting with no firing alerts, it will be replaced")
        return Saved()
    try:
        saved, problems = from_document(doc)
    except ValueError as exc:
        warn(f"alert state {path} is corrupt ({exc}); starting with no firing alerts, it will be replaced")
        return Saved()
    if problems:
        warn(f"alert state {path}: skipped {len(problems)} malformed entries ({problems_text(problems)})")
    return saved


class StateWriter:
    """Writes the latest submitted document in a background thread; the submitter never waits.

    Only the newest document submitted matters: one submitted while a write
    is running replaces any other waiting one. Write errors go to ``warn``
    once per distinct error (and ``info`` when writing works again).
    """

    def __init__(self, warn: Callable[[str], None] = log.warning,
                 info: Callable[[str], None] = log.info) -> None:
        self._warn = warn
        self._info = info
        self._cond = threading.Condition()
        self._latest: tuple[Path, Mapping[str, Any]] | None = None
        self._stopped = False
        self._last_error: str | None = None
        self._io = threading.Lock()  # one write at a time, so the newest document wins
        self._thread = threading.Thread(target=self._run, name="portwatch-alerts-state", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def submit(self, path: Path, document: Mapping[str, Any]) -> None:
        """Have ``document`` written to ``path`` soon. Never blocks on I/O."""
        with self._cond:
            self._latest = (path, document)
            self._cond.notify_all()

    def stop(self, timeout: float) -> None:
        """Finish the write in progress (up to ``timeout`` s) and end the thread; waiting documents are not written."""
        with self._cond:
            self._stopped = True
            self._latest = None
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(max(timeout, 0.0))

    def write_now(self, path: Path, document: Mapping[str, Any]) -> bool:
        """Write ``document`` synchronously (used when stopping). Returns False when it failed (reported)."""
        return self._write(path, document)

    def _write(self, path: Path, document: Mapping[str, Any]) -> bool:
        try:
            with self._io:
                write_atomic(path, document)
        except OSError as exc:
            message = f"cannot write alert state {path}: {os_error_text(exc)}"
            if message != self._last_error:
                self._warn(message + "; alerting goes on in memory (firing alerts may be sent again"
                                     " after a restart)")
            self._last_error = message
            return False
        if self._last_error is not None:
            self._info(f"alert state {path} written again")
            self._last_error = None
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._latest is None and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                assert self._latest is not None
                path, document = self._latest
                self._latest = None
            self._write(path, document)
