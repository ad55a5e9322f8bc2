"""The daemon's event thread on real namespaces: findings, following namespaces, losses, no death.

Each test starts an :class:`~portwatch.daemon.events.EventThread` watching
namespaces it creates, makes real sockets inside them (threads that entered
them, see :mod:`tests.test_events`) and waits, bounded, for the callbacks.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry

from portwatch.collect import discover_namespaces
from portwatch.collect.eventwatch import EventWatcher
from portwatch.daemon.events import EventCounts, EventsCollector, EventThread
from portwatch.model import Finding, Kind, NamespaceInfo
from tests.netns import NetNS
from tests.test_events import in_netns, self_connect_once, udp_sockets


def info_of(ns: NetNS) -> NamespaceInfo:
    """The discovered description of the test namespace ``ns``."""
    for info in discover_namespaces().namespaces:
        if f"/run/netns/{ns.name}" in info.paths:
            return info
    raise AssertionError(f"namespace {ns.name} not discovered")


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` every 10 ms for ``timeout`` seconds; whether it held."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


class Received:
    """What the thread's callbacks received (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.findings: list[Finding] = []
        self.lost: list[NamespaceInfo] = []

    def on_findings(self, findings: list[Finding]) -> None:
        with self.lock:
            self.findings.extend(findings)

    def on_lost(self, ns: NamespaceInfo) -> None:
        with self.lock:
            self.lost.append(ns)


def started(received: Received, counts: EventCounts | None = None,
            watcher_factory: Callable[[], EventWatcher] = EventWatcher) -> EventThread:
    """A started thread reporting to ``received``, turning every 50 ms."""
    thread = EventThread(received.on_findings, received.on_lost, poll_interval=0.05, counts=counts,
                         watcher_factory=watcher_factory)
    thread.start()
    return thread


def small_range(ns: NetNS) -> None:
    ns.sysctl("net/ipv4/ip_local_port_range", "40000 40009")


def test_a_self_connect_living_20_ms_reaches_on_findings_within_2_s_and_is_counted(netns: NetNS) -> None:
    small_range(netns)
    received = Received()
    counts = EventCounts()
    registry = CollectorRegistry()
    registry.register(EventsCollector(counts))
    info = info_of(netns)
    thread = started(received, counts=counts)
    try:
        thread.set_namespaces([info])
        assert wait_for(lambda: thread.namespaces == (info,), 2.0)
        in_netns(netns, lambda: self_connect_once(40000, 0.02))
        closed_at = time.monotonic()
        assert wait_for(lambda: bool(received.findings), 2.0), "no finding within 2 s"
        assert time.monotonic() - closed_at < 2.0
    finally:
        assert thread.stop(2.0)
    (f,) = received.findings
    assert f.kind is Kind.SELF_CONNECT and f.port == 40000 and f.details["transient"] is True
    assert f.namespace == info and f.key.endswith(f"@{info.key}")
    assert registry.get_sample_value("portwatch_transient_findings_total", {"kind": "self_connect"}) == 1
    assert registry.get_sample_value("portwatch_transient_findings_total", {"kind": "loop_pair"}) == 0
    events = registry.get_sample_value("portwatch_events_total")
    assert events is not None and events >= 1
    assert registry.get_sample_value("portwatch_events_dropped_total") == 0


def test_a_namespace_added_later_gets_a_listener_and_a_deleted_one_releases_it(netns: NetNS) -> None:
    received = Received()
    watchers: list[EventWatcher] = []

    def factory() -> EventWatcher:
        watchers.append(EventWatcher())
        return watchers[-1]

    first = info_of(netns)
    thread = started(received, watcher_factory=factory)
    later: NetNS | None = None
    try:
        thread.set_namespaces([first])
        assert wait_for(lambda: thread.namespaces == (first,), 2.0)
        later = NetNS()  # created after the thread started, found by the next pass
        small_range(later)
        second = info_of(later)
        thread.set_namespaces([first, second])
        assert wait_for(lambda: set(thread.namespaces) == {first, second}, 2.0)
        in_netns(later, lambda: self_connect_once(40000, 0.02))
        assert wait_for(lambda: bool(received.findings), 2.0)
        assert [f.namespace for f in received.findings] == [second]
        subprocess_del(later)
        thread.set_namespaces([first])  # the next pass no longer finds it
        assert wait_for(lambda: thread.namespaces == (first,), 2.0)
        (watcher,) = watchers
        assert watcher.listener(second) is None and watcher.listener(first) is not None
    finally:
        assert thread.stop(2.0)
        if later is not None:
            later.close()
    assert watchers[0].namespaces == ()  # stop closed every listener


def subprocess_del(ns: NetNS) -> None:
    """Delete ``ns`` now (its fixture's close() then finds nothing left to do)."""
    import subprocess

    subprocess.run(["ip", "netns", "del", ns.name], check=True)


def test_a_burst_into_a_small_buffer_calls_on_lost_and_counts_the_drops(netns: NetNS) -> None:
    received = Received()
    counts = EventCounts()
    info = info_of(netns)
    thread = started(received, counts=counts, watcher_factory=lambda: EventWatcher(buffer_bytes=4096))
    try:
        thread.set_namespaces([info])
        assert wait_for(lambda: thread.namespaces == (info,), 2.0)
        in_netns(netns, lambda: udp_sockets(30_000))
        assert wait_for(lambda: bool(received.lost), 5.0), "no loss reported"
    finally:
        assert thread.stop(2.0)
    assert received.lost[0] == info
    events, dropped, _ = counts.read()
    assert dropped >= 1 and events < 30_000


def test_the_thread_survives_failing_callbacks_and_a_failing_watcher(netns: NetNS) -> None:
    small_range(netns)
    calls: list[int] = []
    attempts: list[int] = []

    def on_findings(findings: list[Finding]) -> None:
        calls.append(len(findings))
        raise RuntimeError("the daemon's side failed")

    def factory() -> EventWatcher:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("no netlink today")
        return EventWatcher()

    info = info_of(netns)
    thread = EventThread(on_findings, lambda ns: None, poll_interval=0.05, watcher_factory=factory)
    thread.start()
    try:
        thread.set_namespaces([info])
        assert wait_for(lambda: thread.namespaces == (info,), 3.0)
        for port in (40000, 40002):
            in_netns(netns, lambda: self_connect_once(port, 0.02))
            assert wait_for(lambda: len(calls) >= (1 if port == 40000 else 2), 2.0)
        assert thread.alive and len(attempts) == 2
        began = time.monotonic()
    finally:
        assert thread.stop(2.0)
    assert time.monotonic() - began < 2.0 and not thread.alive
