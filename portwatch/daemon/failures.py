"""The daemon's failure thread: the audit capture of failed connect()/bind() calls, as event findings.

Job: :class:`FailureThread`, a side thread of the daemon (see
:class:`~portwatch.daemon.wiring.SideThread`). While ``capture.failures`` is
``audit`` it owns a :class:`~portwatch.collect.capture.FailureCapture`
(started on the thread, in the daemon's namespace, which must be the
host's), reads it with a selector and a timeout (so records whose partner
never came are flushed about every ``poll_interval``), keeps the events of
the last ``window`` seconds (:class:`~portwatch.model.failures.FailureWindow`),
turns them into ``connect_failed``/``bind_failed`` findings with the latest
pass's result of each namespace (:func:`~portwatch.detect.failure_findings`)
and posts them to the daemon's queue as
:class:`~portwatch.daemon.messages.EventFindings`; it counts them in a
:class:`~portwatch.output.failures.FailureMetrics`, registered in the daemon's
registry only while ``capture.failures`` is ``audit`` (then
``portwatch_failure_capture_active`` 0 means asked for, not running). It never
dies: an error is logged, the capture restarted after a pause. Failures in
the namespaces the last pass left out (``namespaces.include``/``exclude``) are
dropped as they are read. Each note of
the capture (no capability, auditing enabled late...) is logged once.

Thread safety: the daemon hands over each pass's results with :meth:`passed`
(a new mapping replaces the old one under a lock, never mutated) and a new
configuration with :meth:`reconfigure` (which also starts or stops the
capture when ``capture.failures`` changed); the capture itself is only
touched by the thread.

New failures make the thread post a :class:`~portwatch.daemon.messages.Rescan`
and wait for the pass it causes (one that began after they were read, not one
already running then; at most ``explain_wait`` seconds) before
posting their findings: the pass made right after a failure is what names
its cause (the exhaustion of that destination, the holder's ``port_taken``),
and a finding's first notification is the one alerting sends. May import everything below the daemon and
:mod:`portwatch.daemon.messages`.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from typing import Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry

from portwatch.collect.capture import FailureCapture
from portwatch.config import Config
from portwatch.daemon.messages import EventFindings, Message, Rescan
from portwatch.detect import FAILURE_FINDERS, failure_findings
from portwatch.model import Finding, ScanResult
from portwatch.model.failures import DEFAULT_FAILURE_WINDOW, FailureEvent, FailureWindow
from portwatch.model.results import NamespacesResult
from portwatch.model.text import os_error_text
from portwatch.output.failures import FailureMetrics
from portwatch.output.metrics import HOST_NETNS, netns_label

__all__ = ["FailureThread", "results_by_inode"]

log = logging.getLogger("portwatch.daemon.failures")

#: Seconds between two starts of a capture that failed while reading.
RESTART_PAUSE = 5.0
#: At most this many reads in a row while the capture says more is queued.
MAX_READS_AT_ONCE = 16


def results_by_inode(result: NamespacesResult, own_inode: int | None) -> dict[int, ScanResult]:
    """Each scanned namespace's result by its nsfs inode (a result without a namespace: ``own_inode``)."""
    out: dict[int, ScanResult] = {}
    for r in result.results:
        ns = r.snapshot.namespace
        inode = ns.inode if ns is not None else own_inode
        if inode is not None:
            out[inode] = r
    return out


def _own_inode() -> int | None:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None


class _Pending:
    """The thread's memory: the window, and the failures not posted yet (waiting for a pass)."""

    def __init__(self, window: FailureWindow) -> None:
        self.window = window
        self.events: list[FailureEvent] = []
        self.read_at = 0.0  # time.monotonic() when the first of them was read
        self.deadline = 0.0


class FailureThread:
    """The failure capture on a thread of its own, for the daemon.

    ``FailureThread(config, post, registry, *, capture_factory=FailureCapture,
    window=300, poll_interval=0.25, explain_wait=5, restart_pause=5, clock=time.time)``:
    ``post`` puts a message
    on the daemon's queue (thread-safe); ``registry`` gets the failure
    metrics while the capture is configured (their counts survive an off and
    on again). Nothing runs until :meth:`start`; the thread exists only
    while ``capture.failures`` is ``audit``.
    """

    name = "failures"

    def __init__(self, config: Config, post: Callable[[Message], None], registry: CollectorRegistry, *,
                 capture_factory: Callable[[], FailureCapture] = FailureCapture,
                 window: float = DEFAULT_FAILURE_WINDOW, poll_interval: float = 0.25,
                 explain_wait: float = 5.0, restart_pause: float = RESTART_PAUSE,
                 clock: Callable[[], float] = time.time) -> None:
        self._post = post
        self._capture_factory = capture_factory
        self._window = window
        self._poll = poll_interval
        self._explain_wait = explain_wait
        self._restart_pause = restart_pause
        self._clock = clock
        self._own = _own_inode()
        self.metrics = FailureMetrics(top=config.metrics.top_destinations)
        self._registry = registry
        self._exported = False
        self._lock = threading.Lock()
        self._config = config
        self._results: Mapping[int, ScanResult] = {}
        self._left_out: frozenset[int] = frozenset()  # namespaces include/exclude leave out: not reported
        # when the latest pass handed over began (time.monotonic()): the pending failures wait
        # for a pass that began after they were read, not one already running then
        self._pass_began = float("-inf")
        self._noted: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ----------------------------------------------------------------- the daemon's side

    def start(self) -> None:
        """Start the capture's thread when the configuration asks for it."""
        if self._config.capture.failures == "audit":
            self._export(True)
            self._start_thread()

    def passed(self, result: NamespacesResult) -> None:
        """The latest pass's results: what the next findings are explained with."""
        mapping = results_by_inode(result, self._own)
        began = time.monotonic() - max(result.duration, 0.0)
        with self._lock:
            self._results = mapping
            self._left_out = frozenset(result.left_out)
            self._pass_began = began

    def reconfigure(self, config: Config) -> None:
        """Use ``config`` from now on; start or stop the capture when ``capture.failures`` changed.

        With ``audit`` unchanged, a capture that could not start (its thread ended) is tried again.
        """
        with self._lock:
            old, self._config = self._config, config
        self.metrics.set_top(config.metrics.top_destinations)
        if old.capture.failures == config.capture.failures:
            if config.capture.failures == "audit" and not self.alive:
                log.info("failure capture: trying to start it again")  # it could not start before
                self._start_thread()
            return
        if config.capture.failures == "audit":
            log.info("failure capture turned on")
            self._export(True)
            self._start_thread()
        else:
            log.info("failure capture turned off")
            self.stop()
            self._export(False)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread (which removes portwatch's audit rules); True if it ended within ``timeout``."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the failure capture did not stop within %gs", timeout)
            return False
        return True

    @property
    def alive(self) -> bool:
        """True while the capture's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _export(self, on: bool) -> None:
        """Register the failure metrics (``on``) or take them out of the registry."""
        if on and not self._exported:
            self._registry.register(self.metrics)
        elif not on and self._exported:
            self._registry.unregister(self.metrics)
        self._exported = on

    def _start_thread(self) -> None:
        if self.alive:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="portwatch-failures",
                                        daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- the thread

    def _run(self, stop: threading.Event) -> None:
        """Capture until ``stop``; after an error, log, pause and start again. Never raises."""
        while not stop.is_set():
            try:
                if not self._session(stop):
                    return  # could not start: the notes said why; a reload may try again
            except Exception as exc:  # noqa: BLE001 - the thread must go on
                log.error("failure capture error (%s); starting it again in %gs",
                          os_error_text(exc) if isinstance(exc, OSError) else repr(exc), self._restart_pause)
                log.debug("failure capture error", exc_info=True)
            stop.wait(self._restart_pause)

    def _session(self, stop: threading.Event) -> bool:
        """One capture from start to stop; False if it could not start for good (True after a lock
        wait that timed out: the thread pauses and tries again)."""
        cap = self._capture_factory()
        try:
            started = cap.start()
            self._log_notes(cap)
            self.metrics.record_capture(cap.active, cap.dropped_total)
            if not started:
                return cap.busy  # a lock another process held too long: tried again after the pause
            log.info("failure capture on: %d audit rule(s) keyed portwatch (%d reused)", len(cap.rules), cap.reused)
            pending = _Pending(FailureWindow(self._window))
            with selectors.DefaultSelector() as sel:
                sel.register(cap.fileno(), selectors.EVENT_READ)
                while not stop.is_set():
                    sel.select(self._poll)
                    self._read(cap, pending)
                    self._explain(pending)
            return True
        finally:
            try:
                cap.stop()
            finally:
                self._log_notes(cap)
                self.metrics.record_capture(False, cap.dropped_total)

    def _read(self, cap: FailureCapture, pending: _Pending) -> None:
        """Read what is queued (bounded), count it; new failures wait for the pass a Rescan asks for."""
        fresh: list[FailureEvent] = []
        for _ in range(MAX_READS_AT_ONCE):
            batch = cap.read()
            fresh += batch.events
            if batch.lost:
                log.warning("audit records were lost (the reader's buffer was full); failures may be missing")
            if not batch.more:
                break
        self.metrics.record_capture(cap.active, cap.dropped_total)
        with self._lock:
            results, left_out = self._results, self._left_out
        fresh = [e for e in fresh if e.netns_inode is None or e.netns_inode not in left_out]
        if not fresh:
            return
        for inode in {e.netns_inode for e in fresh}:
            self.metrics.record([e for e in fresh if e.netns_inode == inode], netns=self._label(inode, results))
        pending.window.add(sorted(fresh, key=lambda e: (e.at, e.serial)))
        if not pending.events:
            pending.read_at = time.monotonic()
            pending.deadline = pending.read_at + self._explain_wait
            self._post(Rescan("failed connect()/bind() calls"))
        pending.events += fresh

    def _explain(self, pending: _Pending) -> None:
        """Post the findings the pending failures touch once a newer pass came (or the wait is over)."""
        if not pending.events:
            return
        with self._lock:
            config, results, began = self._config, self._results, self._pass_began
        if began < pending.read_at and time.monotonic() < pending.deadline:
            return
        def findings(events: Sequence[FailureEvent]) -> list[Finding]:
            return failure_findings(events, results, config, self._window, finders=FAILURE_FINDERS)

        touched = {f.key for f in findings(pending.events)}
        pending.events = []
        found = [f for f in findings(pending.window.current(self._clock())) if f.key in touched]
        if found:
            self._post(EventFindings(tuple(found)))

    @staticmethod
    def _label(inode: int | None, results: Mapping[int, ScanResult]) -> str:
        """The ``netns`` label of a failure's namespace (as its findings are keyed)."""
        if inode is None:
            return HOST_NETNS
        result = results.get(inode)
        return netns_label(result) if result is not None else f"netns:{inode}"

    def _log_notes(self, cap: FailureCapture) -> None:
        for note in cap.notes:
            if note not in self._noted:
                self._noted.add(note)
                log.warning("%s", note)
