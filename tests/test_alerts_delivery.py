"""The delivery layer on its own: the queue's bound and eviction order as tables, backoff
with jitter, the worker's ordering, permanent failures, drain on stop, a sink that raises
something unexpected; and the state file's round trip."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from prometheus_client import CollectorRegistry

from portwatch.alerts.delivery import AlertMetrics, SinkQueue, Worker, backoff_delay
from portwatch.alerts.notification import Notification, Reason, Status
from portwatch.alerts.rules import AlertState, SinkPolicy
from portwatch.alerts.sinks import SinkError
from portwatch.alerts.store import from_document, load, to_document, write_atomic
from portwatch.model import Severity
from tests.alertmanager import wait_for


def n(spec: str) -> Notification:
    """``"new:A"``, ``"repeat:B"``, ``"resolved:A"``, ``"severity_changed:C"`` -> a notification."""
    reason, key = spec.split(":")
    status = Status.RESOLVED if reason == "resolved" else Status.FIRING
    return Notification(id=spec, sink="s", alert_key=key, rule="r", status=status, reason=Reason(reason),
                        severity=Severity.CRITICAL, starts_at=0.0, created_at=0.0, host="h",
                        finding={"key": key})


QUEUE = [
    # (capacity, notifications put in order, queue after, dropped in order, coalesced count)
    pytest.param(3, ["new:A", "new:B", "new:C"], ["new:A", "new:B", "new:C"], [], 0, id="fits"),
    pytest.param(3, ["new:A", "repeat:A"], ["new:A"], [], 1, id="repeat-coalesced-with-queued-firing"),
    pytest.param(3, ["new:A", "resolved:A", "repeat:A"], ["new:A", "resolved:A"], [], 1,
                 id="repeat-coalesced-even-behind-a-resolution"),
    pytest.param(3, ["resolved:A", "repeat:A"], ["resolved:A", "repeat:A"], [], 0,
                 id="repeat-after-resolved-only-is-queued"),
    pytest.param(3, ["new:A", "new:B", "resolved:A", "new:C"], ["new:B", "resolved:A", "new:C"], ["new:A"], 0,
                 id="superseded-goes-first"),
    pytest.param(3, ["new:A", "new:B", "new:C", "resolved:B"], ["new:A", "new:C", "resolved:B"], ["new:B"], 0,
                 id="arriving-notification-supersedes"),
    pytest.param(3, ["repeat:A", "new:B", "new:C", "new:D"], ["new:B", "new:C", "new:D"], ["repeat:A"], 0,
                 id="then-the-oldest-repeat"),
    pytest.param(3, ["new:B", "new:C", "new:D", "repeat:A"], ["new:B", "new:C", "new:D"], ["repeat:A"], 0,
                 id="an-arriving-repeat-before-any-firing"),
    pytest.param(3, ["new:A", "new:B", "new:C", "new:D"], ["new:B", "new:C", "new:D"], ["new:A"], 0,
                 id="then-the-oldest"),
    pytest.param(3, ["new:A", "severity_changed:A", "new:B", "new:C"],
                 ["severity_changed:A", "new:B", "new:C"], ["new:A"], 0, id="severity-change-supersedes"),
    pytest.param(1, ["new:A", "new:B", "resolved:B", "new:C"], ["new:C"], ["new:A", "new:B", "resolved:B"], 0,
                 id="capacity-one"),
]


@pytest.mark.parametrize("capacity, puts, after, dropped, coalesced", QUEUE)
def test_queue_bound(capacity: int, puts: list[str], after: list[str], dropped: list[str],
                     coalesced: int) -> None:
    q = SinkQueue(capacity)
    got_dropped: list[str] = []
    got_coalesced = 0
    for spec in puts:
        result = q.put(n(spec))
        got_dropped += [d.id for d in result.dropped]
        got_coalesced += result.coalesced
        assert len(q) <= capacity
    assert [x.id for x in q] == after
    assert got_dropped == dropped
    assert got_coalesced == coalesced


def test_the_notification_being_sent_is_never_dropped() -> None:
    q = SinkQueue(2)
    q.put(n("new:A"))
    never = threading.Event()
    entry = q.take(never, never)
    assert entry is not None and entry.note.id == "new:A"
    q.put(n("new:B"))
    assert q.put(n("new:C")).dropped == (n("new:B"),)
    assert [x.id for x in q] == ["new:A", "new:C"]
    one = SinkQueue(1)
    one.put(n("new:A"))
    assert one.take(never, never) is not None
    result = one.put(n("new:B"))
    assert (result.queued, [d.id for d in result.dropped]) == (False, ["new:B"])


def test_resize_drops_by_the_same_policy() -> None:
    q = SinkQueue(5)
    for spec in ["repeat:A", "new:B", "resolved:B", "new:C"]:
        q.put(n(spec))
    assert [d.id for d in q.resize(2)] == ["new:B", "repeat:A"]
    assert [x.id for x in q] == ["resolved:B", "new:C"]


@pytest.mark.parametrize("failures, rand, retry_after, expected", [
    (1, 0.0, None, 0.5),
    (1, 0.999999, None, 0.9999995),
    (2, 0.0, None, 1.0),
    (4, 0.0, None, 4.0),
    (10, 0.0, None, 30.0),  # capped: 2**9 > 60, half of 60
    (10, 0.5, None, 45.0),
    (1, 0.0, 20.0, 20.0),  # the receiver's Retry-After
    (1, 0.0, 600.0, 60.0),  # ... still at most the maximum
    (10_000, 0.0, None, 30.0),  # no overflow
])
def test_backoff_delay(failures: int, rand: float, retry_after: float | None, expected: float) -> None:
    assert backoff_delay(failures, 1.0, 60.0, lambda: rand, retry_after) == pytest.approx(expected)


class ScriptedSink:
    """An in-memory sink whose outcome per call is scripted (the real sinks have their own tests)."""

    def __init__(self, outcomes: list[Exception | None] | None = None) -> None:
        self.outcomes = list(outcomes or [])
        self.calls: list[str] = []
        self.lock = threading.Lock()

    @property
    def name(self) -> str:
        return "s"

    @property
    def policy(self) -> SinkPolicy:
        return SinkPolicy()

    def send(self, note: Notification) -> None:
        with self.lock:
            self.calls.append(note.id)
            outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome


def worker_for(sink: ScriptedSink, q: SinkQueue, registry: CollectorRegistry,
               rand: Callable[[], float] = lambda: 0.0) -> Worker:
    metrics = AlertMetrics(registry)
    metrics.add_sink("s", q)
    return Worker(q, sink, metrics, initial_delay=0.001, max_delay=0.01, rand=rand)


def test_worker_delivers_in_order_and_counts() -> None:
    sink = ScriptedSink([SinkError("down"), SinkError("down"), SinkError("no", permanent=True),
                         RuntimeError("a bug")])
    q = SinkQueue(10)
    registry = CollectorRegistry()
    w = worker_for(sink, q, registry)
    for spec in ["new:A", "new:B", "new:C"]:
        q.put(n(spec))
    w.start()
    try:
        wait_for("an empty queue", lambda: len(q) == 0)
        assert sink.calls == ["new:A", "new:A", "new:A", "new:B", "new:B", "new:C"]

        def v(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, {"sink": "s", **labels}) or 0.0
        assert v("portwatch_alerts_sent_total") == 2  # B (after the bug), C
        assert v("portwatch_alerts_failed_total") == 4
        assert v("portwatch_alerts_retried_total") == 3  # A's second and third attempts, B's second
        assert v("portwatch_alerts_dropped_total", reason="rejected") == 1
        assert v("portwatch_alerts_queued") == 0
    finally:
        w.stop()
        assert w.join(10)


def test_drain_on_stop_does_not_wait_for_a_failing_sink() -> None:
    sink = ScriptedSink([SinkError("down")] * 100)
    q = SinkQueue(10)
    registry = CollectorRegistry()
    metrics = AlertMetrics(registry)
    metrics.add_sink("s", q)
    w = Worker(q, sink, metrics, initial_delay=3600.0, max_delay=3600.0)
    q.put(n("new:A"))
    w.start()
    wait_for("a failed attempt", lambda: (registry.get_sample_value("portwatch_alerts_failed_total",
                                                                    {"sink": "s"}) or 0) >= 1)
    w.drain_then_stop(time.monotonic() + 3600.0)
    assert w.join(30), "the worker waited for its hour of backoff"
    assert [x.id for x in q] == ["new:A"]


def test_state_document_round_trip(tmp_path: Path) -> None:
    alert = AlertState("r/A", "r", "A", Severity.WARNING, since=1.0, fired_at=2.0, finding={"key": "A"},
                       send_resolved=False, notified={"s": 2.0, "t": 3.5})
    pending = [(n("new:A"), 0), (n("resolved:B"), 7)]
    doc = to_document({"r/A": alert, "r/P": AlertState("r/P", "r", "P", Severity.INFO, since=1.0)}, pending, 9.0)
    assert [a["key"] for a in doc["alerts"]] == ["r/A"]  # pending alerts are not kept
    path = tmp_path / "alerts.json"
    write_atomic(path, doc)
    saved = load(path)
    assert dict(saved.alerts) == {"r/A": alert}
    assert list(saved.pending) == pending
    saved2, problems = from_document({**doc, "pending": [{"attempts": -1, "notification": {}}, "x"]})
    assert problems == ["pending[0]: attempts is not a count", "pending[1]: not an object"]
    with pytest.raises(ValueError, match="unsupported version"):
        from_document({**doc, "version": 99})


def test_nan_in_saved_state_is_skipped_so_the_next_save_succeeds(tmp_path: Path) -> None:
    # Python's JSON reader accepts NaN; kept, it made every later save raise in the writer thread.
    alert = AlertState("r/A", "r", "A", Severity.WARNING, since=1.0, fired_at=2.0, finding={"key": "A"},
                       send_resolved=True, notified={"s": 2.0})
    good = AlertState("r/B", "r", "B", Severity.WARNING, since=1.0, fired_at=2.0, finding={"key": "B"},
                      send_resolved=True, notified={"s": 2.0})
    path = tmp_path / "alerts.json"
    write_atomic(path, to_document({"r/A": alert, "r/B": good}, [(n("new:A"), 0), (n("new:B"), 0)], 9.0))
    text = path.read_text()
    text = text.replace('"key": "A"', '"key": "A", "x": NaN', 2)
    assert text.count("NaN") == 2  # one in the alert's finding, one in a pending notification's
    path.write_text(text)
    warnings: list[str] = []
    saved = load(path, warn=warnings.append)
    assert list(saved.alerts) == ["r/B"]
    assert [note.alert_key for note, _ in saved.pending] == ["B"]
    assert len(warnings) == 1 and "skipped 2 malformed entries" in warnings[0]
    assert "not finite" in warnings[0]
    write_atomic(path, to_document(saved.alerts, saved.pending, 10.0))  # raised ValueError before
    assert "NaN" not in path.read_text()
