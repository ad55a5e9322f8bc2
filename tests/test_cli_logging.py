"""``--log.level``/``--log.format``: real ``portwatch`` processes, their stderr parsed line by line."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.netns import REPO, NetNS

PORTWATCH = REPO / ".venv" / "bin" / "portwatch"
WAIT = 60.0  # upper bound of every wait loop (seconds); never an assertion about speed
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM", "LISTEN_FDS")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def run_daemon(ns: NetNS, tmp_path: Path, flags: list[str], *, before: bool,
               until: str, config_extra: str = "") -> str:
    """Run ``portwatch run`` in ``ns`` with ``flags`` before or after ``run``, until stderr holds ``until``.

    Returns the whole stderr after SIGTERM (exit 0 asserted).
    """
    config = tmp_path / "portwatch.yaml"
    config.write_text(f"interval: 1s\nstate_directory: {tmp_path / 'state'}\nnamespaces:\n  scan: own\n{config_extra}")
    err_path = tmp_path / "daemon.stderr"
    env = {k: v for k, v in ns.env().items() if k not in SYSTEMD_ENV}
    args = ["run", "--config", str(config), "--listen-address", "127.0.0.1:9731"]
    argv = [str(PORTWATCH), *(flags + args if before else args + flags)]
    with open(err_path, "w") as err:
        proc = ns.popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + WAIT
            while until not in err_path.read_text():
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, f"no {until!r} within {WAIT}s:\n{err_path.read_text()}"
                time.sleep(0.2)
            time.sleep(1.5)  # one more scan: a second line for the same finding would show
        finally:
            proc.terminate()
            code = proc.wait(timeout=WAIT)
    assert code == 0, err_path.read_text()
    return err_path.read_text()


@pytest.fixture
def listener(netns: NetNS) -> Iterator[tuple[NetNS, int]]:
    """A namespace with a TCP listener on port 45000 (inside the default range)."""
    _proc, info = netns.actor("listen", "--port", "45000")
    yield netns, int(info["ports"][0])


def logfmt(line: str) -> dict[str, str]:
    """The pairs of one logfmt line, asserting the line is nothing but pairs."""
    pairs = LOGFMT_PAIR.findall(line)
    assert " ".join(f"{k}={v}" for k, v in pairs) == line, line
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def test_json_lines_after_the_subcommand_carry_ts_level_msg_and_the_finding(
        listener: tuple[NetNS, int], tmp_path: Path) -> None:
    ns, port = listener
    err = run_daemon(ns, tmp_path, ["--log.format", "json", "--log.level", "debug"], before=False,
                     until="new warning finding")
    lines = [json.loads(line) for line in err.splitlines()]
    assert lines and all(TS.match(d["ts"]) and d["level"] in ("debug", "info", "warn", "error") and d["msg"]
                         for d in lines)
    (found,) = [d for d in lines if d["msg"].startswith("new warning finding")]
    assert found["level"] == "warn" and found["kind"] == "listener_in_ephemeral_range"
    assert found["key"] == f"listener_in_ephemeral_range:tcp:{port}" and found["port"] == str(port)
    assert found["severity"] == "warning" and found["caller"].endswith(".py:" + found["caller"].split(":")[-1])
    assert any(d["msg"].startswith("portwatch 0.1.0 started") and d["level"] == "info" for d in lines)


def test_logfmt_before_the_subcommand_at_warn_hides_info(listener: tuple[NetNS, int], tmp_path: Path) -> None:
    ns, port = listener
    err = run_daemon(ns, tmp_path, ["--log.level", "warn", "--log.format", "logfmt"], before=True,
                     until="new warning finding")
    lines = [logfmt(line) for line in err.splitlines()]
    assert lines and all(TS.match(d["ts"]) for d in lines)
    assert {d["level"] for d in lines} <= {"warn", "error"}
    assert not any("started" in d["msg"] for d in lines)
    (found,) = [d for d in lines if d["msg"].startswith("new warning finding")]
    assert found["port"] == str(port) and found["level"] == "warn"


def test_the_old_log_level_flag_is_an_alias(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("interval: -5\n")
    for argv in (["--log-level", "debug", "check-config", str(bad)], ["check-config", "--log-level", "info", str(bad)]):
        res = subprocess.run([str(PORTWATCH), *argv], capture_output=True, text=True, timeout=WAIT)
        assert res.returncode == 2 and "interval" in res.stderr, res.stderr
    res = subprocess.run([str(PORTWATCH), "--log.level", "loud", "check-config", str(bad)],
                         capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 2 and "invalid choice: 'loud'" in res.stderr


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_a_message_or_field_with_a_newline_or_escape_stays_one_line(fmt: str) -> None:
    from portwatch.daemon.logs import JsonFormatter, LogfmtFormatter

    formatter = LogfmtFormatter() if fmt == "logfmt" else JsonFormatter()
    record = logging.LogRecord("portwatch.findings", logging.WARNING, "loop.py", 7,
                               'evil\nts=forged level=error msg="x" \x1b[31m %s', ("pw\\d",), None)
    record.PORTWATCH_PROCESS = "a\nb \"q\""
    line = formatter.format(record)
    assert "\n" not in line and "\x1b" not in line and "\r" not in line
    fields = logfmt(line) if fmt == "logfmt" else json.loads(line)
    assert fields["msg"] == 'evil\\x0ats=forged level=error msg="x" \\x1b[31m pw\\d'
    assert fields["process"] == 'a\\x0ab "q"' and fields["level"] == "warn" and fields["caller"] == "loop.py:7"
    assert TS.match(fields["ts"])


@pytest.mark.parametrize("fmt", [[], ["--log.format", "logfmt"]], ids=["default-format", "logfmt"])
def test_one_line_per_finding_event_with_the_builtin_journal_sink(
        listener: tuple[NetNS, int], tmp_path: Path, fmt: list[str]) -> None:
    ns, port = listener
    err = run_daemon(ns, tmp_path, fmt, before=False, until="new warning finding")
    key = f"listener_in_ephemeral_range:tcp:{port}"
    about = [line for line in err.splitlines() if f"[{key}]" in line or f"port {port} " in line]
    assert len(about) == 1, err
    assert "new warning finding" in about[0] and "alert firing" not in err


def test_a_configured_journal_sink_still_logs_its_alert(listener: tuple[NetNS, int], tmp_path: Path) -> None:
    ns, port = listener
    err = run_daemon(ns, tmp_path, [], before=True, until="alert firing", config_extra=(
        "alerts:\n  sinks:\n    journal: {type: journal, syslog_identifier: portwatch-x}\n"))
    about = [line for line in err.splitlines() if f"port {port} " in line]
    assert len(about) == 2 and "new warning finding" in about[0] and "alert firing [warning]" in about[1], err
