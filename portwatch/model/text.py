"""Small pure formatters every layer shares: ``host:port``, ISO-8601 UTC times, OS error reasons.

Standard library only, no I/O: the one place each of these spellings is
written, so a report, a log line, an alert and an HTTP error say the same
thing the same way.
"""

from __future__ import annotations


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
    if timespec == "seconds" and 0 <= ts < _YEAR_10000:
        # What datetime gives, without importing it: the fraction rounded to microseconds
        # (half to even, as datetime.fromtimestamp does) may carry into the seconds.
        whole = int(ts)
        if round((ts - whole) * 1e6) >= 1_000_000:
            whole += 1
        days, seconds = divmod(whole, 86400)
        year, month, day = _civil(days)
        hour, minute = seconds // 3600, seconds // 60 % 60
        return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{seconds % 60:02d}Z"
    import datetime as _dt

    when = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    return when.isoformat(timespec=timespec).replace("+00:00", "Z")


#: The first Unix time of the year 10000 (from there on datetime raises).
_YEAR_10000 = 253402300800


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of the proleptic Gregorian calendar ``days`` after 1970-01-01
    (H. Hinnant's ``civil_from_days``: 400-year eras of 146,097 days, years from March)."""
    era, day_of_era = divmod(days + 719468, 146097)
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    return year_of_era + era * 400 + (month <= 2), month, day


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
