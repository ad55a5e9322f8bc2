"""``portwatch watch``: scans at the interval plus socket-destroy events, one line per change.

Job: :func:`run_watch` scans the selected network namespaces every
``interval`` (:func:`~portwatch.scan.run_scan` for the own namespace,
:func:`~portwatch.scan.run_namespaces_scan` with ``-A``/``--netns``),
listens to their destroy events in the same thread
(:class:`~portwatch.collect.eventwatch.EventWatcher`, turned into transient
findings by :class:`~portwatch.detect.transient.NamespaceTransients`, whose
lifecycle a :class:`~portwatch.detect.transient.TransientBook` keeps) and
prints each finding when it appears and when it resolves: a text line (time,
event, severity, namespace, kind, summary) or one JSON object per line. It
stops ``duration`` seconds after its start line (the first scan and the
capture's start come before it) or on SIGINT/SIGTERM, writes a summary line on
stderr (stdout stays parseable) and returns 1 when a finding reached
``fail_on``, else 0. May import collect, detect, config, output, scan and
model; not the daemon.

With ``failures`` (``watch --failures``) the run also turns the failure
capture on for itself (:class:`~portwatch.collect.capture.FailureCapture`:
audit rules tagged ``portwatch``, removed at the end; it must run as root in
the host namespace): each failed ``connect()``/``bind()`` is attributed to
its process's namespace, told what that namespace's latest scan saw
(:func:`~portwatch.detect.failure_findings`), and printed as a ``connect_failed`` or
``bind_failed`` finding, through the ignore rules, like a transient one.
Without the capabilities: one note, and the watch goes on.

A finding is active while the latest scan reports it or, for a transient
one, until ``quiet_period`` passes without a repeat; a key active both ways
is printed once.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, Iterable, Sequence, TextIO

from portwatch.collect import Collector, discover_namespaces
from portwatch.collect.capture import FailureCapture
from portwatch.collect.eventwatch import EventWatcher
from portwatch.config.types import Config
from portwatch.detect import FAILURE_FINDERS, failure_findings
from portwatch.detect.transient import DEFAULT_WINDOW, NamespaceTransients, TransientBook
from portwatch.model import Finding, FailureEvent, FailureWindow, NamespaceInfo, ScanResult, Severity, iso_time
from portwatch.output.json import namespace_ref
from portwatch.scan import UnknownNamespace, make_source, run_namespaces_scan, run_scan, select_namespaces

__all__ = ["WatchOptions", "finding_line", "run_watch"]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class WatchOptions:
    """What ``portwatch watch`` was asked: namespaces, format, how long, when to fail.

    ``netns`` empty and not ``all_namespaces``: the own namespace only.
    ``duration``: seconds of watching, counted from the start line (None: until interrupted); ``interval``: seconds
    between scans (None: the configuration's); ``fail_on``: the severity that
    makes the exit status 1 (None: never).
    """

    all_namespaces: bool = False
    netns: tuple[str, ...] = ()
    format: str = "text"
    duration: float | None = None
    fail_on: Severity | None = Severity.WARNING
    interval: float | None = None
    quiet_period: float = DEFAULT_WINDOW
    failures: bool = False


class _Stop:
    """Set by SIGINT or SIGTERM; the loop ends at its next turn (at most half a second)."""

    def __init__(self) -> None:
        self.signalled = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True


def finding_line(event: str, at: float, finding: Finding, fmt: str) -> str:
    """The line printed for ``finding`` ``found``/``resolved`` at Unix time ``at``, in ``fmt`` (text/json)."""
    transient = bool(finding.details.get("transient"))
    ns = finding.namespace
    if fmt == "json":
        doc: dict[str, Any] = {**finding.to_dict(), "namespace": namespace_ref(ns) if ns else None,
                               "transient": transient}
        return json.dumps({"event": event, "at": iso_time(at, "milliseconds"), "finding": doc}, sort_keys=True)
    kind = finding.kind.value + (" (transient)" if transient else "")
    return (f"{iso_time(at, 'milliseconds')} {event:<8} {finding.severity.value:<8} "
            f"{ns.key if ns else '-'} {kind}: {finding.summary}")


class _Watch:
    """The state of one ``watch`` run: what is shown, what the scans and the events say."""

    def __init__(self, config: Config, options: WatchOptions, out: TextIO, clock: Callable[[], float]) -> None:
        self.config = config
        self.options = options
        self.out = out
        self.clock = clock
        self.keyed = options.all_namespaces or bool(options.netns)
        self.collector = Collector(make_source(config.source))
        self.watcher = EventWatcher()
        self.transients = NamespaceTransients(options.quiet_period, keyed=self.keyed, config=config)
        self.book = TransientBook(options.quiet_period)
        self.scanned: dict[str, Finding] = {}
        self.shown: dict[str, Finding] = {}
        self.worst: dict[str, Finding] = {}  # every finding ever shown, by key
        self.selected: tuple[NamespaceInfo, ...] = ()
        self.notes: set[str] = set()
        self.capture = FailureCapture() if options.failures else None
        self.failures = FailureWindow()
        self.pending: list[FailureEvent] = []  # failures read, waiting for the scan that follows
        self.results: dict[int, ScanResult] = {}  # the latest scan of each namespace, by inode

    def emit(self, event: str, finding: Finding, at: float) -> None:
        if event == "found":
            self.shown[finding.key] = finding
            self.worst.setdefault(finding.key, finding)
        else:
            self.shown.pop(finding.key, None)
        self.out.write(finding_line(event, at, finding, self.options.format) + "\n")
        self.out.flush()

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.add(message)
            print(f"portwatch: {message}", file=sys.stderr, flush=True)

    def select(self, first: bool) -> tuple[NamespaceInfo, ...] | None:
        """The namespaces to watch now (rediscovered each pass); None: a --netns named none (first pass)."""
        discovery = discover_namespaces()
        for text in discovery.notes:
            self.note(text)
        if not self.keyed:
            return tuple(ns for ns in discovery.namespaces if ns.own)[:1]
        try:
            return select_namespaces(discovery, self.options.netns)
        except UnknownNamespace as exc:
            if first:
                print(f"portwatch: {exc}", file=sys.stderr)
                return None
            known = {ns.inode for ns in self.selected}
            return tuple(ns for ns in discovery.namespaces if ns.inode in known)

    def scan(self, namespaces: tuple[NamespaceInfo, ...]) -> list[ScanResult]:
        if not self.keyed:
            own = namespaces[0] if namespaces else None
            return [run_scan(self.config, self.collector, namespace=own)]
        result = run_namespaces_scan(self.config, self.collector, discover_namespaces(), namespaces)
        for text in result.notes:
            self.note(text)
        return list(result.results)

    def sync(self, namespaces: tuple[NamespaceInfo, ...]) -> None:
        self.selected = namespaces
        done = self.watcher.sync(namespaces)
        self.transients.retain(namespaces)
        for _ns, message in done.failed:
            self.note(message)

    def after_scan(self, results: Iterable[ScanResult]) -> None:
        now = self.clock()
        self.scanned = {}
        self.results = {}
        for result in results:
            ns = result.snapshot.namespace
            if ns is not None:
                self.results[ns.inode] = result
            self.transients.scanned(result)
            self.scanned.update((f.key, f) for f in result.findings)
        self.add(self.failure_findings(now), now)
        active = {e.finding.key for e in self.book.active(now)}
        for key, f in self.scanned.items():
            if key not in self.shown:
                self.emit("found", f, now)
        for key, f in list(self.shown.items()):
            if key not in self.scanned and key not in active:
                self.emit("resolved", f, now)

    def events(self, timeout: float) -> bool:
        """Read events for up to ``timeout`` s; True when some were lost (scan now)."""
        lost = False
        for got in self.watcher.poll(timeout):
            if got.error is not None:
                self.note(f"network namespace {got.namespace.key}: {got.error}")
                self.sync(self.selected)
            if got.lost:
                self.note(f"network namespace {got.namespace.key}: socket-destroy events were lost "
                          "(receive buffer full); scanning at once")
                lost = True
            if got.events:
                now = self.clock()
                ns = got.namespace
                found = self.transients.observe(ns, got.events, lambda: self.watcher.listening_ports(ns))
                self.add(found, now)
        now = self.clock()
        self.add(self.transients.flush(now, self.watcher.listening_ports), now)
        if self.capture is not None and self.capture.active and self.failed_calls():
            lost = True  # scan now: the findings then link what the namespace looks like at the failure
        for f in self.book.expire(now):
            if f.key in self.shown and f.key not in self.scanned:
                self.emit("resolved", f, now)
        return lost

    def start_capture(self) -> None:
        """Turn the failure capture on (``--failures``); why it could not, or its caveats, as notes."""
        if self.capture is None:
            return
        self.capture.start()
        for text in self.capture.notes:
            self.note(text)

    def failed_calls(self) -> bool:
        """Read the capture; True when failures came (they wait for the scan that follows: :meth:`after_scan`)."""
        assert self.capture is not None
        try:
            batch = self.capture.read()
        except OSError as exc:
            self.note(f"failure capture stopped: {exc}")
            self.capture.stop()
            return False
        if batch.lost:
            self.note("the kernel dropped audit records (failures may be missing)")
        self.failures.add(batch.events)
        self.pending.extend(batch.events)
        return bool(batch.events)

    def failure_findings(self, now: float) -> list[Finding]:
        """The findings of the failures read since the last scan, counted over the window."""
        if not self.pending:
            return []
        window = self.failures.window
        touched = {f.key for f in failure_findings(self.pending, self.results, self.config, window,
                                                   finders=FAILURE_FINDERS)}
        self.pending = []
        return [f for f in failure_findings(self.failures.current(now), self.results, self.config, window,
                                            finders=FAILURE_FINDERS) if f.key in touched]

    def add(self, findings: list[Finding], now: float) -> None:
        for f in self.book.add(findings, now):
            if f.key not in self.shown:
                self.emit("found", f, now)

    def summary(self, seconds: float) -> str:
        found = list(self.worst.values())
        by = {s: sum(1 for f in found if f.severity is s) for s in Severity}
        transient = sum(1 for f in found if f.details.get("transient"))
        return (f"portwatch watch: {len(found)} findings in {seconds:.1f}s ({by[Severity.CRITICAL]} critical, "
                f"{by[Severity.WARNING]} warning, {by[Severity.INFO]} info; {transient} transient), "
                f"{len(self.shown)} still active")


def run_watch(config: Config, options: WatchOptions, out: TextIO | None = None,
              clock: Callable[[], float] = time.time,
              monotonic: Callable[[], float] = time.monotonic) -> int:
    """Run ``portwatch watch``; the exit status: 0, 1 (a finding reached ``fail_on``), 2 (unknown --netns).

    Raises what the first scan raises (the CLI turns it into status 3);
    later failed scans are reported on stderr and the watch goes on.
    """
    w = _Watch(config, options, out or sys.stdout, clock)
    interval = options.interval if options.interval is not None else config.interval
    started = monotonic()
    deadline: float | None = None
    stop = _Stop()
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        namespaces = w.select(first=True)
        if namespaces is None:
            return EXIT_USAGE
        w.sync(namespaces)
        w.after_scan(w.scan(namespaces))
        w.start_capture()
        keys = ", ".join(ns.key for ns in w.watcher.namespaces) or "none (no event listener)"
        print(f"portwatch watch: scanning every {interval:g}s; socket-destroy events of {keys}",
              file=sys.stderr, flush=True)
        # --duration counts from here: the first scan and the capture's start (seconds on a busy
        # host with many namespaces) are not taken out of the time the watch watches
        watching = monotonic()
        deadline = None if options.duration is None else watching + options.duration
        next_scan = watching + interval
        while (deadline is None or monotonic() < deadline) and not stop.signalled:
            now = monotonic()
            if now >= next_scan:
                next_scan = now + interval
                w.events(0.0)  # what closed before this scan is matched against the scan that saw it
                _pass(w)
                continue
            wait = min(next_scan, deadline if deadline is not None else next_scan) - now
            if w.events(min(max(wait, 0.0), 0.5)):
                next_scan = now
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        w.watcher.close()
        if w.capture is not None:
            w.capture.stop()
    print(w.summary(monotonic() - started), file=sys.stderr, flush=True)
    if options.fail_on is None:
        return EXIT_OK
    threshold = options.fail_on
    return EXIT_FINDINGS if any(f.severity >= threshold for f in w.worst.values()) else EXIT_OK


def _pass(w: _Watch) -> None:
    """One pass after the first: follow the namespaces, scan; a failure is reported and skipped."""
    try:
        namespaces = w.select(first=False) or ()
        w.sync(namespaces)
        w.after_scan(w.scan(namespaces))
    except Exception as exc:  # a failed pass does not end the watch
        print(f"portwatch: scan failed: {exc}", file=sys.stderr, flush=True)


def parse_options(all_namespaces: bool, netns: Sequence[str], fmt: str, duration: float | None,
                  fail_on: str, interval: float | None, failures: bool = False) -> WatchOptions:
    """The :class:`WatchOptions` of the command line's values (``fail_on`` ``never``: None)."""
    return WatchOptions(all_namespaces=all_namespaces, netns=tuple(netns), format=fmt, duration=duration,
                        fail_on=None if fail_on == "never" else Severity(fail_on), interval=interval,
                        failures=failures)

