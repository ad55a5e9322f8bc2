"""The exec sink with REAL subprocesses (stdin document, environment, failures retried,
timeouts that kill the whole session, a hanging command that never blocks a scan) and the
journal sink (fields, priorities, the log when there is no journal)."""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest
from prometheus_client import CollectorRegistry

from portwatch.alerts import Alerting
from portwatch.alerts.sinks import default_journal_send
from portwatch.config import AlertsConfig, load_yaml, parse_config
from portwatch.model import Finding, Kind, ProcessInfo, Protocol, Severity
from tests.alertmanager import wait_for

HOST = "testhost"
A = Finding(kind=Kind.PORT_TAKEN, severity=Severity.CRITICAL, key="port_taken:tcp:40100",
            summary="port 40100 of 'api' is held by curl[77]", port=40100, protocol=Protocol.TCP,
            addresses=("127.0.0.1",), processes=(ProcessInfo(77, "curl", ("curl",), "app", "job.service"),),
            remediation="net.ipv4.ip_local_reserved_ports=40100")
B = Finding(kind=Kind.LOOP_PAIR, severity=Severity.WARNING, key="loop_pair:tcp:40001-40002",
            summary="loop pair", port=None, protocol=Protocol.TCP)

SCRIPT = textwrap.dedent('''\
    import json, os, subprocess, sys, time
    out = sys.argv[1]
    data = sys.stdin.read()
    starts = out + "-starts"
    os.makedirs(starts, exist_ok=True)
    calls = len(os.listdir(starts))
    open(os.path.join(starts, str(calls)), "w").close()
    record = {"stdin": data, "cwd": os.getcwd(), "argv": sys.argv[2:],
              "env": {k: v for k, v in os.environ.items() if k.startswith("PORTWATCH_")}}
    control = json.loads(open(sys.argv[2]).read()) if os.path.exists(sys.argv[2]) else {}
    step = control.get(str(calls), control.get("default", {}))
    if step.get("grandchild"):
        child = subprocess.Popen(["sleep", "300"])
        open(step["grandchild"], "w").write(str(child.pid))
    if step.get("fifo"):
        open(step["fifo"]).read()
    if step.get("sleep"):
        time.sleep(step["sleep"])
    # written aside, then renamed: the test polls the directory and must never read half a file
    final = os.path.join(out, f"{calls:03d}.json")
    with open(final + ".tmp", "w") as fh:
        json.dump(record, fh)
    os.rename(final + ".tmp", final)
    sys.stderr.write(step.get("stderr", ""))
    sys.exit(step.get("exit", 0))
''')


class Exec:
    """The test command: records each call in ``out/NNN.json``; ``control`` scripts each call's behaviour."""

    def __init__(self, tmp_path: Path) -> None:
        self.script = tmp_path / "hook.py"
        self.script.write_text(SCRIPT)
        self.out = tmp_path / "calls"
        self.out.mkdir()
        self.control = tmp_path / "control.json"

    def steps(self, **steps: dict[str, Any]) -> None:
        """Behaviour per call number (``_0``, ``_1``...) or ``default``."""
        self.control.write_text(json.dumps({k.lstrip("_"): v for k, v in steps.items()}))

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.out.glob("*.json"))]

    def config(self, timeout: str = "10s") -> AlertsConfig:
        return parse_config(load_yaml(f"""
alerts:
  sinks:
    run:
      type: exec
      command: [{sys.executable}, {self.script}, {self.out}, {self.control}]
      timeout: {timeout}
      retry_initial_delay: 10ms
      retry_max_delay: 50ms
  rules:
    - {{name: page, sinks: [run]}}
""")).alerts


@pytest.fixture
def run_sink(tmp_path: Path) -> Exec:
    return Exec(tmp_path)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Alerting]]:
    alertings: list[Alerting] = []
    try:
        yield alertings
    finally:
        for a in alertings:
            a.stop(5)


def make(config: AlertsConfig, tmp_path: Path, started: list[Alerting], registry: CollectorRegistry,
         journal: Any = None) -> Alerting:
    alerting = Alerting(config, tmp_path / "state", HOST, registry, journal=lambda: journal,
                        new_id=iter(f"id{i}" for i in range(1000)).__next__)
    alerting.start()
    started.append(alerting)
    return alerting


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- exec


def test_exec_gets_the_document_on_stdin(run_sink: Exec, tmp_path: Path, started: list[Alerting]) -> None:
    registry = CollectorRegistry()
    alerting = make(run_sink.config(), tmp_path, started, registry)
    alerting.process([A], 1000.0)
    (call,) = wait_for("one call", lambda: run_sink.calls() or None)
    doc = json.loads(call["stdin"])
    assert doc["id"] == "id0" and doc["status"] == "firing" and doc["alert"]["key"] == f"page/{A.key}"
    assert doc["finding"]["key"] == A.key and doc["remediation"] == A.remediation and doc["host"] == HOST
    assert call["cwd"] == "/"
    assert call["env"] == {"PORTWATCH_ALERT_STATUS": "firing", "PORTWATCH_ALERT_SEVERITY": "critical",
                           "PORTWATCH_ALERT_RULE": "page", "PORTWATCH_ALERT_KIND": "port_taken",
                           "PORTWATCH_ALERT_KEY": f"page/{A.key}", "PORTWATCH_ALERT_ID": "id0"}
    wait_for("the delivery to count", lambda: value(registry, "portwatch_alerts_sent_total", sink="run") == 1)


def test_exec_failures_are_retried_with_stderr_logged(run_sink: Exec, tmp_path: Path, started: list[Alerting],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    run_sink.steps(_0={"exit": 3, "stderr": "smtp relay down\n"}, _1={"exit": 1})
    registry = CollectorRegistry()
    alerting = make(run_sink.config(), tmp_path, started, registry)
    alerting.process([A], 1000.0)
    calls = wait_for("three calls", lambda: (c if len(c := run_sink.calls()) >= 3 else None))
    assert len({json.loads(c["stdin"])["id"] for c in calls}) == 1
    wait_for("the delivery to count", lambda: value(registry, "portwatch_alerts_sent_total", sink="run") == 1)
    assert value(registry, "portwatch_alerts_failed_total", sink="run") == 2
    assert value(registry, "portwatch_alerts_retried_total", sink="run") == 2
    assert "exited with status 3: smtp relay down" in caplog.text


def test_exec_timeout_kills_the_whole_session_and_retries(run_sink: Exec, tmp_path: Path,
                                                          started: list[Alerting]) -> None:
    grandchild = tmp_path / "grandchild.pid"
    run_sink.steps(_0={"grandchild": str(grandchild), "sleep": 300})
    registry = CollectorRegistry()
    alerting = make(run_sink.config(timeout="500ms"), tmp_path, started, registry)
    alerting.process([A], 1000.0)
    wait_for("a successful second call", lambda: value(registry, "portwatch_alerts_sent_total", sink="run") == 1)
    assert value(registry, "portwatch_alerts_failed_total", sink="run") == 1
    pid = int(grandchild.read_text())

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split(") ", 1)[1].startswith("Z")  # a zombie awaiting its reaper
        except FileNotFoundError:
            return True

    wait_for(f"the command's own child {pid} to be killed", gone)
    assert len(run_sink.calls()) == 1  # the first call never finished


def test_a_hanging_command_never_blocks_process(run_sink: Exec, tmp_path: Path, started: list[Alerting]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    run_sink.steps(_0={"fifo": str(fifo)})
    registry = CollectorRegistry()
    alerting = make(run_sink.config(timeout="5m"), tmp_path, started, registry)
    alerting.process([A], 1000.0)
    for t in range(1, 20):
        alerting.process([A, B] if t % 2 else [A], 1000.0 + t)  # returns while the command hangs
    assert run_sink.calls() == [] and len(alerting.queued("run")) == 20
    with open(fifo, "w") as fh:
        fh.write("go")
    wait_for("every notification to be run", lambda: len(run_sink.calls()) == 20)


# --------------------------------------------------------------------------- journal


def journal_config() -> AlertsConfig:
    return parse_config(load_yaml("""
alerts:
  sinks:
    journal: {type: journal, syslog_identifier: portwatch-test}
  rules:
    - {name: default, min_severity: warning, sinks: [journal]}
""")).alerts


def test_journal_entry_carries_the_alert_fields(tmp_path: Path, started: list[Alerting]) -> None:
    entries: list[Mapping[str, str]] = []
    alerting = make(journal_config(), tmp_path, started, CollectorRegistry(), journal=entries.append)
    alerting.process([A, B], 1000.0)
    alerting.process([B], 1010.0)
    wait_for("three entries", lambda: len(entries) == 3)
    firing, loop, resolved = entries
    assert firing == {
        "MESSAGE": f"portwatch alert firing [critical] default: {A.summary}",
        "PRIORITY": "2",
        "SYSLOG_IDENTIFIER": "portwatch-test",
        "PORTWATCH_ALERT_STATUS": "firing",
        "PORTWATCH_ALERT_REASON": "new",
        "PORTWATCH_ALERT_RULE": "default",
        "PORTWATCH_ALERT_KEY": f"default/{A.key}",
        "PORTWATCH_ALERT_ID": "id0",
        "PORTWATCH_KIND": "port_taken",
        "PORTWATCH_KEY": A.key,
        "PORTWATCH_SEVERITY": "critical",
        "PORTWATCH_PORT": "40100",
        "PORTWATCH_PID": "77",
        "PORTWATCH_PROCESS": "curl",
        "PORTWATCH_UNIT": "job.service",
        "PORTWATCH_REMEDIATION": A.remediation,
    }
    assert loop["PRIORITY"] == "4" and "PORTWATCH_PORT" not in loop and "PORTWATCH_PID" not in loop
    assert resolved["PRIORITY"] == "5" and resolved["PORTWATCH_ALERT_STATUS"] == "resolved"
    assert resolved["MESSAGE"].startswith("portwatch alert resolved [critical] default:")


def test_journal_falls_back_to_the_log(tmp_path: Path, started: list[Alerting],
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portwatch.alerts")
    alerting = make(journal_config(), tmp_path, started, CollectorRegistry(), journal=None)
    alerting.process([A], 1000.0)
    record = wait_for("a log record", lambda: next(
        (r for r in caplog.records if r.getMessage().startswith("portwatch alert firing")), None))
    assert record.levelno == logging.CRITICAL
    assert getattr(record, "PORTWATCH_KEY") == A.key and getattr(record, "PORTWATCH_PORT") == "40100"


def test_journal_error_falls_back_to_the_log(tmp_path: Path, started: list[Alerting],
                                             caplog: pytest.LogCaptureFixture) -> None:
    def broken(fields: Mapping[str, str]) -> None:
        raise OSError(111, "Connection refused")

    registry = CollectorRegistry()
    alerting = make(journal_config(), tmp_path, started, registry, journal=broken)
    alerting.process([A], 1000.0)
    wait_for("the delivery to count", lambda: value(registry, "portwatch_alerts_sent_total", sink="journal") == 1)
    assert "cannot write to the journal" in caplog.text and A.summary in caplog.text


def test_no_journal_socket_means_no_journal() -> None:
    assert default_journal_send(lambda: False) is None


def test_exec_document_has_the_webhook_shape(run_sink: Exec, tmp_path: Path,
                                                    started: list[Alerting]) -> None:
    alerting = make(run_sink.config(), tmp_path, started, CollectorRegistry())
    alerting.process([A], 1000.0)
    (call,) = wait_for("one call", lambda: run_sink.calls() or None)
    got = json.loads(call["stdin"])
    assert set(got) == {"version", "id", "status", "reason", "host", "alert", "created_at", "summary",
                        "remediation", "processes", "finding", "portwatch_version"}
