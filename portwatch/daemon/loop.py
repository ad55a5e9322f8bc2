"""The daemon's loop (:class:`Daemon`): scans on a timer, signals, reload, stop.

Start-up (:func:`main`): load the configuration (invalid: every error on
stderr, exit 2), prepare the collector, the metrics registry, the HTTP server
and the state directory, run the first scan, bind the HTTP server (cannot
bind: exit 1), and only then tell systemd ``READY=1``: when systemd considers
portwatch started, ``/metrics`` answers with the figures of a complete scan.

The loop follows gunicorn's arbiter: signal handlers only put the signal
number on a queue (:class:`queue.SimpleQueue`, whose ``put`` is safe to call
from a signal handler); the loop waits on that queue with the time to the
next scan (or watchdog ping) as timeout, so a signal is handled at once and a
scan never runs inside a signal handler. Other threads put messages on the
same queue (:mod:`portwatch.daemon.messages`): a :class:`Rescan` runs a pass
at once, :class:`EventFindings` join the active findings through the
``book`` until it lets them expire (the loop wakes when one goes quiet);
they are coalesced like signals.
Side threads (``side_threads``, :class:`~portwatch.daemon.wiring.SideThread`:
the failure capture) start before the first pass, get every pass's result
and every new configuration, and stop when the daemon ends, however it ends.

A scan is a pass over every network namespace ``namespaces`` selects (the
``pass_`` parameter, :func:`~portwatch.daemon.wiring.default_pass`), found
again every pass; each pass updates the metrics (per namespace, ``netns``
label), the state file (remembered listeners per namespace), systemd's
``STATUS=`` line ("42 sockets, 1 critical, 2 warning; last scan 12 ms") and
pings the watchdog; new and resolved findings are logged
(:mod:`portwatch.daemon.record`), and a pass's notes (e.g. that only the own
namespace can be entered) once while they last, and shown on the index page.
A scan that raises is logged and counted; the previous figures stay and the
loop goes on.

After every scan the findings the ignore rules kept go to the alerting
engine (:class:`portwatch.alerts.Alerting`, configured by ``alerts``): it
only queues notifications, each sink delivers from its own queue and
thread, so a slow or dead sink never delays a scan. At SIGTERM the sinks get
a few seconds to deliver; what is still queued is saved in the state
directory and delivered after the next start.

Signals:

``SIGHUP``
    ``RELOADING=1`` (with ``MONOTONIC_USEC``), then the configuration file is
    read again. Invalid (or a ``web`` section the server cannot apply): every
    error is logged, the old configuration stays,
    ``portwatch_config_last_reload_successful`` goes to 0. Valid: it applies
    from the next scan (interval, source, thresholds, services, ignores,
    top-K, state directory) and at once to the HTTP server (users, TLS,
    listen address); the reload metric goes to 1 with its timestamp. Then
    ``READY=1``. A changed ``namespaces`` section applies from the next
    pass. Signals that arrive together are handled as one: however
    many SIGHUPs came since the loop last looked, it reloads once, and a due
    scan runs before the next look, so a storm of SIGHUPs neither multiplies
    reloads nor starves scans.
``SIGTERM``, ``SIGINT``
    ``STOPPING=1``, stop the HTTP server, save the state, exit 0. A SIGTERM
    queued behind SIGHUPs is acted on first: a stop never waits for reloads.

systemd: ``sd_notify`` and the watchdog interval are :mod:`.notify`'s
(``WATCHDOG=1`` after every scan and, while idle, at least every
``WATCHDOG_USEC/2``); the journal and its ``PORTWATCH_*`` fields :mod:`.logs`'s.

Exit codes: 0 stopped by SIGTERM/SIGINT; 1 cannot start (the HTTP address
cannot be bound); 2 invalid configuration (or ``--listen-address``).

:class:`Daemon` holds the loop; every clock, the notifier, the event queue,
the scan function and the factories of the collector and the HTTP server are
parameters, so tests drive it in-process without monkeypatching. This module
may import everything below the daemon (model, config, collect, scan, detect,
output, alerts, web) and the other modules of :mod:`portwatch.daemon`.
"""

from __future__ import annotations

import logging
import queue
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector

from portwatch import __version__
from portwatch.collect import OWN_NAMESPACE_NOTE, Collector
from portwatch.config import Config, ConfigError, WebConfig, load_config
from portwatch.daemon.lock import DirectoryLock, LockHeld, lock_moved_directory
from portwatch.daemon.wiring import (
    ALERTS_STOP_TIMEOUT, AlertingFactory, PassFunction, ScanFunction, Server, ServerFactory, SideThreadFactory,
    SideThreads, DEFAULT_SIDE_THREADS, default_alerting, default_collector, default_pass, default_server,
    single_pass
)
from portwatch.daemon.messages import (
    HANDLED_SIGNALS, MAX_EVENTS_AT_ONCE, EventFindings, ExpiringFindings, FindingsBook, Message, Rescan,
    book_due, install_signal_handlers, take_queued
)
from portwatch.daemon.notify import Notify, no_notify
from portwatch.daemon.record import (
    active_findings, log_changes, log_new_notes, log_scan_failure, merge_findings, pass_state
)
from portwatch.daemon.state import REMEMBER_AFTER, State, StateStore, remembered_by_namespace, update_findings
from portwatch.model import Finding
from portwatch.model.results import NamespacesResult
from portwatch.model.text import host_port, os_error_text
from portwatch.output.metrics import PortwatchMetrics
from portwatch.output.status import failed_status_line, findings_html, one_line, pass_status_line
from portwatch.web import WebError

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "HANDLED_SIGNALS",
    "MAX_EVENTS_AT_ONCE",
    "Daemon",
    "Server",
    "install_signal_handlers",
]

log = logging.getLogger("portwatch.daemon")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


class Daemon:
    """The scan loop. Build it, then call :meth:`run` (which returns the exit code).

    Takes the loaded configuration and where it came from (for SIGHUP), the
    ``--listen-address`` override, and every dependency:

    - ``events``: the queue signal numbers and messages arrive on (the signal
      handlers, other threads, or a test, put them; see :mod:`.messages`);
    - ``notify``: ``sd_notify`` (see :func:`make_notifier`);
    - ``monotonic``: seconds for scheduling (and ``MONOTONIC_USEC``); ``wall``: Unix time for timestamps;
    - ``watchdog``: seconds between watchdog pings, or None;
    - ``load``: reads a configuration file (raises ConfigError);
    - ``collector_factory``, ``pass_``, ``server_factory``: the collector for a
      configuration, one pass, and the HTTP server; ``scan`` (one scan of the
      own namespace, given the host's remembered ports) replaces ``pass_``
      when given;
    - ``book``: keeps the findings of :class:`EventFindings` until they
      expire (default :class:`ExpiringFindings` over ``events.quiet_period``);
    - ``store``: the state file (None: built from ``config.state_directory``);
    - ``registry``: where the metrics are registered (None: a new registry
      with the process collector);
    - ``side_threads``: the factories of the threads run beside the loop.

    Raises :class:`WebError` or ``ValueError`` when the HTTP server or the
    collector cannot be built from ``config``.
    """

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        listen_override: str | None = None,
        events: queue.SimpleQueue[Message] | None = None,
        notify: Notify = no_notify,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        watchdog: float | None = None,
        load: Callable[[Path | None], Config] = load_config,
        collector_factory: Callable[[Config], Collector] = default_collector,
        scan: ScanFunction | None = None,
        pass_: PassFunction = default_pass,
        book: FindingsBook | None = None,
        server_factory: ServerFactory = default_server,
        store: StateStore | None = None,
        registry: CollectorRegistry | None = None,
        remember_after: float = REMEMBER_AFTER,
        alerting_factory: AlertingFactory | None = None,
        side_threads: Sequence[SideThreadFactory] = DEFAULT_SIDE_THREADS,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.listen_override = listen_override
        self.events: queue.SimpleQueue[Message] = events if events is not None else queue.SimpleQueue()
        self._notify = notify
        self._monotonic = monotonic
        self._wall = wall
        self._watchdog = watchdog
        self._load = load
        self._collector_factory = collector_factory
        self._pass = single_pass(scan) if scan is not None else pass_
        self.book: FindingsBook = book if book is not None else ExpiringFindings(config.events.quiet_period)
        self.remember_after = remember_after
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
        self.registry = registry
        self.metrics = PortwatchMetrics(registry, top_destinations=config.metrics.top_destinations,
                                        max_series=config.namespaces.max_series)
        self.metrics.record_reload(True, wall())
        self.collector = collector_factory(config)
        self.store = store if store is not None else StateStore(config.state_directory,
                                                                remember_after=remember_after)
        self.state: State = State()
        self.server = server_factory(self._web(config), registry, self.ready, self.healthy, self.index_html)
        # Alerting keeps its own state file in the same directory as ours.
        self.alerting = (alerting_factory or default_alerting)(config, self.store.directory, registry)
        self.side = SideThreads(side_threads, config, self.events.put, registry)
        self.started = False
        self._lock: DirectoryLock | None = None
        self.scans = 0
        # what the HTTP threads read: replaced, never mutated
        self._status = "starting: first scan"
        self._active: Mapping[str, Finding] = {}
        self._pass_active: tuple[Finding, ...] = ()  # the latest pass's, without event findings
        self._notes: tuple[str, ...] = ()
        self._last_scan_end: float | None = None
        self._last_good: float | None = None
        self._last_error: str | None = None
        self._next_scan = monotonic()
        self._next_ping = monotonic()

    # -- what the HTTP server asks

    def ready(self) -> bool:
        """True once the first scan has run and the server is bound (``/-/ready``)."""
        return self.started

    def healthy(self) -> bool:
        """True while the loop keeps scanning: the latest scan ended less than 3 intervals (at least 60 s) ago."""
        last = self._last_scan_end
        if last is None:
            return True
        return self._monotonic() - last <= max(3 * self.config.interval, 60.0)

    def index_html(self) -> str:
        """The index page's extra HTML: the status line and the active findings, escaped."""
        return findings_html(self._status, list(self._active.values()), self._notes)

    # -- the loop

    def run(self) -> int:
        """Lock the state directory, start (first scan, bind, READY), loop until SIGTERM/SIGINT.

        Returns the exit code: :data:`EXIT_FAILED` at once, with nothing read or
        written, when another daemon holds the state directory. A state
        directory that cannot be locked at all (unwritable) is logged and the
        daemon goes on, as it does when it cannot save its state.
        """
        try:
            self._lock = DirectoryLock.acquire(self.config.state_directory)
        except LockHeld as exc:
            log.error("cannot start: %s", exc)
            self._notify(f"STATUS=cannot start: {one_line(str(exc))}")
            return EXIT_FAILED
        except OSError as exc:
            log.warning("cannot lock the state directory %s (%s); a second daemon sharing it would not be "
                        "refused", self.config.state_directory, os_error_text(exc))
        try:
            return self._run()
        finally:
            self.side.stop()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _run(self) -> int:
        self.state = self.store.load()
        self.alerting.start()
        self.side.start()
        self.scan_once()
        try:
            self.server.start()
        except WebError as exc:
            log.error("cannot start: %s", exc)
            self._notify(f"STATUS=cannot start: {one_line(str(exc))}")
            return EXIT_FAILED
        host, port = self.server.address
        self.started = True
        log.info("portwatch %s started: scanning every %gs, metrics on %s", __version__,
                 self.config.interval, host_port(host, port))
        self._notify(f"READY=1\nSTATUS={self._status}")
        self._ping()
        while True:
            events = self._wait()
            stop = next((e for e in events if e in (signal.SIGTERM, signal.SIGINT)), None)
            if stop is not None:
                return self.shutdown(stop)  # never behind queued reloads
            if signal.SIGHUP in events:
                self.reload()  # however many arrived since the last look: one reload
            self._take_messages(events)
            now = self._monotonic()
            if now >= self._next_scan:
                self.scan_once()  # a storm of signals never starves the scans
            elif self._watchdog is not None and now >= self._next_ping:
                self._ping()

    def _take_messages(self, events: Sequence[Message]) -> None:
        """Act on the messages of one look: event findings recorded at once; any Rescan makes a pass due now."""
        found = [f for e in events if isinstance(e, EventFindings) for f in e.findings]
        due = book_due(self.book, self._wall())
        if found or (due is not None and due <= self._wall()):  # new ones, or some went quiet
            try:
                self.record_events(found)
            except Exception:
                log.exception("error while recording event findings (the loop goes on)")
        reasons = list(dict.fromkeys(e.reason for e in events if isinstance(e, Rescan)))
        if reasons:
            log.debug("rescan now: %s", "; ".join(reasons))
            self._next_scan = min(self._next_scan, self._monotonic())
        for event in events:
            if not isinstance(event, (Rescan, EventFindings)) and event not in HANDLED_SIGNALS:
                log.debug("ignoring event %r", event)

    def _wait(self) -> list[Message]:
        """Every message queued until the next scan or watchdog ping is due (:func:`take_queued`)."""
        deadline = self._next_scan
        if self._watchdog is not None:
            deadline = min(deadline, self._next_ping)
        due = book_due(self.book, self._wall())
        if due is not None:
            deadline = min(deadline, self._monotonic() + due - self._wall())
        return take_queued(self.events, max(deadline - self._monotonic(), 0.0))

    def _ping(self) -> None:
        """Send ``WATCHDOG=1`` when a watchdog is configured; schedule the next."""
        if self._watchdog is None:
            return
        self._notify("WATCHDOG=1")
        self._next_ping = self._monotonic() + self._watchdog

    def scan_once(self) -> None:
        """One scan and everything that follows it. Never raises (a failure is logged and counted)."""
        started = self._monotonic()
        self._next_scan = started + self.config.interval
        try:
            remembered = remembered_by_namespace(self.state, self.remember_after)
            result = self._pass(self.config, self.collector, remembered)
        except Exception as exc:  # a failed scan never stops the loop
            self._scan_failed(exc, self._monotonic() - started)
        else:
            try:
                self._scan_succeeded(result)
            except Exception:
                log.exception("error while recording a scan (the loop goes on)")
        finally:
            end = self._monotonic()
            self._last_scan_end = end
            self.scans += 1
            if self._next_scan <= end:
                self._next_scan = end  # late: scan again right away, but never in a burst
            if self.started:
                self._ping_with_status()

    def _ping_with_status(self) -> None:
        message = f"STATUS={self._status}"
        if self._watchdog is not None:
            message += "\nWATCHDOG=1"
            self._next_ping = self._monotonic() + self._watchdog
        self._notify(message)

    def _scan_failed(self, exc: Exception, duration: float) -> None:
        self._last_error = reason = log_scan_failure(exc, self._last_error)
        self.metrics.record_scan_error(duration, self._wall())
        ago = None if self._last_good is None else max(self._wall() - self._last_good, 0.0)
        self._status = failed_status_line(reason, ago)

    def _scan_succeeded(self, result: NamespacesResult) -> None:
        now = self._wall()
        if self._last_error is not None:
            log.info("scans work again")
            self._last_error = None
        previous = self._active
        self._pass_active = active_findings(result, previous)
        active = merge_findings(self._pass_active, self.book.current(now))
        self.state, upd = pass_state(self.state, result, active, now, self.remember_after)
        self.metrics.record_pass(result, upd.new, now)
        self._active = {f.key: f for f in active}
        self._last_good = now
        self._status = pass_status_line(result, own_only=OWN_NAMESPACE_NOTE in result.notes)
        log_changes(upd, previous)
        if self.scans == 0 and len(active) > len(upd.new):
            log.info("%d finding(s) still active from before the restart", len(active) - len(upd.new))
        log_new_notes(result.notes, self._notes)
        self._notes = result.notes
        self.side.passed(result)
        self._save_and_alert(active, now)

    def record_events(self, found: Sequence[Finding]) -> None:
        """Findings found between passes: into the book, then active with the latest pass's (logged, saved, alerted)."""
        now = self._wall()
        self.book.add(found, now)
        previous = self._active
        active = merge_findings(self._pass_active, self.book.current(now))
        upd = update_findings(self.state.findings, active, now)
        self.state = State(self.state.listeners, upd.records, self.state.namespaces)
        self.metrics.record_detected(upd.new)
        self._active = {f.key: f for f in active}
        log_changes(upd, previous)
        self._save_and_alert(active, now)

    def _save_and_alert(self, active: Sequence[Finding], now: float) -> None:
        self.store.save(self.state, now)
        try:
            self.alerting.process(list(active), now)  # queues only: never waits on a sink
        except Exception:
            log.exception("alerting failed on this scan's findings; the scan loop goes on")

    # -- reload and stop

    def _web(self, config: Config) -> WebConfig:
        """``config.web`` with the ``--listen-address`` override applied."""
        if self.listen_override is None:
            return config.web
        return replace(config.web, listen_address=self.listen_override)

    def reload(self) -> bool:
        """Re-read the configuration (SIGHUP). Returns True when the new one applies. Never raises."""
        usec = int(self._monotonic() * 1_000_000)
        self._notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading configuration")
        where = self.config_path or "built-in defaults"
        ok = False
        try:
            new = self._load(self.config_path)
            collector = self.collector if new.source == self.config.source else self._collector_factory(new)
            moved = new.state_directory if new.state_directory != self.config.state_directory else None
            new_lock = lock_moved_directory(moved, log.warning)
            # Alerting first: it changes nothing when a sink cannot be built. Should the
            # web settings then fail, alerting goes back to the old configuration.
            self.alerting.reload(new.alerts, moved)
            try:
                self.server.update_config(self._web(new))
            except Exception:
                self.alerting.reload(self.config.alerts,
                                     self.store.directory if moved is not None else None)
                if new_lock is not None:
                    new_lock.release()
                raise
        except ConfigError as exc:
            log.error("reload: %s is invalid; keeping the previous configuration:", where)
            for error in exc.errors:
                log.error("  %s: %s", exc.source, error)
        except (WebError, ValueError) as exc:
            log.error("reload: %s cannot be applied (%s); keeping the previous configuration", where, exc)
        except Exception:
            log.exception("reload: unexpected error; keeping the previous configuration")
        else:
            ok = True
            old = self.config
            self.config = new
            self.collector = collector
            self.metrics.set_top_destinations(new.metrics.top_destinations)
            self.metrics.set_max_series(new.namespaces.max_series)
            if isinstance(self.book, ExpiringFindings):
                self.book.window = new.events.quiet_period
            self.side.reconfigure(new)
            if new.state_directory != old.state_directory:
                if new_lock is not None:
                    if self._lock is not None:
                        self._lock.release()
                    self._lock = new_lock
                self.store = StateStore(new.state_directory, remember_after=self.remember_after)
                log.info("state directory is now %s", new.state_directory)
            if new.interval != old.interval:
                # apply from the next scan: the next one is due one new interval after the last
                last = self._last_scan_end if self._last_scan_end is not None else self._monotonic()
                self._next_scan = last + new.interval
            log.info("reloaded configuration from %s", where)
        self.metrics.record_reload(ok, self._wall())
        self._notify(f"READY=1\nSTATUS={self._status}")
        return ok

    def shutdown(self, signum: int) -> int:
        """Stop (SIGTERM/SIGINT): ``STOPPING=1``, stop the server, save the state. Returns EXIT_OK."""
        log.info("stopping (%s)", signal.Signals(signum).name)
        self._notify("STOPPING=1\nSTATUS=stopping")
        try:
            self.server.stop()
        except Exception:
            log.exception("error while stopping the HTTP server")
        try:
            self.alerting.stop(ALERTS_STOP_TIMEOUT)  # what is still queued goes to the state directory
        except Exception:
            log.exception("error while stopping alerting")
        self.store.save(self.state, self._wall(), force=True)
        return EXIT_OK
