"""The ``exec`` sink: run ``command`` once per notification, the JSON document on its stdin.

The command is a list (program and arguments), run without a shell, the
program by absolute path. It gets the notification's JSON document (the
webhook's, docs/alerting.md) on stdin and, for scripts that do not parse
JSON, ``PORTWATCH_ALERT_STATUS``, ``PORTWATCH_ALERT_SEVERITY``,
``PORTWATCH_ALERT_RULE``, ``PORTWATCH_ALERT_KIND``, ``PORTWATCH_ALERT_KEY``
and ``PORTWATCH_ALERT_ID`` in its environment (added to portwatch's own).
It runs in ``/`` in a new session, with stdout discarded and the last
:data:`STDERR_TAIL` bytes of stderr kept for the error message.

Exit status 0 within ``timeout`` is success. A non-zero status, death by a
signal, a program that cannot be started, and a timeout (the command and
everything in its session are killed) are temporary failures: the delivery
worker retries with backoff. A crashing or hanging command therefore costs
retries, never the scan loop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from portwatch.alerts.notification import Notification, document
from portwatch.alerts.sinks.base import sink_section, TIMEOUT_KEY
from portwatch.config.types import SinkConfig
from portwatch.alerts.sinks.core import NamedSink, SinkContext, SinkError
import portwatch.config.schema as s
from portwatch.config.schema import Key
from portwatch.model.text import os_error_text

if TYPE_CHECKING:
    import subprocess

__all__ = ["SHAPE", "ExecSink", "ExecSinkConfig", "build"]


@dataclass(frozen=True, kw_only=True)
class ExecSinkConfig(SinkConfig):
    """The ``exec`` sink: ``command`` (argv, no shell, absolute program path) run per notification.

    The notification's JSON document is its stdin; it must exit 0 within ``timeout``.
    """

    command: tuple[str, ...]
    type: str = "exec"
    timeout: float = 10.0


SHAPE = sink_section(ExecSinkConfig, "exec", [
    Key("command", s.command(), "list: absolute program path, then arguments", "the command run per"
        " notification, without a shell, with the JSON document on stdin", required=True,
        preflight="executable"),
    TIMEOUT_KEY,
])

#: The end of stderr kept for the error message (bytes).
STDERR_TAIL = 1000
#: How long to wait for a killed command to be reaped (seconds).
_REAP_TIMEOUT = 5.0


def _environment(note: Notification, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update({
        "PORTWATCH_ALERT_STATUS": note.status.value,
        "PORTWATCH_ALERT_SEVERITY": note.severity.value,
        "PORTWATCH_ALERT_RULE": note.rule,
        "PORTWATCH_ALERT_KIND": note.kind,
        "PORTWATCH_ALERT_KEY": note.alert_key,
        "PORTWATCH_ALERT_ID": note.id,
    })
    return env


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's session (its process group, as it is the session leader)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ExecSink(NamedSink):
    """Runs the command per notification."""

    def __init__(self, name: str, config: ExecSinkConfig, environ: Mapping[str, str]) -> None:
        super().__init__(name)
        self._command = list(config.command)
        self._timeout = config.timeout
        self._environ = environ

    def send(self, note: Notification) -> None:
        """Run the command for ``note``. Raises :class:`SinkError` (always temporary)."""
        # Imported here: the config loader imports this module for its SHAPE, on every CLI run.
        import subprocess
        import tempfile

        payload = json.dumps(document(note)).encode("utf-8")
        program = self._command[0]
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=err, cwd="/", env=_environment(note, self._environ),
                                        start_new_session=True, close_fds=True)
            except OSError as exc:
                raise SinkError(f"cannot run {program}: {os_error_text(exc)}") from None
            try:
                proc.communicate(payload, timeout=self._timeout)
            except subprocess.TimeoutExpired:
                _kill_session(proc)
                try:
                    proc.wait(_REAP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pass
                raise SinkError(f"{program} did not finish within {self._timeout:g}s (killed)") from None
            finally:
                if proc.returncode is None or proc.returncode != 0:
                    _kill_session(proc)  # leftovers of its session, if any
            if proc.returncode == 0:
                return
            err.seek(0, os.SEEK_END)
            err.seek(max(err.tell() - STDERR_TAIL, 0))
            tail = err.read().decode("utf-8", "replace").strip()
        how = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exited with status {proc.returncode}")
        raise SinkError(f"{program} {how}" + (f": {' '.join(tail.split())}" if tail else ""))


def build(name: str, config: ExecSinkConfig, context: SinkContext) -> ExecSink:
    """The exec sink ``name``. Never raises (the program is checked by the preflight)."""
    return ExecSink(name, config, os.environ)
