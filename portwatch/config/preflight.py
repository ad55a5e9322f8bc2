"""Preflight: the filesystem checks a configuration needs before it is used, apart from parsing.

Parsing (:func:`portwatch.config.parse_config`) is pure, so a server's
configuration validates on any machine. Before the daemon or ``check-config``
uses one, :func:`preflight` checks what the file names on *this* host: the
TLS, CA and token files are regular files this process can read (opened
without blocking, so a FIFO never hangs the check), and every ``exec``
sink's program is an executable file. Each problem keeps the key path style
of parse errors: ``web.tls_cert_file: cannot read '/etc/x.pem': no such file``.

Which keys need which check is written in the schema (``Key.preflight``);
this module holds the checks. May import: the standard library,
:mod:`portwatch.model` and :mod:`portwatch.config`'s types and schema.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Callable, Mapping

from portwatch.config.schema import Section, at
from portwatch.config.types import Config
from portwatch.model.text import os_error_text

__all__ = ["CHECKS", "check_executable", "check_readable", "preflight"]


def _reason(exc: OSError) -> str:
    """The short reason a check names: ``no such file``, ``permission denied``, or the OS's text."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return os_error_text(exc)


def check_readable(value: Any) -> None:
    """``value`` (a Path) is a regular file this process can open for reading now.

    Opens it non-blocking (a FIFO cannot hang the check) and checks the
    opened file's type. Returns None. Raises ``ValueError``: ``cannot read
    '<path>': no such file`` (or ``permission denied``, ``is a directory``,
    ``not a regular file``, the OS's reason).
    """
    path = Path(value)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except IsADirectoryError:
        raise ValueError(f"cannot read {str(path)!r}: is a directory") from None
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {_reason(exc)}") from None
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if stat.S_ISDIR(mode):
        raise ValueError(f"cannot read {str(path)!r}: is a directory")
    if not stat.S_ISREG(mode):
        raise ValueError(f"cannot read {str(path)!r}: not a regular file")


def check_executable(value: Any) -> None:
    """The program of command line ``value`` (its first item) is a regular file this process may execute.

    Returns None. Raises ``ValueError``: ``cannot execute '<program>': no
    such file`` or ``not executable by this user``.
    """
    program = str(value[0])
    try:
        mode = os.stat(program).st_mode
    except OSError as exc:
        raise ValueError(f"cannot execute {program!r}: {_reason(exc)}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"cannot execute {program!r}: not a regular file")
    if not os.access(program, os.X_OK):
        raise ValueError(f"cannot execute {program!r}: not executable by this user")


#: The checks a schema key may name (``Key.preflight``).
CHECKS: Mapping[str, Callable[[Any], None]] = {
    "readable": check_readable,
    "executable": check_executable,
}


def preflight(config: Config, shape: Section) -> list[str]:
    """Every filesystem problem of ``config`` (built by ``shape``), each as ``"key.path: problem"``.

    Takes the built Config and the schema it was built with; returns the
    problems in key order (empty when all is well). Never raises.
    """
    errors: list[str] = []
    for path, check, value in shape.preflight(config, ""):
        try:
            CHECKS[check](value)
        except ValueError as exc:
            errors.append(at(path, str(exc)))
    return errors
