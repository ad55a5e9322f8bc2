"""The errors of collection, and the one lower-case wording of an OSError's cause.

Job: :class:`CollectError` (something portwatch must read could not be read, or
held garbage), :class:`SourceReadError` (one read of a socket source failed)
and :func:`cause`, the short cause those messages end with. May import the
standard library only.
"""

from __future__ import annotations

import os

__all__ = ["CollectError", "SourceReadError", "cause"]


class CollectError(Exception):
    """Something portwatch must read could not be read, or held garbage.

    ``str()`` names the file (or function) and the cause, e.g.
    ``"/proc/sys/net/ipv4/ip_local_port_range: permission denied"``; it is
    meant to be shown to a person as is.
    """


class SourceReadError(CollectError, OSError):
    """One read of a socket source failed (e.g. psutil was denied access).

    Both a :class:`CollectError` (clear message) and an ``OSError``, which is
    what :class:`~portwatch.model.SocketSource` promises callers for a failed
    read.
    """


def cause(exc: OSError) -> str:
    """A short lower-case cause for an OSError, without the file name.

    Takes the error; returns e.g. ``permission denied``, ``no such file`` or
    the lower-cased ``strerror`` of its errno (unlike
    :func:`portwatch.model.text.os_error_text`, which keeps the C library's
    capitals). Never raises.
    """
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, NotADirectoryError):
        return "not a directory"
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__
