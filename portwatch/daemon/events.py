"""The daemon's event thread: destroy events of every watched namespace, as transient findings.

Job: :class:`EventThread` runs an :class:`~portwatch.collect.eventwatch.EventWatcher`
on its own thread, turns each namespace's events into transient findings
(:class:`~portwatch.detect.transient.NamespaceTransients`, told what the
latest scans saw), hands them over through ``on_findings``, calls
``on_lost(namespace)`` when events were dropped (ENOBUFS: the daemon rescans
at once) and counts events, drops and transient findings in an
:class:`EventCounts` that :class:`EventsCollector` exposes to Prometheus.
It never dies: every exception is logged and the loop goes on. May import
everything below the daemon (collect, detect, config, model) and
prometheus_client.

The daemon owns the thread through :class:`DaemonEvents` (one of its side
threads, :class:`~portwatch.daemon.wiring.SideThread`): started with the daemon when
``events.listen`` is on, told each pass's namespaces and results
(:meth:`EventThread.set_namespaces`, :meth:`EventThread.set_scans`), the new
configuration at a reload, stopped (within a bound) at shutdown; its
callbacks only put :class:`~portwatch.daemon.messages.EventFindings` and
:class:`~portwatch.daemon.messages.Rescan` on the daemon's queue.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable, Iterator, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from portwatch.collect import Discovery, discover_namespaces
from portwatch.collect.eventwatch import EventWatcher
from portwatch.config.types import Config
from portwatch.daemon.messages import EventFindings, Message, Rescan
from portwatch.detect.transient import DEFAULT_PAIR_WINDOW, DEFAULT_WINDOW, NamespaceTransients
from portwatch.model import Finding, Kind, NamespaceInfo, ScanResult
from portwatch.model.events import NamespaceEvents
from portwatch.model.results import NamespacesResult

__all__ = ["DaemonEvents", "EventCounts", "EventThread", "EventsCollector", "TRANSIENT_KINDS"]

log = logging.getLogger("portwatch.events")
A = TypeVar("A")

#: The kinds the destroy events can show (each has a series from the start).
TRANSIENT_KINDS = (Kind.SELF_CONNECT, Kind.LOOP_PAIR)


class EventCounts:
    """The event thread's counters, thread-safe; they outlive a thread (a reload keeps them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events_total = 0
        self.dropped_total = 0
        self.transient_total: dict[Kind, int] = {kind: 0 for kind in TRANSIENT_KINDS}

    def add(self, events: int = 0, dropped: int = 0, findings: Iterable[Finding] = ()) -> None:
        """Count ``events`` read, ``dropped`` ENOBUFS and each occurrence of ``findings``."""
        with self._lock:
            self.events_total += events
            self.dropped_total += dropped
            for f in findings:
                times = f.details.get("occurrences", 1)
                self.transient_total[f.kind] = self.transient_total.get(f.kind, 0) + (
                    times if isinstance(times, int) else 1)

    def read(self) -> tuple[int, int, dict[Kind, int]]:
        """(events_total, dropped_total, transient findings by kind), consistent with each other."""
        with self._lock:
            return self.events_total, self.dropped_total, dict(self.transient_total)


class EventsCollector(Collector):
    """The Prometheus view of :class:`EventCounts` (register it once in the daemon's registry)."""

    def __init__(self, counts: EventCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        """``portwatch_events_total``, ``portwatch_events_dropped_total``, ``portwatch_transient_findings_total{kind}``."""
        events, dropped, by_kind = self.counts.read()
        yield CounterMetricFamily("portwatch_events", "Socket-destroy events read from the kernel.", value=events)
        yield CounterMetricFamily(
            "portwatch_events_dropped", "Receive-buffer overflows (ENOBUFS) of the socket-destroy listeners; "
            "each lost at least one event and triggered a scan.", value=dropped)
        family = CounterMetricFamily("portwatch_transient_findings",
                                     "Self-connects and loop pairs seen in socket-destroy events.", labels=["kind"])
        for kind, value in sorted(by_kind.items(), key=lambda kv: kv[0].value):
            family.add_metric([kind.value], value)
        yield family


OnFindings = Callable[[list[Finding]], None]
OnLost = Callable[[NamespaceInfo], None]


class EventThread:
    """The destroy-event listeners of the daemon, on a thread of their own.

    ``EventThread(on_findings, on_lost, *, config=None, counts=None,
    keyed=True, window=300, pair_window=2, poll_interval=0.2,
    watcher_factory=EventWatcher, clock=time.time)`` (``clock``: the one the
    listeners stamp events with). ``on_findings(findings)`` gets each
    batch of transient findings (namespace set, keyed like the scans with
    ``keyed``, ignore rules and severities of ``config`` applied) and
    ``on_lost(namespace)`` each ENOBUFS; both run on the event thread and
    should only hand over (queue, set a flag). ``window`` is how long a
    transient finding counts its repeats. Methods other than the callbacks
    may be called from any thread. Nothing is watched until
    :meth:`set_namespaces` is called.
    """

    def __init__(self, on_findings: OnFindings, on_lost: OnLost, *, config: Config | None = None,
                 counts: EventCounts | None = None, keyed: bool = True, window: float = DEFAULT_WINDOW,
                 pair_window: float = DEFAULT_PAIR_WINDOW, poll_interval: float = 0.2,
                 watcher_factory: Callable[[], EventWatcher] = EventWatcher,
                 clock: Callable[[], float] = time.time) -> None:
        self.on_findings = on_findings
        self._clock = clock
        self.on_lost = on_lost
        self.counts = counts if counts is not None else EventCounts()
        self.poll_interval = poll_interval
        self._watcher_factory = watcher_factory
        self._transients = NamespaceTransients(window, pair_window, keyed=keyed, config=config)
        self._lock = threading.Lock()
        self._wanted: tuple[NamespaceInfo, ...] | None = None
        self._scans: list[ScanResult] = []
        self._config: tuple[Config | None] | None = None
        self._watching: tuple[NamespaceInfo, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- the daemon's side

    def set_namespaces(self, namespaces: Iterable[NamespaceInfo]) -> None:
        """Watch exactly these namespaces from the thread's next turn on (at most ``poll_interval``)."""
        with self._lock:
            self._wanted = tuple(namespaces)

    def set_scans(self, results: Iterable[ScanResult]) -> None:
        """What the latest pass saw in each namespace: listening ports, settings, reported sockets."""
        with self._lock:
            self._scans.extend(results)

    def set_config(self, config: Config | None) -> None:
        """Use ``config``'s ignore rules and severities for the findings from now on (a reload)."""
        with self._lock:
            self._config = (config,)

    @property
    def namespaces(self) -> tuple[NamespaceInfo, ...]:
        """The namespaces with an open listener now."""
        with self._lock:
            return self._watching

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is not None:
            raise RuntimeError("the event thread was started already")
        self._thread = threading.Thread(target=self._run, name="portwatch-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread and close every listener; True if it ended within ``timeout`` seconds."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # ----------------------------------------------------------------- the thread

    def _run(self) -> None:
        watcher: EventWatcher | None = None
        while not self._stop.is_set():
            try:
                if watcher is None:
                    watcher = self._watcher_factory()
                self._apply(watcher)
                for got in watcher.poll(self.poll_interval):
                    self._handle(watcher, got)
                self._found(self._transients.flush(self._clock(), watcher.listening_ports))
            except Exception:  # the thread must go on: log, pause, loop
                log.exception("event listener error")
                self._stop.wait(self.poll_interval)
        if watcher is not None:
            try:
                watcher.close()
            except Exception:
                log.exception("event listener error while closing")
        with self._lock:
            self._watching = ()

    def _apply(self, watcher: EventWatcher) -> None:
        """Take over what the daemon set since the last turn."""
        with self._lock:
            wanted, self._wanted = self._wanted, None
            scans, self._scans = self._scans, []
            config, self._config = self._config, None
        if config is not None:
            self._transients.config = config[0]
        for result in scans:
            self._transients.scanned(result)
        if wanted is None:
            return
        done = watcher.sync(wanted)
        self._transients.retain(wanted)
        for ns in done.opened:
            log.debug("listening to socket-destroy events of network namespace %s", ns.key)
        for ns in done.closed:
            log.debug("stopped listening to network namespace %s: it is gone", ns.key)
        for _ns, message in done.failed:
            log.warning("%s", message)
        with self._lock:
            self._watching = watcher.namespaces

    def _handle(self, watcher: EventWatcher, got: NamespaceEvents) -> None:
        """Count, report the loss, detect, hand over; each callback's failure is logged."""
        if got.error is not None:
            log.warning("network namespace %s: %s", got.namespace.key, got.error)
            with self._lock:
                if self._wanted is None:  # reopen at the next turn
                    self._wanted = self._watching
        ns = got.namespace
        findings = self._transients.observe(ns, got.events, lambda: watcher.listening_ports(ns)) if got.events else []
        self.counts.add(len(got.events), got.dropped)
        if got.lost:
            log.warning("network namespace %s: socket-destroy events were lost (receive buffer full); "
                        "scanning now", got.namespace.key)
            _call(self.on_lost, got.namespace)
        self._found(findings)

    def _found(self, findings: list[Finding]) -> None:
        if findings:
            self.counts.add(findings=findings)
            _call(self.on_findings, findings)


def _call(fn: Callable[[A], None], arg: A) -> None:
    try:
        fn(arg)
    except Exception:
        log.exception("event callback error")


#: A factory of event threads: ``(on_findings, on_lost, config, counts, keyed, window) -> EventThread``.
ThreadFactory = Callable[[OnFindings, OnLost, Config, EventCounts, bool, float], EventThread]


def _event_thread(on_findings: OnFindings, on_lost: OnLost, config: Config, counts: EventCounts,
                  keyed: bool, window: float) -> EventThread:
    return EventThread(on_findings, on_lost, config=config, counts=counts, keyed=keyed, window=window)


class DaemonEvents:
    """The daemon's side thread of socket-destroy listeners: started, told each pass, reconfigured, stopped.

    ``DaemonEvents(config, post, registry, *, thread_factory=..., discover=discover_namespaces)``
    (a :data:`~portwatch.daemon.wiring.SideThreadFactory`) registers one
    :class:`EventsCollector` in ``registry`` (its counts outlive threads).
    With ``config.events.listen`` a thread runs, keyed as the pass is
    (``namespaces.scan: all``) and counting repeats over
    ``events.quiet_period``; its findings are posted as
    :class:`EventFindings`, each loss as a :class:`Rescan`. With ``scan:
    own`` the own namespace is found once (``discover``). Called from the
    loop's thread; never raises (failures are logged).
    """

    name = "events"

    def __init__(self, config: Config, post: Callable[[Message], None], registry: CollectorRegistry, *,
                 thread_factory: ThreadFactory = _event_thread,
                 discover: Callable[[], Discovery] = discover_namespaces) -> None:
        self.config = config
        self.counts = EventCounts()
        self._post = post
        self._factory = thread_factory
        self._discover = discover
        self._own: tuple[NamespaceInfo, ...] | None = None
        self._last: NamespacesResult | None = None  # the latest pass: what a restarted thread starts with
        self.thread: EventThread | None = None
        registry.register(EventsCollector(self.counts))

    def _shape(self, config: Config) -> tuple[bool, bool, float]:
        return config.events.listen, config.namespaces.scan == "all", config.events.quiet_period

    def start(self) -> None:
        """Start the thread when ``events.listen`` is on, watching what the latest pass read (if any)."""
        listen, keyed, window = self._shape(self.config)
        if not listen or self.thread is not None:
            return
        try:
            self.thread = self._factory(self._found, self._lost, self.config, self.counts, keyed, window)
            self.thread.start()
        except Exception:
            log.exception("cannot start the socket-destroy listeners; scans go on without them")
            self.thread = None
        if self._last is not None:
            self.passed(self._last)

    def passed(self, result: NamespacesResult) -> None:
        """Watch the namespaces ``result`` read (and only those), told what their scans saw."""
        self._last = result
        thread = self.thread
        if thread is None:
            return
        namespaces = [r.snapshot.namespace for r in result.results if r.snapshot.namespace is not None]
        if not namespaces and result.results:  # scan: own, unlabelled: the own namespace
            namespaces = list(self._own_namespace())
        thread.set_namespaces(namespaces)
        thread.set_scans(result.results)

    def _own_namespace(self) -> tuple[NamespaceInfo, ...]:
        if self._own is None:
            try:
                self._own = tuple(ns for ns in self._discover().namespaces if ns.own)[:1]
            except Exception:
                log.exception("cannot find the own network namespace; no socket-destroy listener")
                self._own = ()
        return self._own

    def reconfigure(self, config: Config) -> None:
        """Apply ``config``: new ignores and severities at once; a changed ``events`` or scope restarts the thread."""
        old, self.config = self.config, config
        if self._shape(old) == self._shape(config):
            if self.thread is not None:
                self.thread.set_config(config)
            return
        self.stop()
        self.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread and close its listeners; True when it ended within ``timeout`` seconds."""
        thread, self.thread = self.thread, None
        if thread is None:
            return True
        done = thread.stop(timeout)
        if not done:
            log.warning("the socket-destroy listener thread did not stop within %gs", timeout)
        return done

    def _found(self, findings: list[Finding]) -> None:
        self._post(EventFindings(tuple(findings)))

    def _lost(self, namespace: NamespaceInfo) -> None:
        self._post(Rescan(f"socket-destroy events of network namespace {namespace.key} were lost"))
