"""Small pure formatters every layer shares: ``host:port``, ISO-8601 UTC times, OS error reasons.

Standard library only, no I/O: the one place each of these spellings is
written, so a report, a log line, an alert and an HTTP error say the same
thing the same way.
"""

from __future__ import annotations

import datetime as _dt


def host_port(host: str, port: int | str) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:9731``).

    Takes an address or host name and a port (a number or ``*``); returns the
    text. Never raises.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def iso_time(ts: float, timespec: str = "seconds") -> str:
    """Unix time ``ts`` as ISO 8601 in UTC with a ``Z`` suffix (``2026-12-01T21:30:00Z``).

    ``timespec`` is :meth:`datetime.isoformat`'s (``seconds``,
    ``milliseconds``). Raises ``ValueError``/``OverflowError`` for a time
    ``datetime`` cannot represent.
    """
    when = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    return when.isoformat(timespec=timespec).replace("+00:00", "Z")


def os_error_text(exc: BaseException, with_filename: bool = False) -> str:
    """The reader-facing reason of an error: ``strerror`` (``Permission denied``) or its text.

    With ``with_filename``, an ``OSError``'s ``filename`` is put first
    (``/etc/x: Permission denied``). Never raises.
    """
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    filename = getattr(exc, "filename", None) if with_filename else None
    return f"{filename}: {reason}" if filename else str(reason)


def printable(text: str) -> str:
    """``text`` with every non-printable character as ``\\xNN`` (or ``\\uNNNN``); a newline too.

    Process names and command lines are chosen by whoever started the process:
    an escape sequence or a newline in one must neither reach the terminal of
    the person reading a report nor forge a second line in a log. Never raises.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   for c in text)
