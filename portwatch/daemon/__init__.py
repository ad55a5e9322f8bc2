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

The names below are imported on first use (:func:`portwatch.lazy.lazy_getattr`),
so that importing a light module of this package, :mod:`.logs` (what the
CLI's every command uses to set up stderr logging), does not import the
loop, the web server, the alerting engine and ``prometheus_client``.
``main`` is also the name of a submodule: import the function as
``from portwatch.daemon.main import main`` where that submodule may have
been imported already (the package's ``main`` attribute is then the module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from portwatch.lazy import lazy_getattr

if TYPE_CHECKING:
    from portwatch.daemon.logs import setup_logging as setup_logging
    from portwatch.daemon.logs import under_systemd as under_systemd
    from portwatch.daemon.loop import EXIT_CONFIG as EXIT_CONFIG
    from portwatch.daemon.loop import EXIT_FAILED as EXIT_FAILED
    from portwatch.daemon.loop import EXIT_OK as EXIT_OK
    from portwatch.daemon.loop import Daemon as Daemon
    from portwatch.daemon.main import main as main
    from portwatch.daemon.messages import EventFindings as EventFindings
    from portwatch.daemon.messages import ExpiringFindings as ExpiringFindings
    from portwatch.daemon.messages import FindingsBook as FindingsBook
    from portwatch.daemon.messages import Message as Message
    from portwatch.daemon.messages import Rescan as Rescan
    from portwatch.daemon.notify import NotifySocket as NotifySocket
    from portwatch.daemon.notify import make_notifier as make_notifier
    from portwatch.daemon.notify import watchdog_interval as watchdog_interval
    from portwatch.output.status import status_line as status_line

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

#: Names imported on first use: name -> the module that defines it.
_LAZY = {
    "EXIT_CONFIG": "portwatch.daemon.loop",
    "EXIT_FAILED": "portwatch.daemon.loop",
    "EXIT_OK": "portwatch.daemon.loop",
    "Daemon": "portwatch.daemon.loop",
    "NotifySocket": "portwatch.daemon.notify",
    "main": "portwatch.daemon.main",
    "EventFindings": "portwatch.daemon.messages",
    "ExpiringFindings": "portwatch.daemon.messages",
    "FindingsBook": "portwatch.daemon.messages",
    "Message": "portwatch.daemon.messages",
    "Rescan": "portwatch.daemon.messages",
    "make_notifier": "portwatch.daemon.notify",
    "setup_logging": "portwatch.daemon.logs",
    "status_line": "portwatch.output.status",
    "under_systemd": "portwatch.daemon.logs",
    "watchdog_interval": "portwatch.daemon.notify",
}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
