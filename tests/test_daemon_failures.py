"""The daemon's failure capture: a real ``portwatch run`` in the host namespace with
``capture: {failures: audit}`` reporting a real failed connect() made in a test namespace
(to a real Alertmanager, in /metrics), its audit rules (present while running, gone after
SIGTERM, one set after a SIGKILL and a restart, a foreign rule untouched), running without
the audit capabilities; and the pure step from failure events to findings
(:func:`portwatch.detect.failure_findings`).

Every test touching audit takes ``audit_host`` (tests/auditkit.py): it removes every
portwatch and test rule and restores auditing's enabled state and backlog limit afterwards,
passed or failed.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from portwatch.collect.capture import FailureCapture
from portwatch.config import Config, IgnoreRule
from portwatch.config.types import CaptureConfig
from portwatch.daemon import EventFindings, Message, Rescan
from portwatch.daemon.failures import FailureThread
from portwatch.detect import FAILURE_FINDERS, failure_findings
from portwatch.model import Kind, Severity
from portwatch.model.failures import FailedCall, FailureBatch
from portwatch.model.results import NamespacesResult
from tests.alertmanager import Alertmanager, free_port, wait_for
from tests.auditkit import TEST_KEY, AuditHost, audit_host, auditctl_rules, restored
from tests.conftest import require
from tests.netns import REPO, NetNS
from tests.test_daemon import PORTWATCH, SYSTEMD_ENV, parse_exposition, value
from tests.test_failures import BLUE, T, exhausted_scan, failure

__all__ = ["audit_host"]  # the fixture, imported to be found by pytest

# ----------------------------------------------------------------- pure: events to findings


def test_failure_findings_group_by_namespace_link_its_scan_and_apply_ignores() -> None:
    result = exhausted_scan()  # blue: 9 of 10 ports towards 127.0.0.1:5001 used by loadgen
    blue = [failure(FailedCall.CONNECT, "127.0.0.1:5001", serial=i, at=T + i) for i in range(2)]
    elsewhere = replace(failure(FailedCall.CONNECT, "127.0.0.1:5001", serial=5), netns_inode=77)
    gone = replace(failure(FailedCall.BIND, "0.0.0.0:8080", comm="web", serial=6), netns_inode=None)
    found = failure_findings([*blue, elsewhere, gone], {BLUE.inode: result}, Config(), window=60,
                             finders=FAILURE_FINDERS)
    by_key = {f.key: f for f in found}
    assert set(by_key) == {"connect_failed:127.0.0.1:5001:loadgen@blue", "connect_failed:127.0.0.1:5001:loadgen@netns:77",
                           "bind_failed:8080:web"}
    linked = by_key["connect_failed:127.0.0.1:5001:loadgen@blue"]
    assert linked.details["count"] == 2 and linked.details["exhaustion"] is not None
    assert linked.namespace == BLUE and "times in 60 s" in linked.summary
    unscanned = by_key["connect_failed:127.0.0.1:5001:loadgen@netns:77"]
    assert unscanned.namespace is not None and unscanned.namespace.inode == 77
    assert unscanned.summary.endswith("(no scan of its namespace to name the cause)")
    assert by_key["bind_failed:8080:web"].namespace is None

    config = Config(ignore=(IgnoreRule(kind=Kind.BIND_FAILED),), severities={Kind.CONNECT_FAILED: Severity.WARNING})
    kept = failure_findings([*blue, gone], {BLUE.inode: result}, config, finders=FAILURE_FINDERS)
    assert [(f.key, f.severity) for f in kept] == [("connect_failed:127.0.0.1:5001:loadgen@blue", Severity.WARNING)]


# ----------------------------------------------------------------- the real daemon in the host namespace

FOREIGN_RULE = ["-a", "always,exit", "-F", "arch=b64", "-S", "listen", "-F", "exit=-EBADF", "-k", TEST_KEY]


class HostDaemon:
    """``portwatch run`` in the test's (host) namespace on a free port, stderr in a file; ``prefix`` wraps it."""

    def __init__(self, tmp_path: Path, config: str, prefix: Sequence[str] = (), name: str = "daemon") -> None:
        self.config = tmp_path / f"{name}.yaml"
        self.config.write_text(config)
        self.stderr = tmp_path / f"{name}.stderr"
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
        env["PYTHONPATH"] = str(REPO)
        self._err = open(self.stderr, "w")
        self.proc = subprocess.Popen([*prefix, str(PORTWATCH), "run", "--config", str(self.config),
                                      "--listen-address", f"127.0.0.1:{self.port}"],
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err)

    def metrics(self) -> dict[Any, float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
                return parse_exposition(r.read().decode())
        except OSError:
            return None

    def wait_metrics(self, what: str, check: Callable[[dict[Any, float]], bool]) -> dict[Any, float]:
        def probe() -> dict[Any, float] | None:
            assert self.proc.poll() is None, f"the daemon exited:\n{self.stderr.read_text()}"
            m = self.metrics()
            return m if m is not None and check(m) else None
        got: dict[Any, float] = wait_for(what, probe, explain=lambda: self.stderr.read_text()[-3000:])
        return got

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (if it still runs) and wait (bounded) for the exit; its status."""
        try:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, sig)
            return self.proc.wait(timeout=60)
        finally:
            self._err.close()


def portwatch_rules(host: AuditHost) -> list[str]:
    return [r for r in auditctl_rules(host.auditctl) if "key=portwatch" in r]


def capture_active(m: dict[Any, float]) -> bool:
    return value(m, "portwatch_failure_capture_active") == 1 and (value(m, "portwatch_scans_total") or 0) >= 1


def capture_config(tmp_path: Path, netns: NetNS, extra: str = "") -> str:
    return (f"interval: 1s\nstate_directory: {tmp_path / 'state'}\ncapture: {{failures: audit}}\n"
            f"namespaces: {{scan: all, include: [{netns.name}, host]}}\n{extra}")


def alert_config(am: Alertmanager) -> str:
    return f"""alerts:
  sinks:
    am:
      type: alertmanager
      urls: ["{am.url}"]
      resend_interval: 1h
      retry_initial_delay: 100ms
      retry_max_delay: 1s
  rules:
    - name: page
      kind: connect_failed
      sinks: [am]
"""


def test_daemon_reports_a_failed_connect_in_a_namespace_to_alertmanager_and_metrics_and_cleans_its_rules(
        netns: NetNS, audit_host: AuditHost, tmp_path: Path) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40009")
    subprocess.run([audit_host.auditctl, *FOREIGN_RULE], check=True, capture_output=True)
    foreign = [r for r in auditctl_rules(audit_host.auditctl) if TEST_KEY in r]
    am = Alertmanager(tmp_path / "am").start()
    daemon = HostDaemon(tmp_path, capture_config(tmp_path, netns, alert_config(am)))
    try:
        daemon.wait_metrics("the capture on and a pass done", capture_active)
        assert len(portwatch_rules(audit_host)) >= 2  # connect and bind, b64 (and b32 where the kernel has it)
        assert value(daemon.wait_metrics("metrics", capture_active), "portwatch_failures_total",
                     kind="connect_failed") == 0
        client, info = netns.actor("exhaust", "--to", "127.0.0.1:5001", "--count", "11", "--allow-exhaustion")
        assert info["count"] == 10 and info["exhausted"][0]["error"] == "EADDRNOTAVAIL"

        (alert,) = wait_for("the connect_failed alert in Alertmanager",
                            lambda: am.find(alertname="PortwatchConnectFailed") or None,
                            explain=lambda: f"alerts: {am.alerts()}\n{daemon.stderr.read_text()[-3000:]}")
        labels, summary = alert["labels"], alert["annotations"]["summary"]
        assert labels["kind"] == "connect_failed" and labels["severity"] == "critical"
        assert labels["key"].startswith("connect_failed:127.0.0.1:5001:") and labels["key"].endswith(f"@{netns.name}")
        assert f"[{client.pid}]" in summary and "could not connect to 127.0.0.1:5001 (EADDRNOTAVAIL" in summary
        assert "because 10 of 10 usable ports to 127.0.0.1:5001 are in use by" in summary  # the exhaustion, linked
        m = daemon.wait_metrics("the failure counted", lambda m: (value(m, "portwatch_failures_total",
                                                                       kind="connect_failed") or 0) >= 1)
        assert value(m, "portwatch_connect_failures_by_destination_total", netns=netns.name,
                     remote_ip="127.0.0.1", remote_port="5001") == value(m, "portwatch_failures_total",
                                                                          kind="connect_failed")
        assert value(m, "portwatch_findings", netns=netns.name, kind="ephemeral_exhaustion",
                     severity="critical") == 1
    finally:
        code = daemon.stop()
        am.stop()
    assert code == 0, daemon.stderr.read_text()
    assert portwatch_rules(audit_host) == []  # its own rules gone at SIGTERM
    assert [r for r in auditctl_rules(audit_host.auditctl) if TEST_KEY in r] == foreign  # the other one untouched
    assert restored(audit_host)
    assert "Traceback" not in daemon.stderr.read_text()


def test_after_a_sigkill_the_next_daemon_reuses_the_rules_and_its_sigterm_removes_them(
        netns: NetNS, audit_host: AuditHost, tmp_path: Path) -> None:
    config = capture_config(tmp_path, netns)
    first = HostDaemon(tmp_path, config, name="first")
    try:
        first.wait_metrics("the first daemon's capture on", capture_active)
        left = portwatch_rules(audit_host)
        assert left
    finally:
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert portwatch_rules(audit_host) == left  # a crash leaves them
    second = HostDaemon(tmp_path, config, name="second")
    try:
        second.wait_metrics("the second daemon's capture on", capture_active)
        assert portwatch_rules(audit_host) == left  # reused, not doubled
    finally:
        code = second.stop()
    assert code == 0, second.stderr.read_text()
    assert portwatch_rules(audit_host) == []
    assert restored(audit_host)


def test_without_the_audit_capabilities_one_note_and_scans_go_on(
        netns: NetNS, audit_host: AuditHost, tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    require(setpriv is not None, "needs setpriv (util-linux) to drop capabilities")
    assert setpriv is not None
    drop = [setpriv, "--inh-caps=-audit_control,-audit_read", "--bounding-set=-audit_control,-audit_read", "--"]
    daemon = HostDaemon(tmp_path, capture_config(tmp_path, netns), prefix=drop)
    try:
        m = daemon.wait_metrics("two passes", lambda m: (value(m, "portwatch_scans_total") or 0) >= 2)
        assert value(m, "portwatch_failure_capture_active") == 0
        assert value(m, "portwatch_last_scan_success") == 1
    finally:
        code = daemon.stop()
    assert code == 0
    err = daemon.stderr.read_text()
    assert err.count("failure capture is off: the audit subsystem needs CAP_AUDIT_CONTROL") == 1, err
    assert "Traceback" not in err
    assert portwatch_rules(audit_host) == []


def test_sighup_turns_the_capture_on_and_off(netns: NetNS, audit_host: AuditHost, tmp_path: Path) -> None:
    audit = capture_config(tmp_path, netns)
    off = audit.replace("failures: audit", "failures: off")
    daemon = HostDaemon(tmp_path, off)
    try:
        m = daemon.wait_metrics("a pass", lambda m: (value(m, "portwatch_scans_total") or 0) >= 1)
        assert portwatch_rules(audit_host) == []
        assert value(m, "portwatch_failure_capture_active") is None  # not configured: not exported
        daemon.config.write_text(audit)
        os.kill(daemon.proc.pid, signal.SIGHUP)
        daemon.wait_metrics("the capture on after SIGHUP", capture_active)
        assert portwatch_rules(audit_host)
        daemon.config.write_text(off)
        os.kill(daemon.proc.pid, signal.SIGHUP)
        daemon.wait_metrics("the failure metrics gone after SIGHUP",
                            lambda m: value(m, "portwatch_failures_total", kind="connect_failed") is None)
        assert portwatch_rules(audit_host) == []
        assert restored(audit_host)
    finally:
        code = daemon.stop()
    assert code == 0
    err = daemon.stderr.read_text()
    assert "failure capture turned on" in err and "failure capture turned off" in err and "Traceback" not in err


# ----------------------------------------------------------------- the thread, with a scripted capture


class ScriptedCapture(FailureCapture):
    """A capture without audit: :meth:`start` answers ``started``; each read returns (or raises) the next item."""

    def __init__(self, script: Sequence[FailureBatch | Exception], started: bool = True,
                 notes: Sequence[str] = ()) -> None:
        super().__init__()
        self.script = list(script)
        self.started = started
        self.notes = list(notes)
        self.stops = 0
        self._pair = socket.socketpair()

    def start(self) -> bool:
        self.active = self.started
        return self.started

    def fileno(self) -> int:
        return self._pair[0].fileno()

    def read(self, max_messages: int = 4096) -> FailureBatch:
        if not self.script:
            return FailureBatch()
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def stop(self) -> None:
        self.active = False
        self.stops += 1
        for s in self._pair:
            s.close()


class Posted:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[Message] = []

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    def of(self, kind: type[Any]) -> list[Any]:
        with self.lock:
            return [m for m in self.messages if isinstance(m, kind)]


def scripted_thread(captures: list[ScriptedCapture], posted: Posted, config: Config,
                    registry: CollectorRegistry | None = None) -> FailureThread:
    made = iter(captures)
    return FailureThread(config, posted, registry or CollectorRegistry(), capture_factory=lambda: next(made),
                         poll_interval=0.02, restart_pause=0.05, explain_wait=30, clock=lambda: T + 5)


AUDIT = Config(capture=CaptureConfig(failures="audit"))


def test_the_thread_survives_a_broken_capture_and_waits_for_the_pass_it_asks_for(
        caplog: pytest.LogCaptureFixture) -> None:
    event = failure(FailedCall.CONNECT, "127.0.0.1:5001")
    broken = ScriptedCapture([OSError(errno.EBADF, "Bad file descriptor")])
    working = ScriptedCapture([FailureBatch((event,))])
    posted = Posted()
    registry = CollectorRegistry()
    thread = scripted_thread([broken, working], posted, AUDIT, registry)
    caplog.set_level(logging.INFO, logger="portwatch.daemon.failures")
    thread.start()
    try:
        wait_for("the Rescan of the new failure", lambda: posted.of(Rescan))
        assert broken.stops == 1 and posted.of(EventFindings) == []  # waiting for the pass that names the cause
        thread.passed(NamespacesResult((exhausted_scan(),)))
        (got,) = wait_for("the findings", lambda: posted.of(EventFindings))
    finally:
        assert thread.stop()
    (finding,) = got.findings
    assert finding.key == "connect_failed:127.0.0.1:5001:loadgen@blue" and finding.details["exhaustion"]
    assert working.stops == 1 and not thread.alive
    assert any("failure capture error (Bad file descriptor); starting it again" in r.message for r in caplog.records)
    text = generate_latest(registry).decode()
    assert 'portwatch_failures_total{kind="connect_failed"} 1.0' in text
    assert 'portwatch_connect_failures_by_destination_total{netns="netns:4026532999",remote_ip="127.0.0.1",' \
        'remote_port="5001"} 1.0' in text  # counted when read, before the pass named the namespace
    assert "portwatch_failure_capture_active 0.0" in text  # stopped


def test_a_capture_that_cannot_start_notes_once_and_a_reload_tries_again(
        caplog: pytest.LogCaptureFixture) -> None:
    note = "failure capture is off: the audit subsystem needs CAP_AUDIT_CONTROL"
    captures = [ScriptedCapture([], started=False, notes=[note]) for _ in range(2)]
    thread = scripted_thread(captures, Posted(), AUDIT)
    thread.start()
    wait_for("the first capture to give up", lambda: captures[0].stops == 1 and not thread.alive)
    thread.reconfigure(Config())
    thread.reconfigure(AUDIT)
    wait_for("the second capture to give up", lambda: captures[1].stops == 1 and not thread.alive)
    assert thread.stop()
    assert [r.message for r in caplog.records if r.message == note] == [note]


def test_a_capture_that_gave_up_waiting_for_the_lock_is_tried_again_after_the_pause() -> None:
    note = "failure capture is off: /run/portwatch/audit.lock stayed locked by another process for 10s"
    busy = ScriptedCapture([], started=False, notes=[note])
    busy.busy = True  # start() gave up waiting for the lock: a temporary condition
    working = ScriptedCapture([])
    thread = scripted_thread([busy, working], Posted(), AUDIT)
    thread.start()
    try:
        wait_for("the next capture to run, without a reload", lambda: working.active)
    finally:
        assert thread.stop()
    assert busy.stops == 1 and working.stops == 1


def test_a_reload_with_the_capture_still_asked_for_starts_one_that_could_not_start() -> None:
    note = "failure capture is off: /run/portwatch/audit.lock stayed locked by another process for 10s"
    refused = ScriptedCapture([], started=False, notes=[note])
    working = ScriptedCapture([])
    thread = scripted_thread([refused, working], Posted(), AUDIT)
    thread.start()
    try:
        wait_for("the first capture to give up", lambda: refused.stops == 1 and not thread.alive)
        thread.reconfigure(AUDIT)  # the same configuration: SIGHUP
        wait_for("the second capture to run", lambda: working.active)
    finally:
        assert thread.stop()
    assert working.stops == 1


def test_failures_in_a_namespace_the_configuration_leaves_out_are_neither_reported_nor_counted() -> None:
    left_out = failure(FailedCall.CONNECT, "127.0.0.1:5001", serial=1)  # in blue, which exclude leaves out
    elsewhere = replace(failure(FailedCall.CONNECT, "127.0.0.1:6001", serial=2, comm="other"), netns_inode=None)
    capture = ScriptedCapture([FailureBatch(), FailureBatch((left_out,)), FailureBatch((elsewhere,))])
    posted = Posted()
    registry = CollectorRegistry()
    thread = scripted_thread([capture], posted, AUDIT, registry)
    thread.passed(NamespacesResult((), left_out=(BLUE.inode,)))  # the pass before the failures
    thread.start()
    try:
        wait_for("the Rescan of the failure elsewhere", lambda: posted.of(Rescan))
        thread.passed(NamespacesResult((), left_out=(BLUE.inode,)))
        (got,) = wait_for("its findings", lambda: posted.of(EventFindings))
    finally:
        assert thread.stop()
    assert [f.details["destination"] for f in got.findings] == ["127.0.0.1:6001"]
    assert len(posted.of(Rescan)) == 1  # the left-out failure asked for none
    text = generate_latest(registry).decode()
    assert 'portwatch_failures_total{kind="connect_failed"} 1.0' in text
    assert "4026532999" not in text  # blue's inode: nothing counted under its label
