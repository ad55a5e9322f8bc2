"""``portwatch watch`` as a user runs it: the real command in a namespace, real sockets around it.

The command runs in the test namespace (``ip netns exec``) or, with
``--netns``, in the test's own namespace watching the test namespace. The
test waits for its start line on stderr, makes sockets inside the namespace
(threads that entered it, see :mod:`tests.test_events`), then reads every
line of stdout and the exit status.
"""

from __future__ import annotations

import io
import json
import os
import selectors
import signal
import subprocess
import threading
import time
from typing import Any, Sequence

import pytest

from portwatch.config import Config
from portwatch.watch import WatchOptions, run_watch
from tests.netns import REPO, NetNS
from tests.test_events import in_netns, ordinary_traffic, self_connect_once, simultaneous_open_then_close

PORTWATCH = REPO / ".venv" / "bin" / "portwatch"
READY = "portwatch watch: scanning every"


class Watch:
    """A running ``portwatch watch`` (started by :func:`start_watch`)."""

    def __init__(self, proc: subprocess.Popen[str], head: str) -> None:
        self.proc = proc
        self.head = head

    def finish(self, timeout: float = 60.0, interrupt: bool = False) -> tuple[int, str, str]:
        """(exit status, stdout, stderr after the start line), after SIGINT when ``interrupt``."""
        if interrupt:
            self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def start_watch(args: Sequence[str], ns: NetNS | None, outside: NetNS | None = None) -> Watch:
    """Start ``portwatch watch ARGS`` (in ``ns``, or here when None); wait for its start line on stderr."""
    argv = [str(PORTWATCH), "watch", *args]
    if ns is not None:
        proc = ns.popen(argv, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    else:
        assert outside is not None  # stopped by the fixture of the namespace it watches
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, cwd=REPO)
        outside._procs.append(proc)
    assert proc.stderr is not None
    # Raw reads of the descriptor: a buffered readline() could take the start line into the file
    # object's buffer together with a note before it, and select() would then wait for more bytes
    # (until the watch ends) although the start line had come.
    fd = proc.stderr.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    raw = b""
    while READY.encode() not in raw:
        if not sel.select(30):
            proc.kill()
            raise AssertionError(f"watch did not start within 30 s: {raw!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            proc.wait(10)
            raise AssertionError(f"watch exited ({proc.returncode}) before starting: {raw!r}")
        raw += chunk
    sel.close()
    return Watch(proc, raw.decode("utf-8", "replace"))


def lines(out: str) -> list[dict[str, Any]]:
    """Every JSON line of stdout (each must parse)."""
    return [json.loads(line) for line in out.splitlines()]


def transient(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["finding"]["kind"] == kind and d["finding"]["transient"]]


def test_watch_prints_a_transient_self_connect_as_json_and_exits_1(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40009")
    watch = start_watch(["--format", "json", "--duration", "5"], netns)
    in_netns(netns, lambda: self_connect_once(40000, 0.02))
    status, out, err = watch.finish()
    docs = lines(out)
    (doc,) = transient(docs, "self_connect")
    assert doc["event"] == "found" and doc["at"].endswith("Z")
    finding = doc["finding"]
    assert finding["port"] == 40000 and finding["severity"] == "critical"
    assert finding["details"]["tcp_info"] is not None and finding["namespace"]["id"] > 0
    assert "not in the kernel's destroy event" in finding["summary"]
    assert {d["finding"]["kind"] for d in docs} == {"self_connect", "range_misconfigured"}  # the tiny range: info
    assert status == 1, err
    assert "1 critical" in err and "1 transient" in err


def test_watch_around_10000_ordinary_connections_prints_nothing_and_exits_0(netns: NetNS) -> None:
    watch = start_watch(["--format", "json", "--duration", "600"], netns)
    refused = in_netns(netns, lambda: ordinary_traffic(8080, 10_000, 100))
    assert refused == 100
    status, out, err = watch.finish(interrupt=True)  # SIGINT: a summary and the status
    assert out == "" and status == 0, err
    assert "portwatch watch: 0 findings" in err


def test_watch_reports_a_transient_loop_pair(netns: NetNS) -> None:
    watch = start_watch(["--format", "json", "--duration", "4"], netns)
    in_netns(netns, lambda: simultaneous_open_then_close((41000, 41001)))
    status, out, err = watch.finish()
    (doc,) = transient(lines(out), "loop_pair")
    assert {doc["finding"]["details"]["a"], doc["finding"]["details"]["b"]} == {"127.0.0.1:41000", "127.0.0.1:41001"}
    assert doc["finding"]["severity"] == "warning" and status == 1, err


def test_watch_of_another_namespace_keys_its_findings_and_prints_text_lines(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40009")
    watch = start_watch(["--netns", netns.name, "--duration", "4", "--fail-on", "never"], None, netns)
    in_netns(netns, lambda: self_connect_once(40000, 0.02))
    status, out, err = watch.finish()
    (line,) = [x for x in out.splitlines() if "self_connect (transient)" in x]
    when, event, severity, namespace, kind = line.split()[:5]
    assert (event, severity, namespace, kind) == ("found", "critical", netns.name, "self_connect")
    assert when.endswith("Z") and "connected to itself" in line
    assert status == 0, err  # --fail-on never


@pytest.mark.parametrize("args", [["--netns", "no-such-namespace-here"], ["--duration", "soon"],
                                  ["--interval", "0"]])
def test_watch_usage_errors_exit_2(netns: NetNS, args: list[str]) -> None:
    run = netns.run([str(PORTWATCH), "watch", "--duration", "1", *args], timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip(), "no reason given"


def test_a_self_connect_a_scan_saw_is_not_reported_again_when_it_closes(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40009")
    watch = start_watch(["--format", "json", "--duration", "6", "--interval", "0.5"], netns)
    in_netns(netns, lambda: self_connect_once(40000, 2.0))  # seen by about four scans, then closed (FIN)
    status, out, err = watch.finish()
    docs = [d for d in lines(out) if d["finding"]["kind"] == "self_connect"]
    assert [(d["event"], d["finding"]["transient"]) for d in docs] == [("found", False), ("resolved", False)], err
    assert docs[0]["finding"]["key"] == docs[1]["finding"]["key"] == "self_connect:tcp:127.0.0.1:40000"
    assert status == 1


def test_watch_duration_counts_from_its_start_line_not_from_a_slow_first_scan(netns: NetNS) -> None:
    """A first scan slower than ``--duration`` (a busy host, a hundred namespaces) leaves the whole
    ``--duration`` to watch: here the injected clock says the first scan took 100 s, and a self-connect
    made after the start line is still seen."""
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40009")
    calls = 0

    def monotonic() -> float:  # every reading after the first is 100 s later: the start took that long
        nonlocal calls
        calls += 1
        return time.monotonic() + (100.0 if calls > 1 else 0.0)

    late = threading.Timer(0.5, lambda: in_netns(netns, lambda: self_connect_once(40000, 0.02)))
    late.start()
    out = io.StringIO()
    try:
        status = run_watch(Config(), WatchOptions(netns=(netns.name,), format="json", duration=3.0),
                           out=out, monotonic=monotonic)
    finally:
        late.join(30)
    docs = lines(out.getvalue())
    assert [d["finding"]["port"] for d in transient(docs, "self_connect")] == [40000], docs
    assert status == 1
