"""The daemon (``portwatch run``): the scan loop, signals, reload, systemd notification, /metrics.

The modules, each with its own job:

- :mod:`.loop`: :class:`Daemon` (first scan, bind, ``READY=1``, the loop
  waiting on the signal queue, reload at SIGHUP, stop at SIGTERM/SIGINT);
- :mod:`.notify`: ``sd_notify`` and the watchdog interval;
- :mod:`.logs`: the logging set-up (journal or stderr) and the journal fields of finding events;
- :mod:`.state`: remembered listeners and the finding history in the state directory;
- :mod:`.main`: :func:`main`, what ``portwatch run`` calls.

The daemon sits on top: it may import every other package of portwatch except the CLI.
"""

from __future__ import annotations

from portwatch.daemon.logs import setup_logging, under_systemd
from portwatch.daemon.loop import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, Daemon
from portwatch.daemon.main import main
from portwatch.daemon.notify import NotifySocket, make_notifier, watchdog_interval
from portwatch.output.status import status_line

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "Daemon",
    "NotifySocket",
    "main",
    "make_notifier",
    "setup_logging",
    "status_line",
    "under_systemd",
    "watchdog_interval",
]
