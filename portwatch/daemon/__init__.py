"""The daemon (``portwatch run``): the scan loop, signals, reload, systemd notification, /metrics.

The modules, each with its own job:

- :mod:`.loop`: :class:`Daemon` (first scan, bind, ``READY=1``, the loop
  waiting on the signal queue, reload at SIGHUP, stop at SIGTERM/SIGINT);
- :mod:`.messages`: what the queue carries besides signals (:class:`Rescan`,
  :class:`EventFindings`), the book that keeps event findings until they
  expire (:class:`FindingsBook`), the signal handlers and the drain;
- :mod:`.wiring`: the parts the daemon is given and their real defaults
  (the pass over every selected network namespace: ``default_pass``);
- :mod:`.record`: what a pass's result becomes (active findings, new state, log lines);
- :mod:`.records`: the state's data and its pure update rules (listeners per namespace);
- :mod:`.lock`: one daemon per state directory;
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
from portwatch.daemon.messages import EventFindings, ExpiringFindings, FindingsBook, Message, Rescan
from portwatch.daemon.notify import NotifySocket, make_notifier, watchdog_interval
from portwatch.output.status import status_line

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "Daemon",
    "EventFindings",
    "ExpiringFindings",
    "FindingsBook",
    "Message",
    "NotifySocket",
    "Rescan",
    "main",
    "make_notifier",
    "setup_logging",
    "status_line",
    "under_systemd",
    "watchdog_interval",
]
