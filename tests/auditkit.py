"""Audit rules for tests: host-wide, so every test that touches them restores the host in a finally.

:func:`audit_host` (a fixture) skips without root, auditctl or kernel audit
support (fails under CI=true), and after the test, passed or failed, deletes
every rule keyed ``portwatch`` or ``pwtest-*`` and puts the enabled state
and the backlog limit back (:func:`restore_audit`, which the benchmark uses
too), and removes ``/run/portwatch`` when the test made it (the lock file of
a daemon's or a watch's capture). :func:`auditctl_rules` lists the rules as ``auditctl -l`` prints them;
:func:`wait_events` reads a capture until the failures a test waits for came.
Tests of every checkout on the host (and the benchmark) take turns through
:func:`host_audit_turn`, a host-wide lock: the state they change is host-wide.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from portwatch.collect.audit import AuditControl, AuditError, AuditRule, is_portwatch_rule
from portwatch.collect.capture import DEFAULT_LOCK_PATH, FailureCapture
from portwatch.model.failures import FailureEvent
from tests.conftest import require, require_binary

#: A program for a namespace whose ip_local_port_range is one port: it holds that port with a connection to
#: 127.0.0.1:5001, then fails ``argv[1]`` connect() calls (EADDRNOTAVAIL); prints ``{"pid", "seconds", "failed"}``.
FAILING_CONNECTS = """
import json, os, socket, sys, time
count = int(sys.argv[1])
listener = socket.socket(); listener.bind(("127.0.0.1", 5001)); listener.listen(8)
held = socket.socket(); held.connect(("127.0.0.1", 5001))
failed = 0
start = time.perf_counter()
for _ in range(count):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", 5001))
    except OSError:
        failed += 1
    s.close()
print(json.dumps({"pid": os.getpid(), "seconds": time.perf_counter() - start, "failed": failed}))
"""

#: Host-wide: every test touching audit (any checkout) and the benchmark hold it exclusively, in turn.
HOST_TEST_LOCK = Path("/run/portwatch-audit-tests.lock")
HOST_TURN_TIMEOUT = 600.0

#: The key of rules a test adds itself (never portwatch's): removed after the test too.
TEST_KEY = "pwtest-other"


@dataclass(frozen=True)
class AuditHost:
    """What a test touching audit gets: auditctl's path, a private lock file, the state before the test."""

    auditctl: str
    lock: Path
    enabled_before: int
    backlog_before: int

    def capture(self) -> FailureCapture:
        """A capture coordinating through this test's lock file."""
        return FailureCapture(lock_path=self.lock)


def _ours(rule: AuditRule) -> bool:
    return is_portwatch_rule(rule) or any(k.startswith("pwtest") for k in rule.keys)


@contextlib.contextmanager
def host_audit_turn(timeout: float = HOST_TURN_TIMEOUT) -> Iterator[None]:
    """Hold :data:`HOST_TEST_LOCK` exclusively: audit tests of every checkout on the host take turns.

    Audit rules and the enabled state are host-wide, and each test's capture
    uses a private lock file, so two test runs at once (two worktrees, the
    benchmark) would remove each other's rules. Fails the test after ``timeout``
    seconds of waiting.
    """
    fd = os.open(HOST_TEST_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another audit test held {HOST_TEST_LOCK} for {timeout:.0f}s")
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


@pytest.fixture
def audit_host(tmp_path: Path) -> Iterator[AuditHost]:
    """The host's audit subsystem, for this test alone, restored after it (rules removed, state put back)."""
    require(os.geteuid() == 0, "needs root (CAP_AUDIT_CONTROL) to change audit rules")
    auditctl = require_binary("auditctl")
    with host_audit_turn():
        try:
            with AuditControl() as control:
                status = control.status()
            before = status.enabled
        except AuditError as exc:
            require(False, f"the kernel's audit subsystem is not usable here: {exc}")
            raise
        lock_dir = DEFAULT_LOCK_PATH.parent
        had_lock_dir = lock_dir.exists()
        try:
            yield AuditHost(auditctl, tmp_path / "audit.lock", before, status.backlog_limit)
        finally:
            restore_audit(before, status.backlog_limit)
            if not had_lock_dir:  # a daemon or watch the test ran made portwatch's lock directory
                DEFAULT_LOCK_PATH.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    lock_dir.rmdir()


def restore_audit(enabled: int, backlog_limit: int) -> None:
    """Delete every rule keyed ``portwatch`` or ``pwtest-*``; put back ``enabled`` (unless locked) and the limit.

    For the fixture and the benchmark (benchmarks/failures_bench.py). Raises
    :class:`AuditError` when the kernel refuses.
    """
    with AuditControl() as control:
        for rule in control.list_rules():
            if _ours(rule):
                control.delete_rule(rule)
        now = control.status()
        if now.enabled not in (enabled, 2):
            control.set_enabled(enabled)
        if now.backlog_limit != backlog_limit:
            control.set_backlog_limit(backlog_limit)


def auditctl_rules(auditctl: str) -> list[str]:
    """The rules as ``auditctl -l`` prints them (one per line; empty when there are none)."""
    out = subprocess.run([auditctl, "-l"], capture_output=True, text=True, check=True, timeout=30).stdout
    return [line for line in out.splitlines() if line.startswith("-")]


def auditctl_status(auditctl: str, field: str = "enabled") -> int:
    """A number of ``auditctl -s`` (``enabled``, ``backlog_limit``...)."""
    out = subprocess.run([auditctl, "-s"], capture_output=True, text=True, check=True, timeout=30).stdout
    return int(next(line.split()[1] for line in out.splitlines() if line.split()[:1] == [field]))


def restored(host: AuditHost) -> bool:
    """True if auditing's enabled state and backlog limit are what they were before the test (``auditctl -s``)."""
    return (auditctl_status(host.auditctl), auditctl_status(host.auditctl, "backlog_limit")) == \
        (host.enabled_before, host.backlog_before)


def wait_events(capture: FailureCapture, done: Callable[[list[FailureEvent]], bool],
                timeout: float = 15.0) -> list[FailureEvent]:
    """Read ``capture`` until ``done(events so far)``; every event read. Fails the test after ``timeout``."""
    events: list[FailureEvent] = []
    sel = selectors.DefaultSelector()
    sel.register(capture.fileno(), selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while not done(events):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"the failures did not arrive within {timeout}s; got {events}")
            sel.select(min(left, 0.2))
            events += capture.read().events
    finally:
        sel.close()
    return events
