"""Logging set-up of the daemon: the journal under systemd, stderr otherwise; journal fields of findings.

Job: route the root logger (to the journal with ``SYSLOG_IDENTIFIER=portwatch``
when systemd started us and systemd-python imports, else stderr), raise the
daemon's own loggers to INFO, and spell the structured fields of a finding
event (``PORTWATCH_KIND``, ``PORTWATCH_KEY``, ``PORTWATCH_SEVERITY``,
``PORTWATCH_PORT``, ``PORTWATCH_PID``). May import the standard library and
:mod:`portwatch.model`; systemd-python only when present.
"""

from __future__ import annotations

import importlib
import logging
from typing import Mapping

from portwatch.model import Kind, Severity, printable

__all__ = ["SEVERITY_LEVEL", "SafeFormatter", "finding_fields", "setup_logging", "under_systemd"]

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


def under_systemd(env: Mapping[str, str]) -> bool:
    """True when systemd started this process with its output going to the journal."""
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


def setup_logging(env: Mapping[str, str]) -> str:
    """Route logs to the journal under systemd (when systemd-python imports), else keep stderr.

    The daemon's own events (``portwatch.daemon``, ``portwatch.findings``)
    are logged at INFO and above unless the root logger asks for errors only.
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
        logging.basicConfig(format="portwatch: %(levelname)s: %(message)s")
    for handler in root.handlers:
        if not isinstance(handler.formatter, SafeFormatter):
            handler.setFormatter(SafeFormatter(handler.formatter))
    if root.level <= logging.WARNING:
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
