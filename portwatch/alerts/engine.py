"""The alerting engine the daemon drives: rules, per-sink delivery, state across restarts.

:class:`Alerting` ties together the pure rule engine (:mod:`.rules`), one
sink per ``alerts.sinks`` entry (:mod:`.sinks`), one bounded queue and
delivery thread per sink (:mod:`.delivery`), and the state file
(:mod:`.store`). The daemon:

1. builds it (``Alerting(config.alerts, config.state_directory, host, registry)``),
2. calls :meth:`~Alerting.start` once (loads the firing alerts and the
   undelivered notifications of the previous run, starts the threads),
3. calls :meth:`~Alerting.process` after every successful scan with the
   findings ``ignore`` kept (a failed scan: no call, so it resolves nothing
   and does not reset ``for``),
4. calls :meth:`~Alerting.reload` with a new, valid configuration on SIGHUP,
5. calls :meth:`~Alerting.stop` when it stops.

:meth:`~Alerting.process` evaluates the rules and puts notifications on
queues; it never waits for a sink or for the disk.
"""

from __future__ import annotations

import logging
import random as _random
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry

from portwatch.alerts.delivery import DROP_QUEUE_FULL, AlertMetrics, PutResult, SinkQueue, Worker
from portwatch.alerts.notification import Notification
from portwatch.alerts.rules import AlertState, DryRunEntry, dry_run, evaluate
from portwatch.alerts.sinks import (
    JournalSend,
    Sink,
    SinkBuildError,
    SinkContext,
    all_sinks,
    build_sink,
    default_journal_send,
)
from portwatch.alerts.store import ALERTS_FILE, StateWriter, load, to_document
from portwatch.config.types import AlertsConfig, SinkConfig
from portwatch.model import Finding, Severity

__all__ = ["Alerting", "SinkFactory"]

log = logging.getLogger("portwatch.alerts")

SinkFactory = Callable[[str, SinkConfig, SinkContext], Sink]

#: Dropped notifications are logged at most this often per sink (seconds), with the count since.
DROP_LOG_INTERVAL = 600.0


def _new_id() -> str:
    return uuid.uuid4().hex


def _fired(alerts: Mapping[str, AlertState]) -> dict[str, Severity]:
    return {k: a.severity for k, a in alerts.items() if a.fired_at is not None}


class Alerting:
    """Config-driven alerting (see the module documentation and docs/alerting.md).

    Takes the ``alerts`` configuration, the state directory (``alerts.json``
    lives there), this host's name (the alerts' ``instance``), the Prometheus
    registry to register the ``portwatch_alerts_*`` metrics on, and its
    dependencies: ``clock`` (Unix time, for Alertmanager's ``endsAt`` and the
    last-sent metric), ``monotonic`` (stop deadlines), ``rand`` (retry
    jitter, floats in [0, 1)), ``new_id`` (notification ids), ``journal``
    (returns the journal writer, None when there is no journal),
    ``sink_factory`` (builds a sink) and ``logger``.

    Raises :class:`~portwatch.alerts.sinks.SinkBuildError` (a ValueError)
    naming ``alerts.sinks.NAME`` when a sink cannot be built (e.g. its token
    file is gone), and ``ValueError`` when the registry already has these metrics.
    """

    def __init__(
        self,
        config: AlertsConfig,
        state_dir: Path,
        host: str,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = _random.random,
        new_id: Callable[[], str] = _new_id,
        journal: Callable[[], JournalSend | None] = default_journal_send,
        sink_factory: SinkFactory = build_sink,
        logger: logging.Logger = log,
    ) -> None:
        self._host = host
        self._clock = clock
        self._monotonic = monotonic
        self._rand = rand
        self._new_id = new_id
        self._factory = sink_factory
        self._log = logger
        self._context = SinkContext(host=host, clock=clock, journal_send=journal(), logger=logger)
        sinks = self._build_all(config)
        self._config = config
        self._path = Path(state_dir) / ALERTS_FILE
        self._metrics = AlertMetrics(registry)
        self._lock = threading.RLock()
        self._alerts: dict[str, AlertState] = {}
        self._queues: dict[str, SinkQueue] = {}
        self._workers: dict[str, Worker] = {}
        self._drops: dict[str, tuple[float, int]] = {}  # sink -> (last logged, dropped since)
        self._writer = StateWriter(warn=logger.warning, info=logger.info)
        self._started = False
        self._stopped = False
        for name, sink in sinks.items():
            self._add_sink(name, sink, all_sinks(config)[name])
        self._update_gauges()

    # -- properties for the daemon and tests

    @property
    def config(self) -> AlertsConfig:
        """The configuration in force."""
        return self._config

    @property
    def state_file(self) -> Path:
        """Where the firing alerts and undelivered notifications are kept."""
        return self._path

    def alerts(self) -> dict[str, AlertState]:
        """The current alerts (pending and firing) by alert key (a copy)."""
        with self._lock:
            return dict(self._alerts)

    def queued(self, sink: str) -> list[Notification]:
        """The notifications waiting for ``sink``, oldest first (empty for an unknown sink)."""
        queue = self._queues.get(sink)
        return list(queue) if queue is not None else []

    # -- life cycle

    def start(self) -> None:
        """Load the previous run's state (firing alerts, undelivered notifications), start delivering.

        Undelivered notifications of a sink that no longer exists are
        discarded (logged). Never raises for a missing or corrupt state file.
        """
        with self._lock:
            if self._started:
                return
            saved = load(self._path, warn=self._log.warning, info=self._log.info)
            self._alerts = {k: a for k, a in saved.alerts.items() if a.fired_at is not None}
            orphans: dict[str, int] = {}
            for note, attempts in saved.pending:
                queue = self._queues.get(note.sink)
                if queue is None:
                    orphans[note.sink] = orphans.get(note.sink, 0) + 1
                    continue
                self._account(note.sink, queue.put(note, attempts, coalesce=False))
            for sink, count in sorted(orphans.items()):
                self._log.warning("discarding %d undelivered notification(s) for sink %r, which is no longer"
                                  " configured", count, sink)
            if saved.pending:
                self._log.info("%d undelivered notification(s) from before the restart queued again",
                               len(saved.pending) - sum(orphans.values()))
            if self._alerts:
                self._log.info("%d alert(s) firing before the restart", len(self._alerts))
            self._update_gauges()
            self._started = True
            for worker in self._workers.values():
                worker.start()
            self._writer.start()

    def process(self, findings: Sequence[Finding], now: float) -> None:
        """Evaluate the rules on one successful scan's ``findings`` (after ``ignore``) at Unix time ``now``.

        Queues the notifications it makes and hands the new state to the
        background writer; never waits for a sink or the disk. Ignored after
        :meth:`stop`. Raises ``RuntimeError`` before :meth:`start`.
        """
        with self._lock:
            if not self._started:
                raise RuntimeError("Alerting.process() called before start()")
            if self._stopped:
                return
            before = _fired(self._alerts)
            policies = {name: worker.sink.policy for name, worker in self._workers.items()}
            result = evaluate(self._config.rules, findings, self._alerts, now, host=self._host,
                              new_id=self._new_id, policies=policies)
            self._alerts = result.alerts
            for note in result.notifications:
                self._log.debug("alert %s %s (%s) -> %s", note.alert_key, note.status.value, note.reason.value,
                                note.sink)
                queue = self._queues.get(note.sink)
                if queue is not None:
                    self._account(note.sink, queue.put(note))
            self._update_gauges()
            if result.notifications or before != _fired(self._alerts):
                self._writer.submit(self._path, self._document(now))

    def reload(self, config: AlertsConfig, state_dir: Path | None = None) -> None:
        """Apply a new (valid) ``alerts`` configuration, and the state directory if it changed.

        Every sink is rebuilt (token files are read again); a sink that stays
        keeps its queue and worker (a smaller ``queue_size`` drops per the
        queue policy, counted) and, if it was waiting to retry, retries at once; a removed sink's undelivered notifications
        are discarded (logged) and its metrics removed; alerts of removed
        rules resolve at the next :meth:`process`. Raises
        :class:`~portwatch.alerts.sinks.SinkBuildError` with nothing changed
        when a sink cannot be built.
        """
        sinks = self._build_all(config)
        with self._lock:
            for name in sorted(set(self._workers) - set(sinks)):
                gone, queue = self._workers.pop(name), self._queues.pop(name)
                gone.stop()
                queue.close()
                left = len(queue)
                if left:
                    self._log.warning("sink %r was removed: discarding its %d undelivered notification(s)",
                                      name, left)
                self._metrics.remove_sink(name)
            for name, sink in sinks.items():
                cfg = all_sinks(config)[name]
                worker = self._workers.get(name)
                if worker is None:
                    self._add_sink(name, sink, cfg)
                    if self._started and not self._stopped:
                        self._workers[name].start()
                    continue
                worker.sink = sink
                worker.initial_delay, worker.max_delay = cfg.retry_initial_delay, cfg.retry_max_delay
                worker.retry_now()  # a sink in backoff tries its new settings at once
                dropped = self._queues[name].resize(cfg.queue_size)
                if dropped:
                    self._metrics.dropped.labels(name, DROP_QUEUE_FULL).inc(len(dropped))
                    self._log.warning("sink %r: queue_size is now %d, dropped %d notification(s)", name,
                                      cfg.queue_size, len(dropped))
            self._config = config
            if state_dir is not None:
                self._path = Path(state_dir) / ALERTS_FILE
            self._update_gauges()
            if self._started and not self._stopped:
                self._writer.submit(self._path, self._document(self._clock()))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop: deliver what is queued for up to ``timeout`` seconds, then save the rest and the firing alerts.

        A sink that fails while stopping is not retried (no backoff wait).
        What is still queued (including a notification whose delivery was in
        progress: it may be delivered twice) is written to the state file and
        delivered after the next :meth:`start`. Before :meth:`start` it only
        marks the engine stopped (the state file is left alone). Idempotent;
        never raises.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            workers = list(self._workers.values())
            if not self._started:
                return  # nothing was loaded: the previous run's file stays as it is
        deadline = self._monotonic() + max(timeout, 0.0)
        for worker in workers:
            worker.drain_then_stop(deadline)
        for worker in workers:
            worker.join(deadline - self._monotonic())
        for worker in workers:
            worker.stop()
        self._writer.stop(max(deadline - self._monotonic(), 0.1))
        with self._lock:
            document = self._document(self._clock())
        left = len(document["pending"])
        if self._writer.write_now(self._path, document) and left:
            self._log.info("alerting stopped with %d undelivered notification(s), saved to %s for the next"
                           " start", left, self._path)

    # -- the CLI

    def dry_run(self, findings: Sequence[Finding], now: float) -> list[DryRunEntry]:
        """What the rules would do with ``findings`` now, given the current alerts. Sends and changes nothing."""
        with self._lock:
            return dry_run(self._config, findings, self._alerts, now)

    # -- internals

    def _build_all(self, config: AlertsConfig) -> dict[str, Sink]:
        sinks: dict[str, Sink] = {}
        errors: list[str] = []
        for name, cfg in all_sinks(config).items():
            try:
                sinks[name] = self._factory(name, cfg, self._context)
            except SinkBuildError as exc:
                errors.append(f"alerts.sinks.{name}: {exc}")
        if errors:
            raise SinkBuildError("; ".join(errors))
        return sinks

    def _add_sink(self, name: str, sink: Sink, cfg: SinkConfig) -> None:
        queue = SinkQueue(cfg.queue_size)
        self._queues[name] = queue
        self._workers[name] = Worker(queue, sink, self._metrics, initial_delay=cfg.retry_initial_delay,
                                     max_delay=cfg.retry_max_delay, rand=self._rand, clock=self._clock,
                                     logger=self._log)
        self._metrics.add_sink(name, queue)

    def _account(self, sink: str, result: PutResult) -> None:
        if result.coalesced:
            self._metrics.coalesced.labels(sink).inc()
        if not result.dropped:
            return
        self._metrics.dropped.labels(sink, DROP_QUEUE_FULL).inc(len(result.dropped))
        now = self._monotonic()
        last, count = self._drops.get(sink, (None, 0))
        count += len(result.dropped)
        if last is None or now - last >= DROP_LOG_INTERVAL:
            queue = self._queues[sink]
            self._log.warning("sink %r: queue full (%d), dropped %d notification(s) since the last report"
                              " (superseded ones and repeats first)", sink, queue.capacity, count)
            self._drops[sink] = (now, 0)
        else:
            self._drops[sink] = (last, count)

    def _update_gauges(self) -> None:
        firing = self._metrics.firing
        pending = self._metrics.pending
        firing.clear()
        pending.clear()
        for rule in self._config.rules:
            if rule.sinks:
                for severity in Severity:
                    firing.labels(rule.name, severity.value).set(0)
                pending.labels(rule.name).set(0)
        for a in self._alerts.values():
            if a.fired_at is not None:
                firing.labels(a.rule, a.severity.value).inc()
            else:
                pending.labels(a.rule).inc()

    def _document(self, now: float) -> dict[str, Any]:
        pending: list[tuple[Notification, int]] = []
        for name in sorted(self._queues):
            pending.extend(self._queues[name].snapshot())
        return to_document(self._alerts, pending, now)
