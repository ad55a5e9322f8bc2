"""The ``portwatch`` command as a user runs it: ``--version``, the default configuration file, the table's width."""

from __future__ import annotations

import os
import platform
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

from portwatch.collect import netlink
from tests.netns import REPO, NetNS

PORTWATCH = REPO / ".venv" / "bin" / "portwatch"
WAIT = 60.0
#: What --version says of the C loop of the classifier: the checkout's venv install builds it in place.
CLASSIFIER = "C classifier" if netlink.ACCELERATOR is not None else "pure-Python classifier"


def test_version_in_a_checkout_says_revision_unknown() -> None:
    res = subprocess.run([str(PORTWATCH), "--version"], capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"portwatch 0.1.0 (revision unknown, Python {platform.python_version()}, {CLASSIFIER})\n"


def test_version_of_a_build_carries_its_revision(tmp_path: Path) -> None:
    package = tmp_path / "portwatch"
    shutil.copytree(REPO / "portwatch", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "_build.py").write_text('REVISION = "v0.1.0-3-gabc1234"\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "portwatch", "--version"], capture_output=True, text=True,
                         timeout=WAIT, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # the copy holds the C classifier the checkout's install built in place, when there is one
    assert re.fullmatch(r"portwatch \S+ \(revision v0\.1\.0-3-gabc1234, Python \d+\.\d+\.\d+\S*, "
                        + CLASSIFIER + r"\)\n", res.stdout)


def test_the_command_and_python_m_exit_with_the_status_main_returns(tmp_path: Path) -> None:
    # both run portwatch.__main__.run: main's status and output, the heap frozen before the exit
    bad = tmp_path / "bad.yaml"
    bad.write_text("interval: fast\n")
    for command in ([str(PORTWATCH)], [sys.executable, "-m", "portwatch"]):
        res = subprocess.run([*command, "check-config", str(bad)], capture_output=True, text=True, timeout=WAIT)
        assert res.returncode == 2 and res.stdout == "", res.stderr
        assert res.stderr.startswith(f"{bad}: interval: must be a number of seconds"), res.stderr


MAIN = "import sys; from pathlib import Path; from portwatch.cli import main; " \
       "sys.exit(main(sys.argv[2:], default_config=Path(sys.argv[1])))"


def run_main(default_config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``portwatch ARGV`` in a subprocess, with ``default_config`` as the default configuration file."""
    return subprocess.run([sys.executable, "-c", MAIN, str(default_config), *argv], capture_output=True,
                          text=True, timeout=WAIT)


def test_scan_and_reserve_read_the_default_file_when_it_exists_and_say_so(tmp_path: Path) -> None:
    default = tmp_path / "portwatch.yaml"
    default.write_text("services:\n  - {name: inrange, port: 45678}\n")
    res = run_main(default, "reserve")
    assert res.returncode == 0, res.stderr
    assert res.stderr == f"portwatch: using {default}\n"
    assert "45678" in res.stdout
    res = run_main(default, "scan", "--fail-on", "never")
    assert res.returncode == 0 and res.stderr == f"portwatch: using {default}\n", res.stderr
    assert "45678" in res.stdout


def test_an_explicit_config_or_a_missing_default_file_is_not_announced(tmp_path: Path) -> None:
    default = tmp_path / "portwatch.yaml"
    default.write_text("services:\n  - {name: inrange, port: 45678}\n")
    other = tmp_path / "other.yaml"
    other.write_text("interval: 5s\n")
    res = run_main(default, "reserve", "--config", str(other))
    assert res.returncode == 0 and res.stderr == "" and "45678" not in res.stdout, res.stderr
    res = run_main(tmp_path / "absent.yaml", "reserve")
    assert res.returncode == 0 and res.stderr == "" and "45678" not in res.stdout, res.stderr


def test_a_broken_default_file_is_an_error_naming_it(tmp_path: Path) -> None:
    default = tmp_path / "portwatch.yaml"
    default.write_text("interval: -5\n")
    res = run_main(default, "scan")
    assert res.returncode == 2 and f"portwatch: using {default}\n" in res.stderr and "interval" in res.stderr


def scan_on_a_terminal(ns: NetNS, columns: int) -> str:
    """``portwatch scan`` in ``ns`` with its stdout on a pseudo-terminal of ``COLUMNS=columns``; what it printed."""
    master, slave = pty.openpty()
    env = {**ns.env(), "COLUMNS": str(columns)}
    try:
        proc = ns.popen([str(PORTWATCH), "scan", "--fail-on", "never"], env=env, stdout=slave,
                        stderr=subprocess.DEVNULL)
        os.close(slave)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        os.close(master)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_the_table_wraps_to_the_terminal_and_not_in_a_pipe(netns: NetNS) -> None:
    _proc, _info = netns.actor("listen", "--port", "45000")
    piped = netns.run([str(PORTWATCH), "scan", "--fail-on", "never"], env={**netns.env(), "COLUMNS": "60"},
                      timeout=WAIT)
    assert piped.returncode == 0, piped.stderr
    assert max(len(line) for line in piped.stdout.splitlines()) > 60  # today's lines, unwrapped
    shown = scan_on_a_terminal(netns, 60)
    lines = shown.splitlines()
    assert lines and max(len(line) for line in lines) <= 60, shown
    def body(text: str) -> str:  # the report without its header (time, duration) nor its line breaks
        return "".join(text[text.index("ephemeral port range"):].split())
    assert body(shown) == body(piped.stdout)
    (fix,) = [i for i, line in enumerate(lines) if line.lstrip().startswith("fix:")]
    value_at = lines[fix].index("fix:") + len("fix:      ")
    assert lines[fix + 1].startswith(" " * value_at) and lines[fix + 1][value_at] != " "
