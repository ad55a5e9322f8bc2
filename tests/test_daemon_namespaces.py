"""The daemon over several network namespaces: real namespaces the tests create, a real
``portwatch run`` scanning them (its /metrics scraped by a REAL Prometheus, its alerts
posted to a REAL Alertmanager), the ``max_series`` cap, exclusion by pattern and SIGHUP;
in-process: messages from other threads (Rescan, EventFindings through a replaceable
book), the capability note logged once, the namespaces config section, and the state's
listeners per namespace (loadable from the format before namespaces)."""

from __future__ import annotations

import html
import json
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from portwatch.collect import OWN_NAMESPACE_NOTE, Collector, discover_namespaces
from portwatch.config import Config, ConfigError, WebConfig, load_yaml, parse_config
from portwatch.config.types import NamespacesConfig, namespace_selected
from portwatch.daemon import EXIT_OK, Daemon, EventFindings, Rescan
from portwatch.daemon.state import (
    HOST_KEY,
    ListenerRecord,
    State,
    from_document,
    remembered_by_namespace,
    to_document,
    update_namespace_listeners,
)
from portwatch.daemon.wiring import Remembered, default_pass
from portwatch.model import Finding, Kind, NamespaceInfo, NamespaceKind, Protocol, RememberedPort, Severity
from portwatch.model.results import NamespacesResult
from portwatch.scan import make_source
from tests.builders import listen, snap
from tests.conftest import require_binary
from tests.netns import NetNS
from tests.promserver import PrometheusServer
from tests.test_alerts_netns import TINY, config_text, start_alertmanager
from tests.test_daemon import METRICS_PORT, WAIT, RealDaemon, result_of, samples, scans, value, wait_for

# =============================================================================== real namespaces


@pytest.fixture
def token() -> str:
    """A word unique to this test run: the namespaces it makes are named after it."""
    return f"pw{uuid.uuid4().hex[:6]}"


@pytest.fixture
def made(token: str) -> Iterator[list[NetNS]]:
    """Namespaces the test adds to (each removed, with its processes, afterwards)."""
    namespaces: list[NetNS] = []
    try:
        yield namespaces
    finally:
        for ns in namespaces:
            ns.close()


def add(made: list[NetNS], prefix: str) -> NetNS:
    ns = NetNS(prefix)
    made.append(ns)
    return ns


def with_listener(made: list[NetNS], prefix: str) -> NetNS:
    """A namespace whose own range is 20000-20999 with a listener on 20005 (outside the host's range)."""
    ns = add(made, prefix)
    ns.sysctl("net/ipv4/ip_local_port_range", "20000 20999")
    ns.actor("listen", "--port", "20005")
    return ns


def with_self_connect(made: list[NetNS], prefix: str) -> tuple[NetNS, int]:
    ns = add(made, prefix)
    ns.sysctl("net/ipv4/ip_local_port_range", TINY)
    _proc, info = ns.actor("self-connect")
    return ns, int(info["port"])


def namespaces_config(include: Sequence[str], exclude: Sequence[str] = (), max_series: int = 512) -> str:
    return (f"namespaces:\n  scan: all\n  include: {json.dumps(list(include))}\n"
            f"  exclude: {json.dumps(list(exclude))}\n  max_series: {max_series}\n")


def netns_labels(m: dict[Any, float], name: str) -> set[str]:
    return {dict(labels)["netns"] for (n, labels), _v in m.items() if n == name}


def test_prometheus_scrapes_netns_labels_of_the_namespaces_scanned_and_the_cap_counts_the_rest(
        netns: NetNS, made: list[NetNS], token: str, tmp_path: Path) -> None:
    require_binary("prometheus")
    ranged = with_listener(made, f"{token}-ranged")
    selfc, _port = with_self_connect(made, f"{token}-selfc")
    clean = [add(made, f"{token}-clean{i}") for i in range(2)]
    config = f"interval: 1s\nstate_directory: {tmp_path / 'state'}\n" + namespaces_config([f"{token}-*"], max_series=2)
    daemon = RealDaemon(netns, tmp_path, config)
    try:
        m = daemon.wait_metrics("a pass over the four namespaces",
                                lambda m: value(m, "portwatch_namespaces", kind="named") == 4
                                and netns_labels(m, "portwatch_findings") == {ranged.name, selfc.name})
        assert value(m, "portwatch_namespaces_left_out") == 2  # the two clean ones: fewest findings
        with PrometheusServer(f"127.0.0.1:{METRICS_PORT}", wrap=netns.wrap) as prom:
            prom.wait_for('up{job="portwatch"} == 1')
            highs = prom.wait_for("portwatch_ephemeral_port_range_high")
            assert {s["metric"]["netns"]: float(s["value"][1]) for s in highs} == {ranged.name: 20999.0,
                                                                                  selfc.name: 40009.0}
            listener = prom.wait_for('portwatch_listener_in_ephemeral_range{port="20005"}')
            assert [s["metric"]["netns"] for s in listener] == [ranged.name]
            found = prom.wait_for('portwatch_findings{kind="self_connect",severity="critical"} == 1')
            assert [s["metric"]["netns"] for s in found] == [selfc.name]
            left_out = prom.wait_for("portwatch_namespaces_left_out")
            assert float(left_out[0]["value"][1]) == 2
            assert not prom.query(f'portwatch_sockets{{netns=~"{clean[0].name}|{clean[1].name}"}}')
            assert not prom.query('portwatch_sockets{netns="host"}')  # not included: not scanned
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr.read_text()


def test_exclude_by_pattern_and_sighup_changing_include_and_exclude(
        netns: NetNS, made: list[NetNS], token: str, tmp_path: Path) -> None:
    keep = with_listener(made, f"{token}-keep")
    drop, port = with_self_connect(made, f"{token}-drop")
    state = tmp_path / "state"
    base = f"interval: 1s\nstate_directory: {state}\n"
    daemon = RealDaemon(netns, tmp_path, base + namespaces_config([f"{token}-*"], exclude=[f"{token}-drop*"]))
    try:
        m = daemon.wait_metrics("the kept namespace scanned", lambda m: scans(m) >= 2)
        assert netns_labels(m, "portwatch_ephemeral_ports_usable") == {keep.name}
        assert value(m, "portwatch_findings", netns=keep.name, kind="listener_in_ephemeral_range",
                     severity="warning") == 1

        # SIGHUP: no exclude any more: the dropped namespace is scanned from the next pass on
        daemon.write_config(base + namespaces_config([f"{token}-*"]))
        daemon.signal(signal.SIGHUP)
        m = daemon.wait_metrics("the second namespace after SIGHUP",
                                lambda m: drop.name in netns_labels(m, "portwatch_ephemeral_ports_usable"))
        assert value(m, "portwatch_findings", netns=drop.name, kind="self_connect", severity="critical") == 1
        assert value(m, "portwatch_namespaces", kind="named") == 2

        # SIGHUP: only the other one included: the first one's series and finding go
        daemon.write_config(base + namespaces_config([f"{token}-d?op-*"]))
        daemon.signal(signal.SIGHUP)
        m = daemon.wait_metrics("only the included namespace",
                                lambda m: netns_labels(m, "portwatch_ephemeral_ports_usable") == {drop.name})
        assert value(m, "portwatch_config_last_reload_successful") == 1
    finally:
        assert daemon.stop() == 0
    saved = {f["key"]: f for f in json.loads((state / "state.json").read_text())["findings"]}
    assert saved[f"listener_in_ephemeral_range:tcp:20005@{keep.name}"]["resolved_at"] is not None
    assert saved[f"self_connect:tcp:127.0.0.1:{port}@{drop.name}"]["resolved_at"] is None  # active at the stop
    assert "Traceback" not in daemon.stderr.read_text()


def test_a_self_connect_in_a_namespace_reaches_alertmanager_with_its_netns_label(
        netns: NetNS, made: list[NetNS], token: str, tmp_path: Path) -> None:
    am = start_alertmanager(netns, tmp_path)
    inside, port = with_self_connect(made, f"{token}-am")
    state = tmp_path / "state"
    daemon = RealDaemon(netns, tmp_path, config_text(state, extra=namespaces_config([inside.name])))
    try:
        (alert,) = wait_for("the self-connect in Alertmanager",
                            lambda: am.find(alertname="PortwatchSelfConnect") or None,
                            proc=daemon.proc, stderr=daemon.stderr)
        labels = alert["labels"]
        assert labels["netns"] == inside.name
        assert labels["key"] == f"self_connect:tcp:127.0.0.1:{port}@{inside.name}"
        assert labels["port"] == str(port) and labels["severity"] == "critical"
        assert "container" not in labels and "pod" not in labels  # an `ip netns` namespace has neither
    finally:
        assert daemon.stop() == 0
        am.stop()


# =============================================================================== in-process


@dataclass
class Passes:
    """A pass function returning scripted results, recording when each pass ran."""

    result: NamespacesResult
    daemon: Daemon | None = None
    at: list[float] = field(default_factory=list)
    remembered: list[Remembered] = field(default_factory=list)
    stop_after: int = 1_000_000

    def __call__(self, config: Config, collector: object, remembered: Remembered) -> NamespacesResult:
        assert self.daemon is not None
        self.at.append(time.monotonic())
        self.remembered.append(dict(remembered))
        if len(self.at) >= self.stop_after:
            self.daemon.events.put(signal.SIGTERM)
        return self.result


def in_process(tmp_path: Path, passes: Passes, interval: float = 3600.0, **kw: Any) -> Daemon:
    config = Config(interval=interval, state_directory=tmp_path / "state",
                    web=WebConfig(listen_address="127.0.0.1:0"))
    d = Daemon(config, pass_=passes, collector_factory=lambda c: None, **kw)  # type: ignore[arg-type, return-value]
    passes.daemon = d
    return d


def run_in_thread(d: Daemon) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(d.run()), daemon=True)
    thread.start()
    return thread, codes


def one_namespace(name: str = "blue") -> NamespacesResult:
    ns = NamespaceInfo(inode=4026532999, dev=4, kind=NamespaceKind.NAMED, name=name)
    result = result_of(replace(snap([listen("0.0.0.0:40100")], (40000, 40999)), namespace=ns))
    return NamespacesResult((result,), duration=0.01)


def test_a_rescan_posted_from_another_thread_runs_a_pass_at_once(tmp_path: Path) -> None:
    passes = Passes(one_namespace())
    d = in_process(tmp_path, passes)  # the next pass by the timer: an hour away
    thread, codes = run_in_thread(d)
    wait_for("the first pass and the bind", lambda: d.ready())
    for _ in range(5):  # coalesced: however many arrive together, passes follow one by one
        d.events.put(Rescan("events were lost"))
    wait_for("a pass after the Rescan", lambda: len(passes.at) >= 2)
    assert passes.at[1] - passes.at[0] < WAIT  # at once, not at the interval
    d.events.put(signal.SIGTERM)
    thread.join(WAIT)
    assert codes == [EXIT_OK]
    assert len(passes.at) <= 6


class Book:
    """A findings book that keeps what it is given until ``expire()``; records its calls."""

    def __init__(self) -> None:
        self.kept: list[Finding] = []
        self.added: list[tuple[str, ...]] = []

    def add(self, findings: Sequence[Finding], now: float) -> None:
        self.added.append(tuple(f.key for f in findings))
        self.kept.extend(findings)

    def current(self, now: float) -> tuple[Finding, ...]:
        return tuple(self.kept)

    def expire(self) -> None:
        self.kept = []


TRANSIENT = Finding(kind=Kind.SELF_CONNECT, severity=Severity.CRITICAL, key="self_connect:tcp:127.0.0.1:40003",
                    summary="127.0.0.1:40003 was connected to itself (seen in a destroy event)", port=40003,
                    protocol=Protocol.TCP)


def test_event_findings_join_the_active_set_through_the_book_until_it_lets_them_go(tmp_path: Path) -> None:
    book = Book()
    passes = Passes(one_namespace())
    d = in_process(tmp_path, passes, book=book)
    thread, codes = run_in_thread(d)
    wait_for("the first pass", lambda: d.ready())
    threading.Thread(target=lambda: d.events.put(EventFindings((TRANSIENT,)))).start()
    wait_for("the event finding active", lambda: TRANSIENT.key in d.state.active_keys())
    assert book.added == [(TRANSIENT.key,)]
    assert "connected to itself (seen in a destroy event)" in d.index_html()
    assert value(samples(d.registry), "portwatch_findings_detected_total", kind="self_connect") == 1
    assert len(passes.at) == 1  # recorded without a pass
    book.expire()
    d.events.put(Rescan("test"))
    wait_for("the event finding resolved by the next pass", lambda: TRANSIENT.key not in d.state.active_keys())
    assert d.state.findings[TRANSIENT.key].resolved_at is not None
    assert "listener_in_ephemeral_range:tcp:40100" in d.state.active_keys()  # the pass's own stays
    d.events.put(signal.SIGTERM)
    thread.join(WAIT)
    assert codes == [EXIT_OK]


def test_without_cap_sys_admin_the_own_namespace_is_scanned_and_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def own_only(config: Config, collector: Collector, remembered: Remembered) -> NamespacesResult:
        result = default_pass(config, collector, remembered, discover=lambda: discover_namespaces(capable=False))
        if len(calls) >= 2:
            d.events.put(signal.SIGTERM)
        calls.append(result)
        return result

    calls: list[NamespacesResult] = []
    config = Config(interval=0.001, state_directory=tmp_path / "state", web=WebConfig(listen_address="127.0.0.1:0"))
    d = Daemon(config, pass_=own_only, collector_factory=lambda c: Collector(make_source("auto")))
    caplog.set_level(logging.INFO, logger="portwatch")
    assert d.run() == EXIT_OK
    assert len(calls) == 3
    assert all(len(r.results) == 1 and r.results[0].snapshot.namespace is not None
               and r.results[0].snapshot.namespace.own for r in calls)
    noted = [r for r in caplog.records if OWN_NAMESPACE_NOTE in r.getMessage()]
    assert len(noted) == 1 and noted[0].levelno == logging.WARNING  # once, not per pass; never an error
    assert html.escape(OWN_NAMESPACE_NOTE) in d.index_html()
    assert "own network namespace only (no CAP_SYS_ADMIN)" in d.index_html()


def test_remembered_listeners_reach_each_namespace_pass_by_its_key(tmp_path: Path) -> None:
    blue = RememberedPort(Protocol.TCP, 40100)
    rec = ListenerRecord(Protocol.TCP, 40100, 0.0, 1_000.0)
    state = State(listeners={}, namespaces={"blue": {blue: rec}})
    assert remembered_by_namespace(state, remember_after=300.0) == {HOST_KEY: frozenset(), "blue": frozenset({blue})}


# =============================================================================== pure: config and state


def test_the_namespaces_section_defaults_parses_and_rejects_with_the_key_named() -> None:
    assert Config().namespaces == NamespacesConfig(scan="all", include=(), exclude=(), max_series=512)
    parsed = parse_config(load_yaml("namespaces:\n  scan: own\n  include: ['pod-*']\n  exclude: [ci-*]\n  max_series: 2\n"))
    assert parsed.namespaces == NamespacesConfig("own", ("pod-*",), ("ci-*",), 2)
    with pytest.raises(ConfigError) as bad:
        parse_config(load_yaml("namespaces:\n  scan: some\n  include: pod-*\n  max_series: 0\n  exlude: []\n"))
    text = "\n".join(bad.value.errors)
    for key in ("namespaces.scan", "namespaces.include", "namespaces.max_series", "exclude"):
        assert key in text, text


@pytest.mark.parametrize("include, exclude, names, selected", [
    ((), (), ("host",), True),
    (("pod-*",), (), ("netns:42", "pod-7f3a"), True),
    (("pod-*",), (), ("blue",), False),
    ((), ("ci-*",), ("ci-1234",), False),
    (("*",), ("host",), ("host",), False),  # exclude wins
    (("3f2a*",), (), ("web.service", "3f2a9c0e11aa"), True),  # any name of the namespace
    (("Blue",), (), ("blue",), False),  # case-sensitive
])
def test_include_and_exclude_patterns_match_any_name_of_a_namespace(
        include: tuple[str, ...], exclude: tuple[str, ...], names: tuple[str, ...], selected: bool) -> None:
    assert namespace_selected(NamespacesConfig(include=include, exclude=exclude), names) is selected


OLD_FORMAT = {
    "version": 1, "written_by": "portwatch 0.9", "saved_at": 5_000.0,
    "listeners": [{"protocol": "tcp", "port": 8080, "first_seen": 0.0, "last_seen": 4_000.0}],
    "findings": [],
}


def test_a_state_file_of_the_format_before_namespaces_loads_as_the_host_namespaces() -> None:
    state, problems = from_document(OLD_FORMAT)
    assert problems == []
    assert set(state.listeners) == {RememberedPort(Protocol.TCP, 8080)}
    assert state.namespaces == {}
    assert to_document(state, 5_000.0) == OLD_FORMAT | {"written_by": to_document(state, 0.0)["written_by"]}


def test_listeners_are_kept_per_namespace_and_round_trip_through_the_file() -> None:
    port = RememberedPort(Protocol.TCP, 9090)
    state, _ = from_document(OLD_FORMAT)
    host, others = update_namespace_listeners(state, {"blue": ([port], {}), HOST_KEY: ([], {})}, 5_000.0)
    assert set(host) == {RememberedPort(Protocol.TCP, 8080)}  # qualified, unseen, within the TTL: kept
    assert set(others) == {"blue"} and set(others["blue"]) == {port}
    later, _ = update_namespace_listeners(State(host, {}, others), {"blue": ([port], {})}, 5_400.0)
    state = State(later, {}, _)
    doc = json.loads(json.dumps(to_document(state, 5_400.0)))
    assert doc["namespace_listeners"]["blue"][0]["port"] == 9090
    assert from_document(doc)[0] == state
    # a namespace that could not be read keeps its listeners; one that is gone keeps only qualified ones
    _h, kept = update_namespace_listeners(state, {}, 6_000.0, keep=["blue"])
    assert kept == state.namespaces
    _h, gone = update_namespace_listeners(State(later, {}, {"green": {port: ListenerRecord(Protocol.TCP, 9090, 0, 1)}}),
                                          {}, 6_000.0)
    assert gone == {}
