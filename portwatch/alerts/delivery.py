"""Delivery: one bounded queue and one worker thread per sink, retries with backoff, metrics.

The scan loop only ever calls :meth:`SinkQueue.put`, which takes a lock for
a few list operations and never waits for a sink. Each sink's
:class:`Worker` takes the oldest notification, sends it, and on a temporary
failure keeps it at the head and waits (exponential backoff with jitter,
:func:`backoff_delay`) before trying again; notifications of one sink are
delivered in order. A permanent failure drops the notification (counted).

The bound (docs/alerting.md, "When a sink is down"): a queue holds at most
``queue_size`` notifications. Before that:

- a ``repeat`` of an alert that already has a firing notification queued
  for the sink is not queued at all (*coalesced*: the queued one says the same);

and when a notification arrives at a full queue, one is dropped, the first
that exists of:

1. the oldest *superseded* notification: one of an alert with a newer
   notification queued (or arriving), e.g. a firing one whose resolution is
   queued too, or a repeat followed by a severity change;
2. the oldest ``repeat`` (the arriving one included): its alert was sent before;
3. the oldest notification.

A notification being sent at that moment is never the one dropped; if it is
the only one queued, the arriving notification is dropped instead.
"""

from __future__ import annotations

import logging
import random as _random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter as PromCounter, Gauge

from portwatch.alerts.notification import Notification, Reason, Status
from portwatch.alerts.sinks import Sink, SinkError

__all__ = ["AlertMetrics", "Entry", "PutResult", "SinkQueue", "Worker", "backoff_delay"]

log = logging.getLogger("portwatch.alerts")

#: ``reason`` label values of ``portwatch_alerts_dropped_total``.
DROP_QUEUE_FULL = "queue_full"
DROP_REJECTED = "rejected"


def backoff_delay(failures: int, initial: float, maximum: float, rand: Callable[[], float],
                  retry_after: float | None = None) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (``failures`` >= 1).

    ``initial * 2**(failures-1)``, at most ``maximum``, times a jitter factor
    in [0.5, 1) drawn from ``rand()`` (a float in [0, 1)). A receiver's
    ``retry_after`` raises the wait to that many seconds (still at most
    ``maximum``). Pure given ``rand``.
    """
    exponent = min(max(failures - 1, 0), 60)
    base = min(maximum, initial * (2.0 ** exponent))
    delay = base * (0.5 + 0.5 * rand())
    if retry_after is not None:
        delay = max(delay, min(retry_after, maximum))
    return delay


class Entry:
    """A queued notification, with the failed attempts made so far and whether it is being sent."""

    __slots__ = ("note", "attempts", "in_flight")

    def __init__(self, note: Notification, attempts: int = 0) -> None:
        self.note = note
        self.attempts = attempts
        self.in_flight = False


@dataclass(frozen=True)
class PutResult:
    """What :meth:`SinkQueue.put` did: ``queued`` (False when coalesced or dropped on arrival),
    ``coalesced``, and the notifications ``dropped`` to make room (the arriving one included)."""

    queued: bool
    coalesced: bool
    dropped: tuple[Notification, ...] = ()


class SinkQueue:
    """The bounded FIFO of one sink (eviction policy in the module documentation). Thread-safe."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._entries: list[Entry] = []
        self._per_key: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def capacity(self) -> int:
        """The most notifications held."""
        return self._capacity

    # -- the producer side (the scan loop)

    def put(self, note: Notification, attempts: int = 0, coalesce: bool = True) -> PutResult:
        """Queue ``note`` (``attempts`` failed attempts already made, e.g. before a restart).

        With ``coalesce``, a repeat of an alert with a firing notification
        already queued is not queued. Never blocks on the worker.
        """
        with self._cond:
            if coalesce and note.reason is Reason.REPEAT and any(
                    e.note.alert_key == note.alert_key and e.note.status is Status.FIRING
                    for e in self._entries):
                return PutResult(queued=False, coalesced=True)
            dropped: list[Notification] = []
            while len(self._entries) >= self._capacity:
                victim = self._victim(note)
                if victim is None:
                    return PutResult(queued=False, coalesced=False, dropped=(*dropped, note))
                self._remove(victim)
                dropped.append(victim.note)
            self._entries.append(Entry(note, attempts))
            self._per_key[note.alert_key] += 1
            self._cond.notify_all()
            return PutResult(queued=True, coalesced=False, dropped=tuple(dropped))

    def resize(self, capacity: int) -> list[Notification]:
        """Change the bound; returns the notifications dropped to fit it (policy as for a full queue)."""
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        dropped: list[Notification] = []
        with self._cond:
            self._capacity = capacity
            while len(self._entries) > capacity:
                victim = self._victim(None)
                if victim is None:
                    break
                self._remove(victim)
                dropped.append(victim.note)
        return dropped

    def _victim(self, arriving: Notification | None) -> Entry | None:
        """The entry to drop for ``arriving`` (None: drop ``arriving`` itself; see the module doc)."""
        candidates = [e for e in self._entries if not e.in_flight]
        newest: dict[str, Entry] = {}
        for e in self._entries:
            newest[e.note.alert_key] = e
        for e in candidates:
            superseded = newest[e.note.alert_key] is not e or (
                arriving is not None and arriving.alert_key == e.note.alert_key)
            if superseded:
                return e
        for e in candidates:
            if e.note.reason is Reason.REPEAT:
                return e
        if arriving is not None and arriving.reason is Reason.REPEAT:
            return None
        return candidates[0] if candidates else None

    def _remove(self, entry: Entry) -> None:
        for i, e in enumerate(self._entries):
            if e is entry:
                del self._entries[i]
                self._per_key[entry.note.alert_key] -= 1
                if self._per_key[entry.note.alert_key] <= 0:
                    del self._per_key[entry.note.alert_key]
                return

    # -- the worker side

    def take(self, stop: threading.Event, idle: threading.Event) -> Entry | None:
        """The oldest entry, marked in flight; waits for one.

        Returns None at once when ``stop`` is set (or the queue was closed),
        and when ``idle`` is set and the queue is empty. Setters of either
        event call :meth:`wake`.
        """
        with self._cond:
            while True:
                if stop.is_set() or self._closed:
                    return None
                if self._entries:
                    entry = self._entries[0]
                    entry.in_flight = True
                    return entry
                if idle.is_set():
                    return None
                self._cond.wait(1.0)

    def done(self, entry: Entry) -> None:
        """``entry`` was delivered, or dropped for good: remove it."""
        with self._cond:
            entry.in_flight = False
            self._remove(entry)

    def release(self, entry: Entry) -> None:
        """``entry`` was taken but not attempted: it stays at the head, attempts unchanged."""
        with self._cond:
            entry.in_flight = False

    def failed(self, entry: Entry) -> None:
        """An attempt at ``entry`` failed: it stays (at the head) for the next attempt."""
        with self._cond:
            entry.in_flight = False
            entry.attempts += 1

    def wake(self) -> None:
        """Wake a worker waiting in :meth:`take` (it re-checks its stop event)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Make every :meth:`take` return None from now on (the sink was removed)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def snapshot(self) -> list[tuple[Notification, int]]:
        """Every queued notification (in-flight ones included) with its failed attempts, oldest first."""
        with self._cond:
            return [(e.note, e.attempts) for e in self._entries]

    def __iter__(self) -> Iterator[Notification]:
        return iter([n for n, _ in self.snapshot()])


class AlertMetrics:
    """The delivery and alert metrics (docs/alerting.md), registered on ``registry``.

    Raises ``ValueError`` (from prometheus_client) when ``registry`` already
    has metrics of these names.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = PromCounter("portwatch_alerts_sent_total", "Notifications delivered, by sink.",
                                ["sink"], registry=registry)
        self.failed = PromCounter("portwatch_alerts_failed_total",
                                  "Delivery attempts that failed (temporarily or for good), by sink.",
                                  ["sink"], registry=registry)
        self.retried = PromCounter("portwatch_alerts_retried_total",
                                   "Delivery attempts that retried a notification after a failure, by sink.",
                                   ["sink"], registry=registry)
        self.dropped = PromCounter("portwatch_alerts_dropped_total",
                                   "Notifications given up undelivered, by sink and reason "
                                   "(queue_full: the queue bound; rejected: the receiver refused it for good).",
                                   ["sink", "reason"], registry=registry)
        self.coalesced = PromCounter("portwatch_alerts_coalesced_total",
                                     "Repeats not queued because a firing notification of the same alert "
                                     "was queued already, by sink.", ["sink"], registry=registry)
        self.queued = Gauge("portwatch_alerts_queued", "Notifications waiting for delivery, by sink.",
                            ["sink"], registry=registry)
        self.last_sent = Gauge("portwatch_alerts_last_sent_timestamp_seconds",
                               "Unix time of the latest delivery, by sink (absent before the first).",
                               ["sink"], registry=registry)
        self.firing = Gauge("portwatch_alerts_firing", "Firing alerts, by rule and alert severity.",
                            ["rule", "severity"], registry=registry)
        self.pending = Gauge("portwatch_alerts_pending",
                             "Alerts waiting for their rule's `for` before they fire, by rule.",
                             ["rule"], registry=registry)

    def add_sink(self, sink: str, queue: SinkQueue) -> None:
        """Create ``sink``'s series (at 0) and make the queue gauge read ``queue``."""
        self.sent.labels(sink)
        self.failed.labels(sink)
        self.retried.labels(sink)
        self.coalesced.labels(sink)
        for reason in (DROP_QUEUE_FULL, DROP_REJECTED):
            self.dropped.labels(sink, reason)
        self.queued.labels(sink).set_function(lambda: float(len(queue)))

    def remove_sink(self, sink: str) -> None:
        """Remove every series of ``sink`` (a reload removed it)."""
        for metric in (self.sent, self.failed, self.retried, self.coalesced, self.queued, self.last_sent):
            try:
                metric.remove(sink)
            except KeyError:
                pass
        for reason in (DROP_QUEUE_FULL, DROP_REJECTED):
            try:
                self.dropped.remove(sink, reason)
            except KeyError:
                pass


class Worker:
    """Delivers one sink's queue in a daemon thread (see the module documentation).

    Takes the queue, the sink (replaceable at reload through :attr:`sink`),
    the metrics, the retry delays, a random source in [0, 1) for the jitter,
    and the Unix clock for ``portwatch_alerts_last_sent_timestamp_seconds``.
    Failures are logged once per outage (the first failure, then the recovery);
    a sink that raises something other than SinkError is a bug, logged with
    its traceback and treated as a temporary failure.
    """

    def __init__(self, queue: SinkQueue, sink: Sink, metrics: AlertMetrics, *, initial_delay: float,
                 max_delay: float, rand: Callable[[], float] = _random.random,
                 clock: Callable[[], float] = time.time, logger: logging.Logger = log) -> None:
        self.queue = queue
        self.sink = sink
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self._metrics = metrics
        self._rand = rand
        self._clock = clock
        self._log = logger
        self._stop = threading.Event()
        self._interrupt = threading.Event()  # ends a backoff wait early (stop, drain, reload)
        self._drain = threading.Event()  # set once stopping: end when the queue is empty
        self._draining = False
        self._deadline: float | None = None
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name=f"portwatch-alerts-{sink.name}", daemon=True)

    @property
    def name(self) -> str:
        """The sink's name."""
        return self.sink.name

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def drain_then_stop(self, deadline: float) -> None:
        """Keep delivering until the queue is empty, the sink fails, or ``deadline`` (monotonic) passes; then stop."""
        self._deadline = deadline
        self._draining = True
        self._drain.set()
        self._interrupt.set()
        self.queue.wake()

    def retry_now(self) -> None:
        """End a backoff wait in progress: the next attempt starts at once (e.g. after a reload)."""
        self._interrupt.set()

    def stop(self) -> None:
        """Stop after the attempt in progress (if any)."""
        self._stop.set()
        self._interrupt.set()
        self.queue.wake()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the thread; True when it ended."""
        if self._thread.ident is None:
            return True
        self._thread.join(max(timeout, 0.0))
        return not self._thread.is_alive()

    def _out_of_time(self) -> bool:
        return self._draining and self._deadline is not None and time.monotonic() >= self._deadline

    def _run(self) -> None:
        name = self.sink.name
        while not self._stop.is_set():
            if self._draining and (len(self.queue) == 0 or self._out_of_time()):
                return
            entry = self.queue.take(self._stop, self._drain)
            if entry is None:
                continue
            if self._out_of_time():
                self.queue.release(entry)
                return
            sink = self.sink
            if entry.attempts > 0:
                self._metrics.retried.labels(name).inc()
            try:
                sink.send(entry.note)
            except SinkError as exc:
                if not self._failed(entry, exc, str(exc)):
                    return
            except Exception as exc:  # a bug in a sink must not end its deliveries
                self._log.exception("sink %s: unexpected error while sending", name)
                if not self._failed(entry, SinkError(f"{type(exc).__name__}: {exc}"), None):
                    return
            else:
                self.queue.done(entry)
                self._metrics.sent.labels(name).inc()
                self._metrics.last_sent.labels(name).set(self._clock())
                if self._failures:
                    self._log.info("sink %s delivers again (after %d failed attempts)", name, self._failures)
                self._failures = 0

    def _failed(self, entry: Entry, exc: SinkError, message: str | None) -> bool:
        """Count and log a failed attempt, wait the backoff. False when the worker must end (stopping)."""
        name = self.sink.name
        if exc.permanent:
            self.queue.done(entry)
            self._metrics.failed.labels(name).inc()
            self._metrics.dropped.labels(name, DROP_REJECTED).inc()
            self._log.error("sink %s refused the %s notification of %s for good, dropped: %s", name,
                            entry.note.status.value, entry.note.alert_key, exc)
            return True
        self.queue.failed(entry)  # before the metric: once it shows, the entry is no longer in flight
        self._metrics.failed.labels(name).inc()
        self._failures += 1
        delay = backoff_delay(self._failures, self.initial_delay, self.max_delay, self._rand, exc.retry_after)
        if message is not None:
            if self._failures == 1:
                self._log.warning("sink %s: delivery failed (%s); retrying with backoff, %d queued",
                                  name, message, len(self.queue))
            else:
                self._log.debug("sink %s: attempt %d failed (%s); next in %.1fs", name, self._failures,
                                message, delay)
        if self._draining:
            return False  # stopping: what is left is saved, not waited for
        self._interrupt.wait(delay)
        if self._draining or self._stop.is_set():
            return False
        self._interrupt.clear()
        return True
