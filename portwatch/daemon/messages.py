"""What other threads tell the daemon's loop, and the book of findings found between passes.

Job: the messages the loop's queue carries besides signal numbers —
:class:`Rescan` (run a pass now) and :class:`EventFindings` (findings found
between passes, e.g. by the socket-destroy listeners) — and
:class:`FindingsBook`, the protocol of what keeps the latter until they
expire (:class:`ExpiringFindings` is the default; a richer one can be handed
to :class:`~portwatch.daemon.loop.Daemon` as ``book``). Any thread posts with
``daemon.events.put(message)`` (:class:`queue.SimpleQueue` is thread- and
signal-safe); the loop takes everything queued at once, so messages are
coalesced like signals: however many :class:`Rescan` came, one pass runs.

:func:`install_signal_handlers` makes the handled signals only put their
number on the queue; :func:`take_queued` takes what is queued in one look.

May import the standard library, :mod:`portwatch.model` and
:mod:`portwatch.detect.transient` (pure: the book's lifecycle).
"""

from __future__ import annotations

import queue
import signal
from dataclasses import dataclass
from typing import Protocol, Sequence, Union

from portwatch.detect.transient import TransientBook
from portwatch.model import Finding

__all__ = ["DEFAULT_EVENT_WINDOW", "HANDLED_SIGNALS", "MAX_EVENTS_AT_ONCE", "EventFindings", "ExpiringFindings",
           "FindingsBook", "Message", "Rescan", "book_due", "install_signal_handlers", "take_queued"]

#: The signals the daemon handles (everything else keeps its default action).
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)

#: At most this many queued events are taken in one look (a bound on the drain).
MAX_EVENTS_AT_ONCE = 4096

#: Seconds an event finding stays active after it was last reported (the default book's window).
DEFAULT_EVENT_WINDOW = 300.0


@dataclass(frozen=True)
class Rescan:
    """Run a pass now (e.g. events were lost); ``reason`` is logged at debug level."""

    reason: str


@dataclass(frozen=True)
class EventFindings:
    """Findings found between passes; the loop keeps them active (through its book) until they expire."""

    findings: tuple[Finding, ...]


#: What the daemon's queue carries: a signal number or a message.
Message = Union[int, Rescan, EventFindings]


class FindingsBook(Protocol):
    """What keeps event findings between passes and says which are still active.

    The loop calls :meth:`add` with every :class:`EventFindings` it takes,
    and :meth:`current` after every pass and every add: the findings it
    returns join the pass's in the active set (state history, logs,
    alerting, index page; a key the pass found too is the pass's). Both are
    called from the loop's thread only.
    """

    def add(self, findings: Sequence[Finding], now: float) -> None:
        """Take ``findings`` reported at Unix time ``now``."""

    def current(self, now: float) -> tuple[Finding, ...]:
        """The findings still active at Unix time ``now``."""



def book_due(book: FindingsBook, now: float) -> float | None:
    """When ``book``'s :meth:`~FindingsBook.current` next changes by itself (a finding goes quiet).

    A book may say so with a ``due(now) -> float | None`` method (Unix time;
    :class:`ExpiringFindings` has one); without it, None: its findings then
    leave the active set at the next pass or add only.
    """
    due = getattr(book, "due", None)
    value = due(now) if callable(due) else None
    return float(value) if isinstance(value, (int, float)) else None


class ExpiringFindings:
    """The daemon's book: a finding stays active ``window`` seconds after it was last added (by key).

    A :class:`~portwatch.detect.transient.TransientBook` underneath (the
    lifecycle ``portwatch watch`` uses too): one entry per key with its
    first and last report and how often it came; the latest report is the
    finding shown. ``window`` may be changed (a reload). At most ``limit``
    keys (the quietest go first).
    """

    def __init__(self, window: float = DEFAULT_EVENT_WINDOW, limit: int = 10_000) -> None:
        """Take the window (seconds, positive) and the most findings kept. Raises ValueError."""
        self._book = TransientBook(window, limit)
        self._keys: set[str] = set()  # added, not yet expired

    @property
    def window(self) -> float:
        """Seconds a finding stays active after its last report."""
        return self._book.quiet_period

    @window.setter
    def window(self, seconds: float) -> None:
        self._book.quiet_period = seconds

    def add(self, findings: Sequence[Finding], now: float) -> None:
        self._book.add(findings, now)
        self._keys.update(f.key for f in findings)

    def current(self, now: float) -> tuple[Finding, ...]:
        self._keys.difference_update(f.key for f in self._book.expire(now))
        return tuple(e.finding for e in self._book.active(now))

    def due(self, now: float) -> float | None:
        """The Unix time just after the quietest finding's window ends (None: no finding)."""
        entries = [e for e in map(self._book.get, self._keys) if e is not None]
        # just past the window: TransientBook expires what is strictly older than it
        return min(e.last_seen for e in entries) + self.window + 0.001 if entries else None


def take_queued(events: queue.SimpleQueue[Message], timeout: float) -> list[Message]:
    """Every message queued within ``timeout`` seconds (empty when none came).

    Waits for the first message at most ``timeout``, and takes the ones
    queued behind it without waiting (at most :data:`MAX_EVENTS_AT_ONCE`),
    so a burst of signals or messages is handled as one.
    """
    try:
        taken: list[Message] = [events.get(timeout=max(timeout, 0.0))]
    except queue.Empty:
        return []
    while len(taken) < MAX_EVENTS_AT_ONCE:
        try:
            taken.append(events.get_nowait())
        except queue.Empty:
            break
    return taken


def install_signal_handlers(events: queue.SimpleQueue[Message]) -> None:
    """Make SIGHUP, SIGTERM and SIGINT only put their number on ``events``."""
    def handler(signum: int, _frame: object) -> None:
        events.put(signum)

    for sig in HANDLED_SIGNALS:
        signal.signal(sig, handler)
