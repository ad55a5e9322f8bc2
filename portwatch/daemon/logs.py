"""Logging set-up of the daemon: the journal under systemd, stderr otherwise; journal fields of findings.

Job: route the root logger (to the journal with ``SYSLOG_IDENTIFIER=portwatch``
when systemd started us and systemd-python imports, else stderr), raise the
daemon's own loggers to INFO, and spell the structured fields of a finding
event (``PORTWATCH_KIND``, ``PORTWATCH_KEY``, ``PORTWATCH_SEVERITY``,
``PORTWATCH_PORT``, ``PORTWATCH_PID``); the stderr line formats of
``--log.format`` (``logfmt`` and ``json``, as Prometheus exporters print them).
May import the standard library and :mod:`portwatch.model`; systemd-python
only when present.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Mapping

from portwatch.model import Kind, Severity, printable
from portwatch.model.text import iso_time

__all__ = ["LEGACY_FORMAT", "LOG_FORMATS", "LOG_LEVELS", "SEVERITY_LEVEL", "JsonFormatter", "LogfmtFormatter",
           "SafeFormatter", "configure_stderr", "finding_fields", "setup_logging", "under_systemd"]

#: The ``--log.format`` values.
LOG_FORMATS = ("logfmt", "json")
#: ``--log.level`` values and their level (``warning`` is the ``--log-level`` spelling of ``warn``).
LOG_LEVELS: Mapping[str, int] = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
                                 "warning": logging.WARNING, "error": logging.ERROR}
#: The stderr line without ``--log.format``.
LEGACY_FORMAT = "portwatch: %(levelname)s: %(message)s"
_LEVEL_NAME: Mapping[int, str] = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn",
                                  logging.ERROR: "error", logging.CRITICAL: "error"}
_FIELD_PREFIX = "PORTWATCH_"

#: The log level of a finding event of each severity.
SEVERITY_LEVEL: Mapping[Severity, int] = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.CRITICAL: logging.ERROR,
}


class SafeFormatter(logging.Formatter):
    """Wraps a formatter so that every message is one line with no terminal escape in it.

    Messages carry text other users choose (process names via PR_SET_NAME,
    command lines, unit names): their control characters (newline, ESC, ...)
    are written as ``\\xNN``, so a log line cannot forge another line or a
    colour. Only the message is escaped: a traceback (``exc_info``) is
    appended by ``inner`` as usual. Takes the formatter to wrap (default: the
    standard one).
    """

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args
        record.msg, record.args = printable(record.getMessage()), None
        try:
            return self.inner.format(record)
        finally:
            record.msg, record.args = saved


class _FieldsFormatter(SafeFormatter):
    """The fields of a structured line: ``ts``, ``level``, ``caller``, ``msg``, then the event's fields.

    A finding event's journal fields (``PORTWATCH_KIND`` ...) become ``kind``,
    ``key``, ``severity``, ``port``, ``pid``; a traceback becomes ``exc``.
    Every value is one line: control characters are ``\\xNN`` (see
    :class:`SafeFormatter`).
    """

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        """The ordered fields of ``record``, every value printable (no newline, no escape)."""
        out = {
            "ts": iso_time(record.created, "milliseconds"),
            "level": _LEVEL_NAME.get(record.levelno, record.levelname.lower()),
            "caller": f"{record.filename}:{record.lineno}",
            "msg": printable(record.getMessage()),
        }
        for name, value in vars(record).items():
            if name.startswith(_FIELD_PREFIX):
                out[name[len(_FIELD_PREFIX):].lower()] = printable(str(value))
        if record.exc_info:
            out["exc"] = printable(self.formatException(record.exc_info))
        return out


def _logfmt_value(value: str) -> str:
    """``value`` as logfmt writes it: bare when plain, else quoted with ``\\`` and ``"`` escaped."""
    if value and all(c.isprintable() and c not in ' ="\\' for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class LogfmtFormatter(_FieldsFormatter):
    """``ts=2026-12-01T23:30:00.123Z level=info caller=loop.py:397 msg="..." kind=...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in self.fields(record).items())


class JsonFormatter(_FieldsFormatter):
    """One JSON object per line: ``ts``, ``level``, ``caller``, ``msg`` and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        import json  # here: only --log.format json needs it (every command imports this module)

        return json.dumps(self.fields(record), ensure_ascii=True)


def configure_stderr(level: int, log_format: str | None) -> None:
    """Log to stderr at ``level``: ``logfmt``/``json`` lines, or the legacy ``portwatch: LEVEL: msg`` (None).

    Replaces the root logger's handlers. Raises ``ValueError`` for another format.
    """
    if log_format is None:
        formatter: logging.Formatter = SafeFormatter(logging.Formatter(LEGACY_FORMAT))
    elif log_format == "logfmt":
        formatter = LogfmtFormatter()
    elif log_format == "json":
        formatter = JsonFormatter()
    else:
        raise ValueError(f"unknown log format {log_format!r}")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)


def under_systemd(env: Mapping[str, str]) -> bool:
    """True when systemd started this process with its output going to the journal."""
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


def setup_logging(env: Mapping[str, str], *, raise_own: bool = True) -> str:
    """Route logs to the journal under systemd (when systemd-python imports), else keep stderr.

    The daemon's own events (``portwatch.daemon``, ``portwatch.findings``)
    are logged at INFO and above unless the root logger asks for errors only
    or ``raise_own`` is false (``--log.level`` given: the root's level is
    then every logger's).
    Returns ``"journal"`` or ``"stderr"``.
    """
    root = logging.getLogger()
    where = "stderr"
    if under_systemd(env):
        try:
            journal = importlib.import_module("systemd.journal")
        except ImportError:
            pass
        else:
            handler: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER="portwatch")
            handler.setFormatter(logging.Formatter("%(message)s"))
            for old in list(root.handlers):
                root.removeHandler(old)
            root.addHandler(handler)
            where = "journal"
    if not root.handlers:
        logging.basicConfig(format=LEGACY_FORMAT)
    for handler in root.handlers:
        if not isinstance(handler.formatter, SafeFormatter):
            handler.setFormatter(SafeFormatter(handler.formatter))
    if raise_own and root.level <= logging.WARNING:
        for name in ("portwatch.daemon", "portwatch.findings", "portwatch.state", "portwatch.alerts"):
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
    return where


def finding_fields(kind: Kind, key: str, severity: Severity, port: int | None,
                    pid: int | None) -> dict[str, str]:
    """The journal fields of a finding event (port and pid only when known)."""
    fields = {"PORTWATCH_KIND": kind.value, "PORTWATCH_KEY": key, "PORTWATCH_SEVERITY": severity.value}
    if port is not None:
        fields["PORTWATCH_PORT"] = str(port)
    if pid is not None:
        fields["PORTWATCH_PID"] = str(pid)
    return fields
