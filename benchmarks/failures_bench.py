"""Failure capture benchmark: what 2,000 failing connect() calls cost, without and with portwatch's audit rules.

Run as root, alone: ``.venv/bin/python benchmarks/failures_bench.py
[--count 2000] [--json]``. It changes the host's audit state (rules keyed
``portwatch``, the enabled flag, the backlog limit) and puts every part of it
back in a ``finally``, also when interrupted; it creates and removes its own
network namespace.

In a private namespace whose ``ip_local_port_range`` is one port, a child
process holds that port with a connection to a listener on 127.0.0.1:5001
and then calls ``connect()`` to it ``--count`` times, each failing with
EADDRNOTAVAIL (a new socket each time, closed after). The child times its
loop. Rows:

- ``no rules``: the audit state as found (no portwatch rule);
- ``rules, backlog 8192``: a :class:`~portwatch.collect.capture.FailureCapture`
  running in the host namespace (it enables auditing if it is off) with the
  kernel's backlog limit at 8192 (what the capture sets when it enables
  auditing, auditd's usual ``-b``);
- ``rules, backlog 64``: the same with the kernel's default limit, 64, at
  which a burst makes the failing callers wait in the kernel for the records
  to drain (``backlog_wait_time``);
- ``rules, backlog 64, read after``: the same, the reader reading only once
  the child is done (a daemon busy with a scan).

For the rows with rules, a reader thread reads the capture while the child
runs (as the daemon will) and the row gives the failures received, the
ENOBUFS drops, and the reader thread's CPU seconds per 1,000 audit records
(SYSCALL, SOCKADDR, PROCTITLE, EOE: about four per failure) and per 1,000
failures. The kernel gives audit contexts only to processes created after
auditing was first enabled since boot; once it has been, every new process
pays for its context even without rules, so the ``no rules`` row depends on
the host's past: its ``audit_enabled_before`` says what auditing was.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from portwatch.collect.audit import AuditControl  # noqa: E402
from portwatch.collect.auditlog import AuditReader, RecordJoiner  # noqa: E402
from portwatch.collect.capture import FailureCapture  # noqa: E402
from tests.auditkit import FAILING_CONNECTS, host_audit_turn, restore_audit  # noqa: E402

def run_child(ns: str, count: int) -> dict[str, Any]:
    """Run the failing-connect child in namespace ``ns``; its JSON line (pid, seconds, failed)."""
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", FAILING_CONNECTS, str(count)],
                          capture_output=True, text=True, timeout=600, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


class Reader(threading.Thread):
    """Reads a capture until told to stop; counts the failures of one pid and its own CPU time."""

    def __init__(self, capture: FailureCapture) -> None:
        super().__init__(daemon=True)
        self.capture = capture
        self.pids: dict[int, int] = {}
        self.cpu = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        start = time.thread_time()
        with selectors.DefaultSelector() as sel:
            sel.register(self.capture.fileno(), selectors.EVENT_READ)
            while not self.halt.is_set():
                sel.select(0.05)
                for event in self.capture.read().events:
                    self.pids[event.pid] = self.pids.get(event.pid, 0) + 1
        self.cpu = time.thread_time() - start


def captured_row(name: str, ns: str, count: int, capture: FailureCapture, reader: AuditReader,
                 timeout: float = 60.0, reading: bool = True) -> dict[str, Any]:
    """One row with the capture running: the child's timing and what the reader got, at what CPU cost.

    ``reading`` False: the reader thread starts only after the child ended
    (the records wait in the kernel and in the socket buffer meanwhile).
    """
    thread = Reader(capture)
    records_before, dropped_before = reader.records_total, reader.dropped_total
    if reading:
        thread.start()
    try:
        child = run_child(ns, count)
        if not reading:
            thread.start()
        deadline = time.monotonic() + timeout
        while thread.pids.get(child["pid"], 0) < child["failed"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.6)  # the pair bound: records still queued are read, then the reader stops
    finally:
        thread.halt.set()
        thread.join(timeout=30)
    records = reader.records_total - records_before
    got = thread.pids.get(child["pid"], 0)
    return {"row": name, "seconds": child["seconds"], "failed": child["failed"], "received": got,
            "dropped": reader.dropped_total - dropped_before, "records": records,
            "reader_cpu_per_1000_records": thread.cpu / records * 1000 if records else None,
            "reader_cpu_per_1000_failures": thread.cpu / got * 1000 if got else None}


def bench(count: int) -> dict[str, Any]:
    """Every row; the host's audit state is restored (rules, enabled, backlog limit) whatever happens."""
    with AuditControl() as control:
        before = control.status()
    ns = f"pwbench-{uuid.uuid4().hex[:8]}"
    rows: list[dict[str, Any]] = []
    capture: FailureCapture | None = None
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40000"],
                       check=True)
        child = run_child(ns, count)
        rows.append({"row": "no rules", "seconds": child["seconds"], "failed": child["failed"]})
        readers: list[AuditReader] = []

        def make_reader(joiner: RecordJoiner) -> AuditReader:
            readers.append(AuditReader(joiner))
            return readers[-1]

        with tempfile.TemporaryDirectory() as tmp:
            capture = FailureCapture(lock_path=Path(tmp) / "audit.lock", reader_factory=make_reader)
            if not capture.start():
                raise SystemExit(f"the capture did not start: {capture.notes}")
            for limit, reading in ((8192, True), (64, True), (64, False)):
                with AuditControl() as control:
                    control.set_backlog_limit(limit)
                name = f"rules, backlog {limit}" + ("" if reading else ", read after")
                rows.append(captured_row(name, ns, count, capture, readers[-1], reading=reading))
            capture.stop()
            capture = None
    finally:
        if capture is not None:
            capture.stop()
        restore_audit(before.enabled, before.backlog_limit)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return {"count": count, "audit_enabled_before": before.enabled, "backlog_limit_before": before.backlog_limit,
            "kernel": os.uname().release, "rows": rows}


def render(doc: dict[str, Any]) -> str:
    """The rows as a table."""
    lines = [f"{doc['count']} failing connect() calls (EADDRNOTAVAIL), kernel {doc['kernel']}, "
             f"auditing enabled before: {doc['audit_enabled_before']}",
             f"{'row':<31} {'seconds':>8} {'received':>9} {'dropped':>8} {'CPU s/1000 records':>19} "
             f"{'CPU s/1000 failures':>20}"]
    for r in doc["rows"]:
        def cpu(key: str) -> str:
            return "-" if r.get(key) is None else f"{r[key]:.4f}"
        lines.append(f"{r['row']:<31} {r['seconds']:>8.3f} {r.get('received', '-'):>9} {r.get('dropped', '-'):>8} "
                     f"{cpu('reader_cpu_per_1000_records'):>19} {cpu('reader_cpu_per_1000_failures'):>20}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run the rows, print them (a table, or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="failing connect() calls per row (2000)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root: it adds audit rules and creates a network namespace")
    with host_audit_turn():  # not while audit tests run: the rules and the audit state are host-wide
        doc = bench(args.count)
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
