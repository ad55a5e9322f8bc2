"""systemd notification: ``sd_notify`` messages and the watchdog interval.

Job: the function the daemon calls with ``KEY=value`` lines (``READY=1``,
``STATUS=``, ``WATCHDOG=1``, ...): ``systemd.daemon.notify`` when
systemd-python is installed, else a small ``NOTIFY_SOCKET`` datagram sender
(:class:`NotifySocket`); without ``NOTIFY_SOCKET`` nothing is sent. And the
watchdog interval ``WATCHDOG_USEC / 2`` (when ``WATCHDOG_PID`` is unset or ours).
May import the standard library and :mod:`portwatch.model`; systemd-python
only when present.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from typing import Callable, Mapping

from portwatch.model.text import os_error_text

__all__ = ["Notify", "NotifySocket", "make_notifier", "no_notify", "watchdog_interval"]

log = logging.getLogger("portwatch.daemon")

#: ``sd_notify``: takes ``KEY=value`` lines, never raises.
Notify = Callable[[str], None]


class NotifySocket:
    """A minimal ``sd_notify``: sends each message as one datagram to ``NOTIFY_SOCKET``.

    Takes the socket address as systemd gives it: a path, or ``@name`` for an
    abstract socket. Calling it never raises; a failure is logged once per
    distinct error.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._target = "\0" + address[1:] if address.startswith("@") else address
        self._last_error: str | None = None

    def __call__(self, message: str) -> None:
        """Send ``message`` (``KEY=value`` lines)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode("utf-8"), self._target)
        except OSError as exc:
            text = f"cannot notify systemd at {self.address}: {os_error_text(exc)}"
            if text != self._last_error:
                log.warning("%s", text)
                self._last_error = text
        else:
            self._last_error = None


def no_notify(message: str) -> None:
    """The notifier when not started by systemd: does nothing."""


def make_notifier(env: Mapping[str, str], use_systemd_python: bool = True) -> Notify:
    """The ``sd_notify`` function for this process.

    Takes the environment and whether to use systemd-python when importable.
    Returns a function taking ``KEY=value`` lines: a no-op without
    ``NOTIFY_SOCKET``, ``systemd.daemon.notify`` when importable (it reads
    ``NOTIFY_SOCKET`` from ``os.environ``, so this only uses it when ``env``
    is ``os.environ``), else a :class:`NotifySocket`. Never raises.
    """
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return no_notify
    if use_systemd_python and env is os.environ:
        try:
            sd_daemon = importlib.import_module("systemd.daemon")
        except ImportError:
            pass
        else:
            def notify(message: str) -> None:
                try:
                    sd_daemon.notify(message)
                except (OSError, ValueError) as exc:
                    log.warning("cannot notify systemd: %s", exc)
            return notify
    return NotifySocket(address)


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings (``WATCHDOG_USEC / 2``), or None when no watchdog is asked for us.

    ``WATCHDOG_PID``, when set, must be ``pid``. Malformed values mean no watchdog (logged).
    """
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    owner = env.get("WATCHDOG_PID", "")
    try:
        if owner and int(owner) != pid:
            return None
        value = int(usec)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r / WATCHDOG_PID=%r", usec, owner)
        return None
    return value / 2e6 if value > 0 else None
