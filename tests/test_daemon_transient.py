"""The daemon and its socket-destroy listeners on real namespaces: transient findings end to end.

Each test runs a :class:`~portwatch.daemon.loop.Daemon` in-process (its loop
on a thread, the real pass over the namespaces the test creates, the real
event thread, the real HTTP server and alerting) with a 60 s interval, so
what happens between passes can only come from the destroy events. A
self-connect that lives 20 ms reaches a REAL webhook receiver and moves
``portwatch_transient_findings_total`` in ``/metrics``; namespaces created
and deleted while the daemon runs are followed; a burst into a small forced
buffer is counted and makes a pass run at once; the alert resolves after the
quiet period. Latencies are printed (``-s``) and asserted only with bounds
CI load allows.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from portwatch.alerts.notification import Notification, Reason, Status
from portwatch.alerts.sinks.alertmanager import labels_for
from portwatch.collect.eventwatch import EventWatcher
from portwatch.config import Config, WebConfig, load_yaml, parse_config
from portwatch.daemon import Daemon, Message
from portwatch.daemon.events import DaemonEvents, EventCounts, EventThread, OnFindings, OnLost
from portwatch.daemon.wiring import SideThread
from portwatch.model import NamespaceInfo, Severity
from tests.alertmanager import Receiver, receiver, wait_for  # noqa: F401 (fixture)
from tests.netns import NetNS
from tests.test_daemon import parse_exposition, value
from tests.test_alerts_webhook import webhook_config
from tests.test_daemon_events import info_of, subprocess_del
from tests.test_daemon_namespaces import made, token  # noqa: F401 (fixtures)
from tests.test_events import in_netns, self_connect_once, udp_sockets

TINY = "40000 40009"
#: The bound of every latency assertion: far above the 2 s the issue asks, for loaded CI machines.
BOUND = 10.0


def config_for(tmp_path: Path, url: str, include: list[str], quiet: str = "2s", interval: str = "60s") -> Config:
    """``interval`` (60 s) between passes, the namespaces ``include`` names, a webhook at ``url``, ``events.quiet_period``."""
    config = parse_config(load_yaml(f"""
interval: {interval}
state_directory: {tmp_path / 'state'}
namespaces:
  scan: all
  include: {include!r}
events:
  listen: true
  quiet_period: {quiet}
"""))
    return replace(config, web=WebConfig(listen_address="127.0.0.1:0"),  # any free port
                   alerts=webhook_config(url, rule="      send_resolved: true"))


class Running:
    """A daemon running on a thread; :meth:`stop` sends SIGTERM through its queue and waits."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.codes: list[int] = []
        self.thread = threading.Thread(target=lambda: self.codes.append(daemon.run()), daemon=True)
        self.thread.start()
        wait_for("the daemon started", lambda: daemon.started or None)

    @property
    def events(self) -> DaemonEvents:
        (side,) = [t for t in self.daemon.side.threads if isinstance(t, DaemonEvents)]
        return side

    def watching(self) -> tuple[NamespaceInfo, ...]:
        thread = self.events.thread
        return thread.namespaces if thread is not None else ()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        host, port = self.daemon.server.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
            return parse_exposition(r.read().decode())

    def stop(self) -> int:
        self.daemon.events.put(signal.SIGTERM)
        self.thread.join(60)
        assert not self.thread.is_alive(), "the daemon did not stop"
        return self.codes[0]


def tiny(made: list[NetNS]) -> NetNS:
    ns = NetNS()
    made.append(ns)
    ns.sysctl("net/ipv4/ip_local_port_range", TINY)
    return ns


def start(tmp_path: Path, receiver: Receiver, namespaces: list[NetNS], **kw: Any) -> Running:
    config = config_for(tmp_path, receiver.url, [ns.name for ns in namespaces])
    return Running(Daemon(config, **kw))


def transient_count(run: Running) -> float:
    return value(run.metrics(), "portwatch_transient_findings_total", kind="self_connect") or 0.0


def firing_hooks(receiver: Receiver, status: str) -> list[dict[str, Any]]:
    return [d for d in (r.json for r in receiver.accepted()) if d["status"] == status]


def self_connect_reaches_the_webhook(run: Running, receiver: Receiver, ns: NetNS, between_passes: bool = True) -> float:
    """A 20 ms self-connect in ``ns``: its webhook document and the counter; the seconds it took.

    ``between_passes``: also check that no pass ran meanwhile (the finding came from the events).
    """
    info = info_of(ns)
    wait_for(f"a listener in {ns.name}", lambda: info in run.watching() or None)
    before = transient_count(run)
    scans = run.daemon.scans
    in_netns(ns, lambda: self_connect_once(40000, 0.02))
    closed = time.monotonic()
    (doc,) = wait_for("the transient finding at the webhook",
                      lambda: [d for d in firing_hooks(receiver, "firing")
                               if d["finding"]["key"] == f"self_connect:tcp:127.0.0.1:40000@{info.key}"] or None,
                      timeout=BOUND)
    took = time.monotonic() - closed
    wait_for("portwatch_transient_findings_total moved", lambda: transient_count(run) > before or None,
             timeout=BOUND)
    counted = time.monotonic() - closed
    print(f"\nself-connect in {ns.name} -> webhook {took * 1000:.0f} ms, -> /metrics {counted * 1000:.0f} ms")
    finding = doc["finding"]
    assert finding["kind"] == "self_connect" and finding["port"] == 40000
    assert finding["details"]["transient"] is True
    assert finding["namespace"]["key"] == info.key
    if between_passes:
        assert run.daemon.scans == scans, "a pass ran: the finding must come from the events"
    assert took < BOUND and counted < BOUND
    return took


def test_a_20_ms_self_connect_reaches_a_real_webhook_and_the_counter_between_passes_in_two_namespaces(
        tmp_path: Path, receiver: Receiver, made: list[NetNS]) -> None:
    first, second = tiny(made), tiny(made)
    run = start(tmp_path, receiver, [first, second])
    try:
        self_connect_reaches_the_webhook(run, receiver, first)
        self_connect_reaches_the_webhook(run, receiver, second)
        assert run.daemon.scans == 1  # only the first pass ran: interval 60 s
    finally:
        assert run.stop() == 0
    assert run.events.thread is None  # stopped with the daemon


def test_the_transient_alert_resolves_after_the_quiet_period(
        tmp_path: Path, receiver: Receiver, made: list[NetNS]) -> None:
    ns = tiny(made)
    run = start(tmp_path, receiver, [ns])  # quiet_period: 2s
    try:
        self_connect_reaches_the_webhook(run, receiver, ns)
        fired = time.monotonic()
        (resolved,) = wait_for("the resolved notification", lambda: [
            d for d in firing_hooks(receiver, "resolved") if d["finding"]["kind"] == "self_connect"] or None,
            timeout=BOUND + 2)
        after = time.monotonic() - fired
        print(f"resolved {after:.2f} s after it fired (quiet period 2 s)")
        assert resolved["finding"]["details"]["transient"] is True
        assert after >= 1.5  # not before the quiet period (less the delivery time of the firing one)
        assert run.daemon.scans == 1  # resolved by the quiet period, not by a pass
    finally:
        assert run.stop() == 0


def test_a_namespace_created_after_the_start_gets_its_listener_and_a_deleted_one_releases_it(
        tmp_path: Path, receiver: Receiver, made: list[NetNS]) -> None:
    first = tiny(made)
    run = Running(Daemon(config_for(tmp_path, receiver.url, [first.name, "pwlate*"], interval="1s")))
    try:
        wait_for("the first listener", lambda: info_of(first) in run.watching() or None)
        late = NetNS("pwlate")
        made.append(late)
        late.sysctl("net/ipv4/ip_local_port_range", TINY)
        info = info_of(late)
        wait_for("the late namespace's listener (next pass)", lambda: info in run.watching() or None,
                 timeout=BOUND)
        self_connect_reaches_the_webhook(run, receiver, late, between_passes=False)
        subprocess_del(late)
        wait_for("the deleted namespace released", lambda: info not in run.watching() or None, timeout=BOUND)
        assert info_of(first) in run.watching()
    finally:
        assert run.stop() == 0


def small_buffer_events(config: Config, post: Callable[[Message], None], registry: CollectorRegistry) -> SideThread:
    """The real event side thread, its listeners with a 4 KiB receive buffer."""
    def thread(on_findings: OnFindings, on_lost: OnLost, config: Config, counts: EventCounts, keyed: bool,
               window: float) -> EventThread:
        return EventThread(on_findings, on_lost, config=config, counts=counts, keyed=keyed, window=window,
                           watcher_factory=lambda: EventWatcher(buffer_bytes=4096))
    return DaemonEvents(config, post, registry, thread_factory=thread)


def test_a_burst_into_a_small_buffer_is_counted_and_a_pass_runs_at_once(
        tmp_path: Path, receiver: Receiver, made: list[NetNS]) -> None:
    ns = tiny(made)
    run = start(tmp_path, receiver, [ns], side_threads=(small_buffer_events,))
    try:
        wait_for("the listener", lambda: info_of(ns) in run.watching() or None)
        before = value(run.metrics(), "portwatch_scans_total") or 0.0
        in_netns(ns, lambda: udp_sockets(30_000))
        burst = time.monotonic()
        m = wait_for("a pass after the loss", lambda: (m if (value(m := run.metrics(), "portwatch_scans_total")
                                                             or 0.0) > before else None), timeout=BOUND)
        print(f"\nrescan {time.monotonic() - burst:.2f} s after the burst")
        dropped = value(m, "portwatch_events_dropped_total")
        events = value(m, "portwatch_events_total")
        assert dropped is not None and dropped >= 1
        assert events is not None and events < 30_000
    finally:
        assert run.stop() == 0


def test_alertmanager_labels_say_transient_only_for_a_transient_finding() -> None:
    def note(details: dict[str, Any]) -> Notification:
        return Notification(id="n1", sink="am", alert_key="page/self_connect:tcp:127.0.0.1:40000", rule="page",
                            status=Status.FIRING, reason=Reason.NEW, severity=Severity.CRITICAL, starts_at=1.0,
                            created_at=1.0, host="h", finding={"kind": "self_connect", "details": details})
    assert labels_for(note({"transient": True}), {})["transient"] == "true"
    assert "transient" not in labels_for(note({}), {})
    assert "transient" not in labels_for(note({"transient": "yes"}), {})  # only the JSON true


def test_events_listen_false_runs_no_listener_and_a_reload_turning_it_on_starts_one(
        tmp_path: Path, receiver: Receiver, made: list[NetNS]) -> None:
    ns = tiny(made)
    on = config_for(tmp_path, receiver.url, [ns.name])
    off = replace(on, events=replace(on.events, listen=False))
    configs = [on]
    run = Running(Daemon(off, load=lambda _path: configs[0]))
    try:
        assert run.events.thread is None and run.watching() == ()
        run.daemon.events.put(signal.SIGHUP)  # listen: true from now on
        wait_for("a listener after the reload", lambda: run.events.thread is not None or None)
        info = info_of(ns)
        wait_for("its namespace watched at once (the last pass's)", lambda: info in run.watching() or None)
    finally:
        assert run.stop() == 0
