"""One daemon per state directory: an exclusive ``flock`` on ``<state_directory>/.lock``.

Job: before the daemon has any side effect (loading and rewriting its state,
re-queuing saved notifications, binding its port), take the lock; a second
``portwatch run`` sharing the directory is refused, naming the pid that holds
it, and touches nothing. The lock lives as long as the open file, so a crashed
daemon never leaves a stale lock behind. May import the standard library and
:mod:`portwatch.model`.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Callable

from portwatch.model.text import os_error_text

__all__ = ["LOCK_FILE", "DirectoryLock", "LockHeld", "lock_moved_directory"]

LOCK_FILE = ".lock"


class LockHeld(Exception):
    """Another process holds the state directory's lock; ``pid`` is its pid when it wrote one."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        self.directory = directory
        self.pid = pid
        who = f"another portwatch (pid {pid})" if pid is not None else "another portwatch"
        super().__init__(f"state directory {directory} is in use by {who}; not starting a second daemon on it")


class DirectoryLock:
    """The held lock of one directory; :meth:`release` (or process exit) gives it up."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path) -> DirectoryLock:
        """Take the lock of ``directory`` (created, mode 0700, when missing) without waiting.

        Writes this process's pid into the lock file. Raises :class:`LockHeld`
        when another process holds it, ``OSError`` when the directory or the
        file cannot be made or opened (the caller decides whether that is fatal).
        """
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeld(directory, holder) from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the lock holds without the pid; only the message of a refused second daemon loses it
        return cls(directory, fd)

    def release(self) -> None:
        """Give the lock up (idempotent). The file stays: removing it would race a new holder."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_moved_directory(directory: Path | None, warn: Callable[[str], None]) -> DirectoryLock | None:
    """The lock of the state directory a reload moves to (None: it did not move, or cannot be locked).

    A directory that cannot be locked at all is reported through ``warn``.
    Raises ``ValueError`` (the reload is refused) when another daemon holds it.
    """
    if directory is None:
        return None
    try:
        return DirectoryLock.acquire(directory)
    except LockHeld as exc:
        raise ValueError(str(exc)) from None
    except OSError as exc:
        warn(f"cannot lock the state directory {directory} ({os_error_text(exc)})")
        return None


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote into the lock file, or None."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() else None
