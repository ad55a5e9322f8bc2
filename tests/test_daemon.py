"""The daemon: in-process with scripted scans (order of events, reload, failures, watchdog),
and as a real process in a network namespace (real listener, real scrapes, real signals,
a real NOTIFY_SOCKET)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from portwatch import detect
from portwatch.collect import CollectError
from portwatch.config import Config, ConfigError, IgnoreRule, WebConfig
from portwatch.daemon import (
    EXIT_FAILED,
    EXIT_OK,
    Daemon,
    NotifySocket,
    make_notifier,
    setup_logging,
    status_line,
    watchdog_interval,
)
from portwatch.model import RememberedPort
from portwatch.model import Kind, Protocol, Snapshot
from portwatch.model import ScanResult
from tests.builders import listen, proc, snap, tcp
from tests.netns import REPO, NetNS

RANGE = (40000, 40999)
WAIT = 60.0  # upper bound of every wait loop (seconds); never an assertion about speed


# =============================================================================== helpers


def result_of(snapshot: Snapshot, config: Config = Config(), duration: float = 0.012) -> ScanResult:
    """A ScanResult as run_scan builds it from ``snapshot``."""
    usage = detect.destination_usage(snapshot)
    findings = detect.detect(snapshot, config, (), usage)
    kept, ignored = detect.apply_ignores(findings, config.ignore)
    return ScanResult(snapshot=snapshot, findings=tuple(kept), ignored=tuple(ignored), usage=usage,
                      duration=duration, listening=detect.listeners(snapshot))


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse_exposition(generate_latest(registry).decode())


def parse_exposition(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(s: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return s.get((name, tuple(sorted(labels.items()))))


LISTENER = listen("0.0.0.0:40100")
WITH_LISTENER = snap([LISTENER, tcp("10.0.0.1:40300", "10.0.0.2:5432")], RANGE,
                     owners={LISTENER: 77}, processes=[proc(77, "myservice")])
EMPTY = snap([], RANGE)


@dataclass
class Script:
    """A scan function that plays ``steps`` in order, then asks the daemon to stop.

    Each step is a snapshot (scanned with the config the daemon passes), or an
    exception to raise; ``after`` maps a step index to the signals to queue after it.
    Records what every call received and the metrics as they were before it.
    """

    steps: list[Snapshot | Exception]
    after: dict[int, list[int]] = field(default_factory=dict)
    daemon: Daemon | None = None
    configs: list[Config] = field(default_factory=list)
    remembered: list[Collection[RememberedPort]] = field(default_factory=list)
    metrics_before: list[dict[Any, float]] = field(default_factory=list)

    def __call__(self, config: Config, collector: object, remembered: Collection[RememberedPort]) -> ScanResult:
        assert self.daemon is not None
        i = len(self.configs)
        self.configs.append(config)
        self.remembered.append(set(remembered))
        self.metrics_before.append(samples(self.daemon.registry))
        for sig in self.after.get(i, []):
            self.daemon.events.put(sig)
        if i >= len(self.steps) - 1 and signal.SIGTERM not in self.after.get(i, []):
            self.daemon.events.put(signal.SIGTERM)
        step = self.steps[min(i, len(self.steps) - 1)]
        if isinstance(step, Exception):
            raise step
        return result_of(step, config)


class Notes:
    """A notifier that records every message, with whether /metrics answered at that moment."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.metrics_answered_at_ready: list[bool] = []
        self.daemon: Daemon | None = None
        self.on_message: Callable[[str], None] | None = None

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        if message.startswith("READY=1") and self.daemon is not None and not self.metrics_answered_at_ready:
            self.metrics_answered_at_ready.append(self._scrapes())
        if self.on_message is not None:
            self.on_message(message)

    def _scrapes(self) -> bool:
        assert self.daemon is not None
        try:
            host, port = self.daemon.server.address
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
                return r.status == 200 and b"portwatch_scans_total 1.0" in r.read()
        except (OSError, RuntimeError):
            return False

    def keys(self) -> list[list[str]]:
        return [[line.split("=", 1)[0] for line in m.splitlines()] for m in self.messages]


def make_daemon(tmp_path: Path, script: Script, config: Config | None = None, notes: Notes | None = None,
                **kw: Any) -> Daemon:
    config = config or Config(interval=0.001, state_directory=tmp_path / "state",
                              web=WebConfig(listen_address="127.0.0.1:0"))
    kw.setdefault("collector_factory", lambda c: None)
    d = Daemon(config, scan=script, notify=notes or Notes(), **kw)
    script.daemon = d
    if notes is not None:
        notes.daemon = d
    return d


# =============================================================================== in-process


def test_ready_after_first_scan_and_bind_then_status_then_stopping(tmp_path: Path) -> None:
    script = Script([WITH_LISTENER, WITH_LISTENER])
    notes = Notes()
    d = make_daemon(tmp_path, script, notes=notes)
    assert not d.ready()
    assert d.run() == EXIT_OK
    assert notes.keys()[0] == ["READY", "STATUS"]
    assert notes.metrics_answered_at_ready == [True]  # READY only once /metrics answers, with a scan in it
    assert script.metrics_before[0][("portwatch_scans_total", ())] == 0  # the first scan ran before READY
    assert notes.keys()[1] == ["STATUS"]  # after the second scan
    assert notes.messages[1] == "STATUS=2 sockets, 0 critical, 1 warning; last scan 12 ms"
    assert notes.keys()[-1] == ["STOPPING", "STATUS"]
    with pytest.raises(RuntimeError):
        d.server.address  # stopped
    saved = json.loads((tmp_path / "state" / "state.json").read_text())
    assert [f["key"] for f in saved["findings"]] == ["listener_in_ephemeral_range:tcp:40100"]


def test_failed_scan_keeps_figures_counts_error_and_goes_on(tmp_path: Path) -> None:
    script = Script([WITH_LISTENER, CollectError("/proc/sys/net/ipv4/ip_local_port_range: permission denied"),
                     RuntimeError("bug"), WITH_LISTENER])
    notes = Notes()
    d = make_daemon(tmp_path, script, notes=notes)
    assert d.run() == EXIT_OK
    after_ok, after_collect_error, after_bug = script.metrics_before[1:4]
    for s in (after_collect_error, after_bug):
        assert value(s, "portwatch_findings", netns="host", kind="listener_in_ephemeral_range", severity="warning") == 1
        assert value(s, "portwatch_ephemeral_port_range_low", netns="host") == 40000
        assert value(s, "portwatch_last_scan_success") == 0
    assert value(after_collect_error, "portwatch_scan_errors_total") == 1
    assert value(after_bug, "portwatch_scan_errors_total") == 2
    final = samples(d.registry)
    assert value(final, "portwatch_last_scan_success") == 1
    assert value(final, "portwatch_scans_total") == 4
    failed = [m for m in notes.messages if m.startswith("STATUS=scan failed")]
    assert failed and "permission denied" in failed[0] and "figures from" in failed[0]
    # the listener finding stayed active across the failures: not new again, not resolved
    assert value(final, "portwatch_findings_detected_total", kind="listener_in_ephemeral_range") == 1


def test_first_scan_failing_still_binds_and_reports_ready(tmp_path: Path) -> None:
    script = Script([CollectError("boom"), EMPTY])
    notes = Notes()
    d = make_daemon(tmp_path, script, notes=notes)
    assert d.run() == EXIT_OK
    assert notes.messages[0] == "READY=1\nSTATUS=scan failed: boom"


def test_bind_failure_exits_1_without_ready(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config(interval=0.001, state_directory=tmp_path,
                        web=WebConfig(listen_address=f"127.0.0.1:{port}"))
        notes = Notes()
        d = make_daemon(tmp_path, Script([EMPTY]), config=config, notes=notes)
        assert d.run() == EXIT_FAILED
    assert not any(m.startswith("READY=1") for m in notes.messages)
    assert "address already in use" in notes.messages[-1]


def test_reload_applies_a_good_config_and_keeps_the_old_on_a_bad_or_unappliable_one(tmp_path: Path) -> None:
    base = Config(interval=0.001, state_directory=tmp_path, web=WebConfig(listen_address="127.0.0.1:0"))
    ignoring = replace(base, ignore=(IgnoreRule(kind=Kind.LISTENER_IN_EPHEMERAL_RANGE),))
    loads: list[Config | Exception] = [
        ignoring,
        ConfigError(["interval: must be at least 1s", "services[0].port: must be 1-65535"], "/etc/pw.yaml"),
        replace(base, web=WebConfig(listen_address="127.0.0.1:70000")),  # the server refuses it
    ]

    def load(path: Path | None) -> Config:
        step = loads.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    script = Script([WITH_LISTENER] * 5, after={0: [signal.SIGHUP], 1: [signal.SIGHUP], 2: [signal.SIGHUP]})
    notes = Notes()
    d = make_daemon(tmp_path, script, config=base, notes=notes, load=load, config_path=Path("/etc/pw.yaml"))
    assert d.run() == EXIT_OK
    assert script.configs[0] is base and script.configs[1] is ignoring
    assert script.configs[2] is ignoring and script.configs[3] is ignoring  # bad ones kept the good one
    reload_ok = [value(m, "portwatch_config_last_reload_successful") for m in script.metrics_before]
    assert reload_ok[:4] == [1, 1, 0, 0]
    ts = [value(m, "portwatch_config_last_reload_success_timestamp_seconds") for m in script.metrics_before]
    assert ts[1] is not None and ts[2] == ts[1] == ts[3]
    # the finding went away with the ignore rule; the metrics follow the scan with the new config
    assert value(script.metrics_before[2], "portwatch_findings", netns="host",
                 kind="listener_in_ephemeral_range", severity="warning") == 0
    reloads = [i for i, k in enumerate(notes.keys()) if k[0] == "RELOADING"]
    assert len(reloads) == 3
    for i in reloads:
        assert notes.messages[i].splitlines()[1].startswith("MONOTONIC_USEC=")
        assert int(notes.messages[i].splitlines()[1].split("=")[1]) > 0
        assert notes.keys()[i + 1][0] == "READY"


def test_reload_logs_every_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def load(path: Path | None) -> Config:
        raise ConfigError(["interval: too short", "web.listen_address: not host:port"], "/etc/pw.yaml")

    d = make_daemon(tmp_path, Script([EMPTY, EMPTY], after={0: [signal.SIGHUP]}), load=load)
    with caplog.at_level(logging.INFO, logger="portwatch.daemon"):
        assert d.run() == EXIT_OK
    text = caplog.text
    assert "interval: too short" in text and "web.listen_address: not host:port" in text
    assert "keeping the previous configuration" in text


def test_interval_change_applies_from_next_scan(tmp_path: Path) -> None:
    base = Config(interval=3600.0, state_directory=tmp_path, web=WebConfig(listen_address="127.0.0.1:0"))
    fast = replace(base, interval=0.001)
    d = make_daemon(tmp_path, Script([EMPTY, EMPTY], after={0: [signal.SIGHUP]}), config=base,
                    load=lambda p: fast)
    # without the reload the second scan would be an hour away; the test's timeout would catch that
    assert d.run() == EXIT_OK


def test_watchdog_pings_while_idle(tmp_path: Path) -> None:
    config = Config(interval=3600.0, state_directory=tmp_path, web=WebConfig(listen_address="127.0.0.1:0"))
    notes = Notes()
    script = Script([EMPTY, EMPTY])  # two steps: the first scan does not queue SIGTERM
    d = make_daemon(tmp_path, script, config=config, notes=notes, watchdog=0.01)

    def stop_after_three_idle_pings(message: str) -> None:
        if sum(1 for m in notes.messages if m == "WATCHDOG=1") >= 3:
            d.events.put(signal.SIGTERM)

    notes.on_message = stop_after_three_idle_pings
    assert d.run() == EXIT_OK
    assert len(script.configs) == 1  # the pings came from the idle loop, not from scans
    assert notes.messages.count("WATCHDOG=1") >= 3


def test_watchdog_ping_with_each_scan(tmp_path: Path) -> None:
    notes = Notes()
    d = make_daemon(tmp_path, Script([EMPTY, EMPTY, EMPTY]), notes=notes, watchdog=3600.0)
    assert d.run() == EXIT_OK
    with_status = [m for m in notes.messages if m.startswith("STATUS=0 sockets")]
    assert len(with_status) == 2 and all(m.endswith("\nWATCHDOG=1") for m in with_status)


def test_findings_logged_with_journal_fields(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = make_daemon(tmp_path, Script([WITH_LISTENER, EMPTY]))
    with caplog.at_level(logging.INFO, logger="portwatch.findings"):
        assert d.run() == EXIT_OK
    records = [r for r in caplog.records if r.name == "portwatch.findings"]
    new, resolved = records
    assert new.levelno == logging.WARNING and "new warning finding" in new.getMessage()
    assert "myservice[77]" in new.getMessage()
    for r in (new, resolved):
        assert r.PORTWATCH_KIND == "listener_in_ephemeral_range"  # type: ignore[attr-defined]
        assert r.PORTWATCH_KEY == "listener_in_ephemeral_range:tcp:40100"  # type: ignore[attr-defined]
        assert r.PORTWATCH_SEVERITY == "warning"  # type: ignore[attr-defined]
        assert r.PORTWATCH_PORT == "40100"  # type: ignore[attr-defined]
        assert r.PORTWATCH_PID == "77"  # type: ignore[attr-defined]
    assert resolved.levelno == logging.INFO and resolved.getMessage().startswith("resolved [")


def test_remembered_listeners_reach_the_next_scan_and_survive_restart(tmp_path: Path) -> None:
    script = Script([WITH_LISTENER, EMPTY])
    d = make_daemon(tmp_path, script, remember_after=0.0)
    assert d.run() == EXIT_OK
    assert script.remembered[0] == set()
    # with the identity of the process that listened (what tells its own draining connections apart)
    assert script.remembered[1] == {RememberedPort(Protocol.TCP, 40100, executable="myservice")}
    # a restarted daemon remembers it from the state file, and does not call the old finding new
    script2 = Script([WITH_LISTENER])
    d2 = make_daemon(tmp_path, script2, remember_after=0.0)
    assert d2.run() == EXIT_OK
    assert script2.remembered[0] == {RememberedPort(Protocol.TCP, 40100, executable="myservice")}


def test_active_finding_across_restart_is_not_new(tmp_path: Path) -> None:
    d = make_daemon(tmp_path, Script([WITH_LISTENER]))
    assert d.run() == EXIT_OK
    d2 = make_daemon(tmp_path, Script([WITH_LISTENER]))
    assert d2.run() == EXIT_OK
    assert value(samples(d2.registry), "portwatch_findings_detected_total",
                 kind="listener_in_ephemeral_range") == 0


def test_garbage_state_file_is_logged_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").write_bytes(b"\x00garbage{")
    d = make_daemon(tmp_path, Script([WITH_LISTENER]))
    with caplog.at_level(logging.WARNING, logger="portwatch.state"):
        assert d.run() == EXIT_OK
    assert "corrupt" in caplog.text
    assert json.loads((state_dir / "state.json").read_text())["version"] == 1


NESTED = b"[" * 1100 + b"]" * 1100  # 2.2 KB that once crashed the start with RecursionError


@pytest.mark.parametrize("name", ["state.json", "alerts.json"])
def test_deeply_nested_state_file_is_logged_and_replaced_not_a_crash_loop(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / name).write_bytes(NESTED)
    d = make_daemon(tmp_path, Script([WITH_LISTENER]))
    with caplog.at_level(logging.WARNING):
        assert d.run() == EXIT_OK
    assert any("corrupt" in r.getMessage() and "nested deeper than" in r.getMessage() for r in caplog.records)
    assert json.loads((state_dir / name).read_text())["version"] == 1


def test_state_file_that_is_a_fifo_is_not_waited_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.mkfifo(state_dir / "state.json")
    d = make_daemon(tmp_path, Script([WITH_LISTENER]))
    with caplog.at_level(logging.WARNING, logger="portwatch.state"):
        assert d.run() == EXIT_OK  # a blocking open would hang here (pytest-timeout ends it)
    assert "not a regular file" in caplog.text


def test_unwritable_state_directory_does_not_stop_the_loop(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = Config(interval=0.001, state_directory=blocker / "state", web=WebConfig(listen_address="127.0.0.1:0"))
    script = Script([WITH_LISTENER, EMPTY, WITH_LISTENER])
    d = make_daemon(tmp_path, script, config=config)
    with caplog.at_level(logging.WARNING, logger="portwatch.state"):
        assert d.run() == EXIT_OK
    assert len(script.configs) == 3
    assert len([r for r in caplog.records if "cannot write state file" in r.getMessage()]) == 1


def test_index_page_shows_status_and_findings(tmp_path: Path) -> None:
    pages: list[str] = []
    script = Script([WITH_LISTENER, WITH_LISTENER])
    notes = Notes()
    d = make_daemon(tmp_path, script, notes=notes)

    def grab(message: str) -> None:
        if message.startswith("READY=1"):
            host, port = d.server.address
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as r:
                pages.append(r.read().decode())

    notes.on_message = grab
    assert d.run() == EXIT_OK
    assert "2 sockets, 0 critical, 1 warning" in pages[0] and "myservice[77]" in pages[0]


def test_journal_handler_gets_structured_fields(tmp_path: Path) -> None:
    """Under systemd (INVOCATION_ID) logs go through systemd's JournalHandler with PORTWATCH_* fields."""
    pytest.importorskip("systemd.journal")
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    sent: list[tuple[str, dict[str, Any]]] = []
    try:
        assert setup_logging({"INVOCATION_ID": "0123"}) == "journal"
        (handler,) = root.handlers
        assert type(handler).__name__ == "JournalHandler"
        handler.send = lambda MESSAGE, **fields: sent.append((MESSAGE, fields))  # type: ignore[attr-defined]
        d = make_daemon(tmp_path, Script([WITH_LISTENER, EMPTY]))
        assert d.run() == EXIT_OK
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)
    events = [(m, f) for m, f in sent if f.get("LOGGER") == "portwatch.findings"]
    assert len(events) == 2
    for message, fields in events:
        assert fields["PORTWATCH_KIND"] == "listener_in_ephemeral_range"
        assert fields["PORTWATCH_KEY"] == "listener_in_ephemeral_range:tcp:40100"
        assert fields["PORTWATCH_PORT"] == "40100" and fields["PORTWATCH_PID"] == "77"
        assert fields["PORTWATCH_SEVERITY"] == "warning"
        assert fields["SYSLOG_IDENTIFIER"] == "portwatch"
    assert events[0][1]["PRIORITY"] == "4" and events[1][1]["PRIORITY"] == "6"  # warning, info


def test_setup_logging_outside_systemd_keeps_stderr() -> None:
    root = logging.getLogger()
    saved = list(root.handlers)
    try:
        assert setup_logging({}) == "stderr"
        assert all(type(h).__name__ != "JournalHandler" for h in root.handlers)
    finally:
        for h in list(root.handlers):
            if h not in saved:
                root.removeHandler(h)


# =============================================================================== pieces


def test_status_line_counts_sockets_findings_and_scan_time() -> None:
    sc = tcp("127.0.0.1:40002", "127.0.0.1:40002")
    r = result_of(snap([sc, LISTENER], RANGE), duration=0.0123)
    assert status_line(r) == "2 sockets, 1 critical, 1 warning; last scan 12 ms"


@pytest.mark.parametrize("env, pid, expected", [
    ({}, 10, None),
    ({"WATCHDOG_USEC": "60000000"}, 10, 30.0),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "10"}, 10, 30.0),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "11"}, 10, None),
    ({"WATCHDOG_USEC": "0"}, 10, None),
    ({"WATCHDOG_USEC": "soon"}, 10, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid(env: dict[str, str], pid: int, expected: float | None) -> None:
    assert watchdog_interval(env, pid) == expected


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    return sock


def test_notify_socket_sends_to_a_path_or_an_abstract_address(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _receiver(path) as rx:
        NotifySocket(path)("READY=1\nSTATUS=hello")
        assert rx.recv(4096) == b"READY=1\nSTATUS=hello"
    name = f"portwatch-test-{os.getpid()}"
    with _receiver("\0" + name) as rx:
        make_notifier({"NOTIFY_SOCKET": "@" + name})("STOPPING=1")
        assert rx.recv(4096) == b"STOPPING=1"


def test_notify_socket_errors_are_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    send = NotifySocket(str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.WARNING, logger="portwatch.daemon"):
        send("READY=1")
        send("STATUS=x")
    assert len(caplog.records) == 1 and "cannot notify systemd" in caplog.text


def test_no_notify_socket_means_nothing_is_sent(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.setblocking(False)
        make_notifier({"NOTIFY_SOCKET": ""})("READY=1")
        make_notifier({})("READY=1")  # nothing to send to, nothing raised
        with pytest.raises(BlockingIOError):
            listener.recv(4096)
        make_notifier({"NOTIFY_SOCKET": path}, use_systemd_python=False)("READY=1")  # the contrast: it arrives
        assert listener.recv(4096) == b"READY=1"


# =============================================================================== real daemon in a namespace

PORTWATCH = REPO / ".venv" / "bin" / "portwatch"
METRICS_PORT = 9731  # the namespace is empty: any port is free
FETCH = ("import sys, urllib.request\n"
         "with urllib.request.urlopen(sys.argv[1], timeout=10) as r:\n"
         "    sys.stdout.write(r.read().decode())\n")
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM", "LISTEN_FDS")


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT, proc: subprocess.Popen[str] | None = None,
             stderr: Path | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` s or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"daemon exited ({proc.returncode}) while waiting for {what}:\n"
                        + (stderr.read_text() if stderr else ""))
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n" + (stderr.read_text() if stderr else ""))
        time.sleep(0.1)


#: What a test daemon's configuration gets when it has no ``namespaces`` section: the
#: test's own namespace only (the daemon's default, every namespace of the host, would
#: scan whatever else runs on the machine).
OWN_NAMESPACE = "namespaces:\n  scan: own\n"


class RealDaemon:
    """``portwatch run`` in a namespace, with its stderr in a file.

    A ``config`` without a ``namespaces`` section gets :data:`OWN_NAMESPACE`
    (also after :meth:`write_config`).
    """

    def __init__(self, ns: NetNS, tmp_path: Path, config: str, env: dict[str, str] | None = None) -> None:
        self.ns = ns
        self.config = tmp_path / "portwatch.yaml"
        self.write_config(config)
        self.stderr = tmp_path / "daemon.stderr"
        full_env = {k: v for k, v in ns.env().items() if k not in SYSTEMD_ENV}
        full_env.update(env or {})
        self._err = open(self.stderr, "w")
        self.proc = ns.popen([str(PORTWATCH), "run", "--config", str(self.config),
                              "--listen-address", f"127.0.0.1:{METRICS_PORT}"],
                             env=full_env, stdout=subprocess.DEVNULL, stderr=self._err)

    def write_config(self, text: str) -> None:
        """Write the configuration file (with :data:`OWN_NAMESPACE` unless ``text`` has ``namespaces:``)."""
        self.config.write_text(text if "namespaces:" in text else text + OWN_NAMESPACE)

    def fetch(self, path: str = "/metrics") -> str | None:
        res = self.ns.run([sys.executable, "-c", FETCH, f"http://127.0.0.1:{METRICS_PORT}{path}"], timeout=30)
        return res.stdout if res.returncode == 0 else None

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        text = self.fetch()
        return parse_exposition(text) if text is not None else None

    def wait_metrics(self, what: str, check: Callable[[dict[Any, float]], bool]) -> dict[Any, float]:
        def probe() -> dict[Any, float] | None:
            m = self.metrics()
            return m if m is not None and check(m) else None
        result: dict[Any, float] = wait_for(what, probe, proc=self.proc, stderr=self.stderr)
        return result

    def signal(self, sig: int) -> None:
        assert self.proc.poll() is None, self.stderr.read_text()
        os.kill(self.proc.pid, sig)

    def stop(self) -> int:
        self.signal(signal.SIGTERM)
        return self.stop_wait()

    def stop_wait(self) -> int:
        """Wait (bounded) for the exit a SIGTERM already sent asks for; its exit status."""
        try:
            return self.proc.wait(timeout=WAIT)
        finally:
            self._err.close()


def listener_series(m: dict[Any, float]) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (name, labels), v in m.items() if name == "portwatch_listener_in_ephemeral_range"}


def scans(m: dict[Any, float]) -> float:
    return m.get(("portwatch_scans_total", ()), 0.0)


@pytest.fixture
def ns_listener(netns: NetNS) -> Iterator[tuple[NetNS, int]]:
    """A namespace with a TCP listener on port 45000 (inside the default range 32768-60999)."""
    _proc, info = netns.actor("listen", "--port", "45000")
    yield netns, int(info["ports"][0])


def test_real_daemon_metrics_reload_and_stop(ns_listener: tuple[NetNS, int], tmp_path: Path) -> None:
    ns, port = ns_listener
    state_dir = tmp_path / "state"
    base = f"interval: 1s\nstate_directory: {state_dir}\n"
    d = RealDaemon(ns, tmp_path, base)

    # the second scan is the first one after /metrics was bound
    m = d.wait_metrics("the listener finding", lambda m: bool(listener_series(m)) and scans(m) >= 2)
    series = listener_series(m)
    ((labels, one),) = series.items()
    assert one == 1
    assert dict(labels)["port"] == str(port) and dict(labels)["protocol"] == "tcp"
    assert dict(labels)["process"].startswith("python")  # the actor, attributed (we are root)
    assert value(m, "portwatch_findings", netns="host", kind="listener_in_ephemeral_range", severity="warning") == 1
    assert value(m, "portwatch_ephemeral_port_range_low", netns="host") == 32768
    assert value(m, "portwatch_ephemeral_port_range_high", netns="host") == 60999
    assert value(m, "portwatch_sockets", netns="host", protocol="tcp", state="LISTEN") == 2  # the actor and /metrics
    assert value(m, "portwatch_last_scan_success") == 1
    assert value(m, "portwatch_config_last_reload_successful") == 1
    assert value(m, "portwatch_findings_detected_total", kind="listener_in_ephemeral_range") == 1
    assert d.fetch("/-/ready") == "OK\n"

    # SIGHUP with a good config: the ignore rule removes the finding
    d.write_config(base + f"ignore:\n  - kind: listener_in_ephemeral_range\n    port: {port}\n")
    d.signal(signal.SIGHUP)
    m = d.wait_metrics("the finding ignored after SIGHUP", lambda m: not listener_series(m))
    assert value(m, "portwatch_findings", netns="host", kind="listener_in_ephemeral_range", severity="warning") == 0
    assert value(m, "portwatch_config_last_reload_successful") == 1
    good_reload = value(m, "portwatch_config_last_reload_success_timestamp_seconds")

    # SIGHUP with a bad config: the old one stays, the reload gauge goes to 0, the daemon stays up
    d.config.write_text("interval: -5\nno_such_key: 1\n")
    d.signal(signal.SIGHUP)
    m = d.wait_metrics("the failed reload", lambda m: value(m, "portwatch_config_last_reload_successful") == 0)
    assert value(m, "portwatch_config_last_reload_success_timestamp_seconds") == good_reload
    before = scans(m)
    m = d.wait_metrics("scans after the failed reload", lambda m: scans(m) > before)
    assert not listener_series(m)  # still the good config's ignore rule
    assert d.proc.poll() is None
    err = d.stderr.read_text()
    assert "no_such_key" in err and "interval" in err and "keeping the previous configuration" in err

    # SIGTERM: exit 0, state saved
    assert d.stop() == 0
    saved = json.loads((state_dir / "state.json").read_text())
    keys = {f["key"]: f for f in saved["findings"]}
    assert keys[f"listener_in_ephemeral_range:tcp:{port}"]["resolved_at"] is not None
    assert "Traceback" not in d.stderr.read_text()


@pytest.mark.parametrize("systemd_python", [True, False], ids=["systemd-python", "without-systemd-python"])
def test_real_daemon_talks_to_notify_socket(ns_listener: tuple[NetNS, int], tmp_path: Path,
                                            systemd_python: bool) -> None:
    ns, _port = ns_listener
    env = {"NOTIFY_SOCKET": str(sock_path := tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    if not systemd_python:
        # a `systemd` package that cannot be imported, first on the path: the built-in sender is used
        fake = tmp_path / "no-systemd" / "systemd"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text("raise ImportError('systemd-python hidden by the test')\n")
        env["PYTHONPATH"] = f"{fake.parent}{os.pathsep}{ns.env()['PYTHONPATH']}"
    rx = _receiver(str(sock_path))
    rx.settimeout(WAIT)
    messages: list[str] = []

    def receive() -> str:
        try:
            msg = rx.recv(65536).decode()
        except socket.timeout:
            pytest.fail(f"no notification within {WAIT}s; got {messages}\n{d.stderr.read_text()}")
        messages.append(msg)
        return msg

    def receive_until(prefix: str) -> str:
        while True:
            msg = receive()
            if any(line.startswith(prefix) for line in msg.splitlines()):
                return msg

    try:
        d = RealDaemon(ns, tmp_path, f"interval: 1s\nstate_directory: {tmp_path / 'state'}\n", env=env)
        first = receive()
        # the first message is READY, and at that moment /metrics answers with a complete scan
        assert first.splitlines()[0] == "READY=1", messages
        m = d.metrics()
        assert m is not None and scans(m) >= 1
        assert value(m, "portwatch_findings", netns="host", kind="listener_in_ephemeral_range", severity="warning") == 1
        status = [line for line in first.splitlines() if line.startswith("STATUS=")]
        assert status and " sockets, 0 critical, 1 warning; last scan " in status[0]

        # STATUS after every scan, with the watchdog ping
        msg = receive_until("STATUS=")
        assert "WATCHDOG=1" in msg.splitlines()

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1
        d.signal(signal.SIGHUP)
        reloading = receive_until("RELOADING=1")
        usec = [line for line in reloading.splitlines() if line.startswith("MONOTONIC_USEC=")]
        assert usec and int(usec[0].split("=")[1]) > 0
        receive_until("READY=1")

        # SIGTERM: STOPPING=1 and exit 0
        d.signal(signal.SIGTERM)
        receive_until("STOPPING=1")
        assert d.proc.wait(timeout=WAIT) == 0
        err = d.stderr.read_text()
        assert "Traceback" not in err and "cannot notify" not in err
    finally:
        rx.close()


def test_real_daemon_replaces_garbage_state_file(netns: NetNS, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").write_text("{ this is not json")
    d = RealDaemon(netns, tmp_path, f"interval: 1s\nstate_directory: {state_dir}\n")

    def replaced() -> bool:
        try:
            document: dict[str, object] = json.loads((state_dir / "state.json").read_text())
            return document.get("version") == 1
        except ValueError:
            return False

    wait_for("the state file replaced", replaced, proc=d.proc, stderr=d.stderr)
    m = d.wait_metrics("a scan", lambda m: scans(m) >= 1)
    assert value(m, "portwatch_last_scan_success") == 1
    assert "corrupt" in d.stderr.read_text()
    assert d.stop() == 0


def test_real_daemon_invalid_config_exits_2(netns: NetNS, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("interval: never\nweb:\n  listen_address: nowhere\n")
    res = netns.run([str(PORTWATCH), "run", "--config", str(cfg), "--listen-address", "127.0.0.1:9731"],
                    timeout=WAIT)
    assert res.returncode == 2
    assert "interval" in res.stderr and "listen_address" in res.stderr
    assert "Traceback" not in res.stderr


def test_real_daemon_port_in_use_exits_1(netns: NetNS, tmp_path: Path) -> None:
    netns.actor("listen", "--port", str(METRICS_PORT), "--host", "127.0.0.1")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"interval: 1s\nstate_directory: {tmp_path}\n")
    res = netns.run([str(PORTWATCH), "run", "--config", str(cfg), "--listen-address", f"127.0.0.1:{METRICS_PORT}"],
                    timeout=WAIT)
    assert res.returncode == 1, res.stderr
    assert "address already in use" in res.stderr and "Traceback" not in res.stderr


def test_real_daemon_sigint_exits_0(netns: NetNS, tmp_path: Path) -> None:
    d = RealDaemon(netns, tmp_path, f"interval: 1s\nstate_directory: {tmp_path / 'state'}\n")
    d.wait_metrics("a scan", lambda m: scans(m) >= 1)
    d.signal(signal.SIGINT)
    assert d.proc.wait(timeout=WAIT) == 0
    assert "Traceback" not in d.stderr.read_text()



HOSTILE_NAME = "x\nFAKE <b>\x1b[31m"  # 15 bytes: the most PR_SET_NAME keeps
HOSTILE_LISTENER = r"""
import ctypes, socket, sys
ctypes.CDLL(None, use_errno=True).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 45001))
s.listen()
print("READY", flush=True)
sys.stdin.read()
"""


def test_process_name_with_newline_and_escape_cannot_forge_a_log_line(netns: NetNS, tmp_path: Path) -> None:
    proc = netns.popen([sys.executable, "-c", HOSTILE_LISTENER, HOSTILE_NAME])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    with open(f"/proc/{proc.pid}/comm") as f:
        assert f.read() == HOSTILE_NAME + "\n"  # the kernel kept the name as given
    d = RealDaemon(netns, tmp_path, f"interval: 1s\nstate_directory: {tmp_path / 'state'}\n")
    d.wait_metrics("the hostile listener's finding", lambda m: bool(listener_series(m)) and scans(m) >= 2)
    assert d.stop() == 0
    err = d.stderr.read_text()
    found = [line for line in err.splitlines() if "listener_in_ephemeral_range:tcp:45001" in line]
    assert found, err
    assert "x\\x0aFAKE <b>\\x1b[31m" in found[0]  # the name, escaped, on the finding's own line
    assert "\x1b" not in err
    assert all(line.startswith("portwatch: ") for line in err.splitlines()), err


def test_sighup_storm_means_few_reloads_scans_go_on_and_sigterm_is_prompt(
        ns_listener: tuple[NetNS, int], tmp_path: Path) -> None:
    ns, _port = ns_listener
    d = RealDaemon(ns, tmp_path, f"interval: 1s\nstate_directory: {tmp_path / 'state'}\n")
    m = d.wait_metrics("two scans", lambda m: scans(m) >= 2)
    before = scans(m)
    for _ in range(500):  # once: 434 reloads, 1 scan in 50 s, SIGTERM answered after 36 s
        d.signal(signal.SIGHUP)
    d.wait_metrics("scans after the storm", lambda m: scans(m) >= before + 2)
    for _ in range(200):
        d.signal(signal.SIGHUP)
    d.signal(signal.SIGTERM)
    assert d.stop_wait() == 0
    err = d.stderr.read_text()
    reloads = err.count("reloaded configuration from")
    assert 1 <= reloads <= 50, err[-2000:]
    assert "Traceback" not in err


def test_second_daemon_on_the_same_state_directory_exits_1_naming_the_running_one(
        ns_listener: tuple[NetNS, int], tmp_path: Path) -> None:
    ns, _port = ns_listener
    d = RealDaemon(ns, tmp_path, f"interval: 1s\nstate_directory: {tmp_path / 'state'}\n")
    d.wait_metrics("two scans", lambda m: scans(m) >= 2)
    second = ns.run([str(PORTWATCH), "run", "--config", str(d.config),
                     "--listen-address", f"127.0.0.1:{METRICS_PORT}"], timeout=60,
                    env={k: v for k, v in ns.env().items() if k not in SYSTEMD_ENV})
    assert second.returncode == 1, second.stderr
    assert f"in use by another portwatch (pid {d.proc.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    assert d.proc.poll() is None  # the first one runs on
    assert d.stop() == 0


LOCK_HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("READY", flush=True)
sys.stdin.read()
"""


def test_second_daemon_touches_nothing_in_a_locked_state_directory(
        ns_listener: tuple[NetNS, int], tmp_path: Path) -> None:
    ns, _port = ns_listener
    state_dir = tmp_path / "state"
    first = RealDaemon(ns, tmp_path, f"interval: 1s\nstate_directory: {state_dir}\n")
    first.wait_metrics("a firing finding", lambda m: bool(listener_series(m)) and scans(m) >= 2)
    assert first.stop() == 0  # leaves state.json, alerts.json and the lock file (with its pid)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(state_dir / ".lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "READY"
        before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in state_dir.iterdir()}
        assert {"state.json", "alerts.json", ".lock"} <= set(before)
        second = ns.run([str(PORTWATCH), "run", "--config", str(first.config),
                         "--listen-address", f"127.0.0.1:{METRICS_PORT}"], timeout=60,
                        env={k: v for k, v in ns.env().items() if k not in SYSTEMD_ENV})
        assert second.returncode == 1, second.stderr
        assert "is in use by another portwatch (pid " in second.stderr
        after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in state_dir.iterdir()}
        assert after == before  # no state rewritten, no notification re-queued, no file added
    finally:
        holder.kill()
        holder.wait(timeout=30)
