"""The failure capture's audit side, on the real kernel: rules, their life cycle, the records, the holders.

Audit rules are host-wide: every test that touches them takes the
``audit_host`` fixture (tests/auditkit.py), which removes every portwatch and
test rule and restores the enabled state after the test, even when it fails.
Rules are checked with ``auditctl -l``, independently of portwatch's parser.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from portwatch.collect.audit import AuditControl, AuditError, AuditRule, AuditStatus, failure_rules
from portwatch.collect.auditlog import (
    AUDIT_EOE,
    AUDIT_SOCKADDR,
    AUDIT_SYSCALL,
    AuditReader,
    RecordJoiner,
    parse_saddr,
    untrusted,
)
from portwatch.collect.capture import NO_CAPABILITY_NOTE, FailureCapture
from portwatch.collect.holders import dump_port, port_holders
from portwatch.collect.namespaces import discover_namespaces
from portwatch.model import Endpoint, Protocol, SocketState
from portwatch.model.failures import FailedCall, FailureEvent
from tests.auditkit import (
    FAILING_CONNECTS,
    TEST_KEY,
    AuditHost,
    audit_host,
    auditctl_rules,
    auditctl_status,
    restored,
    wait_events,
)
from tests.netns import REPO, NetNS

__all__ = ["audit_host"]  # the fixture, imported to be found by pytest

#: ``auditctl -l`` of portwatch's rules, per architecture.
EXPECTED_RULES = {
    "x86_64": [
        "-a always,exit -F arch=b64 -S connect -F exit=-EADDRNOTAVAIL -F key=portwatch",
        "-a always,exit -F arch=b64 -S bind -F exit=-EADDRINUSE -F key=portwatch",
        "-a always,exit -F arch=b32 -S connect -F exit=-EADDRNOTAVAIL -F key=portwatch",
        "-a always,exit -F arch=b32 -S bind -F exit=-EADDRINUSE -F key=portwatch",
        "-a always,exit -F arch=b32 -S socketcall -F a0=0x3 -F exit=-EADDRNOTAVAIL -F key=portwatch",
        "-a always,exit -F arch=b32 -S socketcall -F a0=0x2 -F exit=-EADDRINUSE -F key=portwatch",
    ],
    "aarch64": [
        "-a always,exit -F arch=b64 -S connect -F exit=-EADDRNOTAVAIL -F key=portwatch",
        "-a always,exit -F arch=b64 -S bind -F exit=-EADDRINUSE -F key=portwatch",
        "-a always,exit -F arch=b32 -S connect -F exit=-EADDRNOTAVAIL -F key=portwatch",
        "-a always,exit -F arch=b32 -S bind -F exit=-EADDRINUSE -F key=portwatch",
    ],
}
#: A rule of someone else's selecting the same calls: portwatch must neither reuse nor remove it.
FOREIGN = ["-a", "always,exit", "-F", "arch=b64", "-S", "connect", "-F", "exit=-EADDRNOTAVAIL", "-k", TEST_KEY]
FOREIGN_LISTED = f"-a always,exit -F arch=b64 -S connect -F exit=-EADDRNOTAVAIL -F key={TEST_KEY}"
OUTSIDE_NOTE = ("failure capture is off: the kernel sends audit records only to readers in the host network "
                "namespace, and portwatch runs in another one")


def expected_rules() -> list[str]:
    machine = os.uname().machine
    if machine not in EXPECTED_RULES:
        pytest.skip(f"no expected auditctl listing for {machine}")
    return EXPECTED_RULES[machine]


def portwatch_lines(host: AuditHost) -> list[str]:
    return [line for line in auditctl_rules(host.auditctl) if line.endswith("key=portwatch")]


# ----------------------------------------------------------------- pure: rules, records, sockaddrs


def test_rules_round_trip_through_the_kernels_struct() -> None:
    wanted, optional = failure_rules("x86_64")
    for rule in (*wanted, *optional):
        again = AuditRule.unpack(rule.pack())
        assert again == rule and again.keys == ("portwatch",)
    assert [sorted(r.syscalls) for r in wanted] == [[42], [49]]
    assert [sorted(r.syscalls) for r in optional] == [[362], [361], [102], [102]]
    with pytest.raises(LookupError, match="sparc"):
        failure_rules("sparc")


def test_sockaddr_hex_is_decoded_for_both_families_and_refused_otherwise() -> None:
    assert parse_saddr("020013897F0000010000000000000000") == Endpoint("127.0.0.1", 5001)
    assert parse_saddr("0A00283C" "00000000" + "0" * 30 + "01" + "00000000") == Endpoint("::1", 10300)
    v4mapped = "0A001389" "00000000" + "0" * 20 + "FFFF" + "7F000002" + "00000000"
    assert parse_saddr(v4mapped) == Endpoint("127.0.0.2", 5001)
    assert parse_saddr("01002F746D70") is None  # AF_UNIX
    assert parse_saddr("0200") is None and parse_saddr("zz") is None


SYSCALL = ('audit(1764635200.512:3307): arch=c000003e syscall=42 success=no exit=-99 a0=3 a1=7ffc a2=10 '
           'a3=0 items=0 ppid=801 pid=990 auid=4294967295 uid=1000 gid=0 comm={comm} exe="/usr/bin/loadgen" '
           'key={key}')


def test_joiner_pairs_by_serial_and_completes_at_the_end_of_event() -> None:
    joiner = RecordJoiner()
    assert joiner.feed(AUDIT_SYSCALL, SYSCALL.format(comm='"loadgen"', key='"portwatch"')) == []
    assert joiner.feed(AUDIT_SOCKADDR, "audit(1764635200.512:3307): saddr=020013897F0000010000000000000000") == []
    (rec,) = joiner.feed(AUDIT_EOE, "audit(1764635200.512:3307): ")
    assert (rec.serial, rec.call, rec.exit, rec.complete) == (3307, FailedCall.CONNECT, -99, True)
    assert rec.address == Endpoint("127.0.0.1", 5001) and rec.at == pytest.approx(1764635200.512)
    assert (rec.fields["pid"], rec.fields["ppid"], rec.fields["uid"]) == ("990", "801", "1000")
    assert untrusted(rec.fields["comm"], "comm" in rec.quoted) == "loadgen"


def test_a_syscall_record_without_its_pair_is_reported_after_the_bound() -> None:
    now = [100.0]
    joiner = RecordJoiner(pair_timeout=0.5, clock=lambda: now[0])
    joiner.feed(AUDIT_SYSCALL, SYSCALL.format(comm="6C6F616467656E", key='"portwatch"'))
    assert joiner.flush() == []
    now[0] += 0.6
    (rec,) = joiner.flush()
    assert rec.complete is False and rec.address is None
    assert untrusted(rec.fields["comm"], "comm" in rec.quoted) == "loadgen"  # the kernel's hex escape


def test_a_rule_with_several_keys_is_recognised_in_the_kernels_hex_form() -> None:
    joiner = RecordJoiner()
    several = "other\x01portwatch".encode().hex().upper()
    joiner.feed(AUDIT_SYSCALL, SYSCALL.format(comm='"x"', key=several))
    assert [r.serial for r in joiner.flush(force=True)] == [3307]
    joiner.feed(AUDIT_SYSCALL, SYSCALL.format(comm='"x"', key="other".encode().hex()))
    joiner.feed(AUDIT_SYSCALL, SYSCALL.format(comm='"x"', key='"deadbeef"'))  # quoted: not hex
    assert joiner.flush(force=True) == []


def test_records_of_other_rules_and_strays_are_left_out() -> None:
    joiner = RecordJoiner()
    assert joiner.feed(AUDIT_SYSCALL, SYSCALL.format(comm='"x"', key='"someone-else"')) == []
    assert joiner.feed(AUDIT_SYSCALL, SYSCALL.format(comm='"x"', key="(null)")) == []
    assert joiner.feed(AUDIT_SOCKADDR, "audit(1.0:1): saddr=020013897F0000010000000000000000") == []
    assert joiner.feed(AUDIT_SYSCALL, "garbage") == [] and joiner.orphans == 1
    assert joiner.flush(force=True) == []


def test_the_collect_package_exports_the_capture_without_importing_netlink_or_audit_eagerly() -> None:
    code = ("import sys\nimport portwatch.collect as c\n"
            "heavy = lambda: sorted(m for m in sys.modules if 'netlink' in m or 'audit' in m)\n"
            "print(heavy())\n"
            "from portwatch.collect.capture import FailureCapture\nfrom portwatch.collect.holders import port_holders\n"
            "print(c.FailureCapture is FailureCapture and c.port_holders is port_holders)\nprint(heavy())\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "[]", "True", "['portwatch.collect.audit', 'portwatch.collect.auditlog', 'portwatch.collect.netlink']"]
    import portwatch.collect
    assert {"FailureCapture", "port_holders"} <= set(portwatch.collect.__all__)
    with pytest.raises(AttributeError, match="no attribute 'FailureCaptur'"):
        getattr(portwatch.collect, "FailureCaptur")


# ----------------------------------------------------------------- the targeted dump


def test_the_holder_dump_returns_only_the_ports_sockets_with_their_owner(netns: NetNS) -> None:
    proc, info = netns.actor("hold-port", "--port", "40100", "--to", "127.0.0.1:5002", "--serve")
    (target,) = [ns for ns in discover_namespaces().namespaces if ns.name == netns.name]

    holders = port_holders(40100, target)

    assert [(h.socket.protocol, h.socket.local, h.socket.remote, h.socket.state) for h in holders] == [
        (Protocol.TCP, Endpoint("127.0.0.1", 40100), Endpoint("127.0.0.1", 5002), SocketState.ESTABLISHED)]
    assert [p.pid for p in holders[0].processes] == [proc.pid] and info["service_bind"] == "EADDRINUSE"
    assert port_holders(40101, target) == ()
    assert all(s.local.port == 40100 for s in dump_port(40100)) and dump_port(1) == []


# ----------------------------------------------------------------- the rules' life cycle on the real kernel


def test_rules_are_there_while_capturing_and_gone_after_stop_leaving_others_alone(audit_host: AuditHost) -> None:
    host = audit_host
    subprocess.run([host.auditctl, *FOREIGN], check=True, capture_output=True)
    capture = host.capture()
    try:
        assert capture.start(), capture.notes
        assert portwatch_lines(host) == expected_rules()
        assert FOREIGN_LISTED in auditctl_rules(host.auditctl)
        assert auditctl_status(host.auditctl) in (1, 2)
        if host.enabled_before == 0:  # portwatch enabled auditing: with a backlog that does not stall callers
            assert auditctl_status(host.auditctl, "backlog_limit") >= 8192
        assert capture.reused == 0
    finally:
        capture.stop()
    assert portwatch_lines(host) == []
    assert auditctl_rules(host.auditctl) == [FOREIGN_LISTED]
    assert restored(host)


_CAPTURE_SCRIPT = """
import sys, time
from portwatch.collect.capture import FailureCapture
cap = FailureCapture(lock_path=sys.argv[1])
print("READY" if cap.start() else "FAILED " + repr(cap.notes), flush=True)
time.sleep(600)
"""


def test_a_crashed_capture_leaves_its_rules_and_the_next_one_reuses_them(audit_host: AuditHost) -> None:
    host = audit_host
    crashed = subprocess.Popen([sys.executable, "-c", _CAPTURE_SCRIPT, str(host.lock)], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert crashed.stdout is not None and crashed.stdout.readline().strip() == "READY"
    finally:
        os.kill(crashed.pid, signal.SIGKILL)
        crashed.wait(timeout=30)
        crashed.stdout.close() if crashed.stdout else None
    assert portwatch_lines(host) == expected_rules()  # the crash left them
    capture = host.capture()
    try:
        assert capture.start(), capture.notes
        assert capture.reused == len(expected_rules())
        assert portwatch_lines(host) == expected_rules()  # one set, not two
        assert capture.enabled_by_portwatch is (host.enabled_before == 0)
    finally:
        capture.stop()
    assert portwatch_lines(host) == []
    assert restored(host)  # the crashed run's enabling undone


def test_two_captures_share_the_rules_and_the_last_to_stop_removes_them(audit_host: AuditHost) -> None:
    host = audit_host
    first, second = host.capture(), host.capture()
    try:
        assert first.start() and second.start()
        assert second.reused == len(expected_rules())
        first.stop()
        assert portwatch_lines(host) == expected_rules()
        assert any("another portwatch capture" in n for n in first.notes)
    finally:
        first.stop()
        second.stop()
    assert portwatch_lines(host) == []
    assert restored(host)


def _refused() -> AuditControl:
    raise AuditError(errno.EPERM, "audit control refused")


def _host_proc(root: Path, host_only_sysctl: bool = True) -> Path:
    """A /proc where pid 1 is hidden (hidepid, a sandbox) and the own namespace has an ordinary inode.

    As the initial namespace has on kernels before the fixed PROC_NET_INIT_INO; with
    ``host_only_sysctl`` the sysctl only the initial namespace has is there.
    """
    proc = root / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "self" / "ns" / "net").write_text("")
    (proc / "sys" / "net" / "core").mkdir(parents=True)
    if host_only_sysctl:
        (proc / "sys" / "net" / "core" / "netdev_max_backlog").write_text("1000\n")
    return proc


@pytest.mark.parametrize("host_only_sysctl", [True, False])
def test_the_host_namespace_is_told_by_its_sysctls_when_pid_1_cannot_be_read(
        tmp_path: Path, host_only_sysctl: bool) -> None:
    proc = _host_proc(tmp_path, host_only_sysctl)
    capture = FailureCapture(proc_root=proc, lock_path=tmp_path / "lock", control_factory=_refused)
    assert capture.start() is False
    if host_only_sysctl:  # the host's: the capture went on to the audit control, which refused
        assert capture.notes == [NO_CAPABILITY_NOTE]
    else:
        assert capture.notes == [OUTSIDE_NOTE]
    assert not (tmp_path / "lock").exists()


@dataclass
class _Kernel:
    """The audit state a fake control changes: what the kernel would hold."""

    enabled: int = 0
    pid: int = 0
    backlog_limit: int = 64
    rules: list[AuditRule] = field(default_factory=list)


def _route_socket() -> socket.socket:
    """A netlink socket any user may open and bind (NETLINK_ROUTE), standing in for the audit one."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


def _fake_capture(kernel: _Kernel, root: Path, lock: Path | None = None, lock_timeout: float = 10.0) -> FailureCapture:
    """A capture whose audit control changes ``kernel`` instead of the host, reading a silent socket."""

    class FakeControl(AuditControl):
        def __init__(self) -> None:
            super().__init__(factory=_route_socket)

        def status(self) -> AuditStatus:
            return AuditStatus(kernel.enabled, kernel.pid, 0, kernel.backlog_limit)

        def set_enabled(self, enabled: int) -> None:
            kernel.enabled = enabled

        def set_backlog_limit(self, limit: int) -> None:
            kernel.backlog_limit = limit

        def list_rules(self) -> list[AuditRule]:
            return list(kernel.rules)

        def add_rule(self, rule: AuditRule) -> None:
            kernel.rules.append(rule)

        def delete_rule(self, rule: AuditRule) -> None:
            kernel.rules.remove(rule)

    return FailureCapture(proc_root=_host_proc(root), lock_path=lock or root / "lock", control_factory=FakeControl,
                          reader_factory=lambda joiner: AuditReader(joiner, factory=_route_socket),
                          machine="x86_64", lock_timeout=lock_timeout)


def test_auditing_enabled_by_portwatch_stays_enabled_when_an_audit_daemon_registered_meanwhile(
        tmp_path: Path) -> None:
    kernel = _Kernel()
    capture = _fake_capture(kernel, tmp_path)
    assert capture.start(), capture.notes
    assert (kernel.enabled, kernel.backlog_limit, len(kernel.rules)) == (1, 8192, 6)
    assert capture.enabled_by_portwatch
    kernel.pid = 4242  # auditd started: auditing is its own now
    capture.stop()
    assert (kernel.enabled, kernel.rules) == (1, [])
    assert capture.notes[-1] == "an audit daemon runs now: auditing stays enabled as it set it"
    assert (tmp_path / "lock").read_text() == ""  # nothing left for a later run to "restore"

    kernel.enabled, kernel.pid, kernel.backlog_limit = 0, 0, 64
    again = _fake_capture(kernel, tmp_path / "again")
    assert again.start(), again.notes
    again.stop()  # no audit daemon: portwatch's enabling is undone
    assert (kernel.enabled, kernel.backlog_limit, kernel.rules) == (0, 64, [])


def test_a_lock_file_that_cannot_be_made_is_named_in_the_note_not_taken_for_missing_audit(tmp_path: Path) -> None:
    kernel = _Kernel()
    (tmp_path / "a-file").write_text("")  # its directory cannot be made: a file is in the way
    capture = _fake_capture(kernel, tmp_path, lock=tmp_path / "a-file" / "audit.lock")
    assert capture.start() is False
    assert capture.notes == [f"failure capture is off: cannot open its lock file {tmp_path}/a-file/"
                             "audit.lock: Not a directory"]
    assert (kernel.enabled, kernel.rules) == (0, [])  # nothing changed in the kernel


def test_a_lock_held_longer_than_the_timeout_turns_the_capture_off_with_a_note_and_changes_nothing(
        tmp_path: Path) -> None:
    kernel = _Kernel()
    lock = tmp_path / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process holds it and never lets go
        capture = _fake_capture(kernel, tmp_path, lock_timeout=0.3)
        began = time.monotonic()
        assert capture.start() is False and capture.busy
        assert 0.3 <= time.monotonic() - began < 10
    finally:
        os.close(fd)
    assert capture.notes == [f"failure capture is off: {lock} stayed locked by another process for 0.3s "
                             "(a portwatch capture that is stopping holds it for a moment)"]
    assert (kernel.enabled, kernel.rules) == (0, [])
    capture.stop()  # nothing to undo: no error


def test_a_capture_starting_while_another_stops_reads_the_audit_state_after_the_lock(
        audit_host: AuditHost) -> None:
    host = audit_host
    with AuditControl() as control:
        control.set_enabled(1)  # as the stopping capture had it (the fixture restores the state)
    fd = os.open(host.lock, os.O_RDWR | os.O_CREAT, 0o600)
    waited = threading.Event()

    def wait(seconds: float) -> None:  # the capture found the lock taken and pauses before trying again
        waited.set()
        time.sleep(seconds)

    capture = FailureCapture(lock_path=host.lock, lock_wait=wait)
    started: list[bool] = []
    thread = threading.Thread(target=lambda: started.append(capture.start()))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a capture that is stopping holds the lock exclusively ...
        thread.start()
        assert waited.wait(15), "the starting capture never waited for the lock"
        with AuditControl() as control:
            control.set_enabled(0)  # ... and disables auditing (it had enabled it) before letting go
        fcntl.flock(fd, fcntl.LOCK_UN)
        thread.join(timeout=30)
        assert started == [True], capture.notes
        assert auditctl_status(host.auditctl) == 1  # the new capture saw auditing off and enabled it
        assert capture.enabled_by_portwatch
    finally:
        os.close(fd)
        thread.join(timeout=30)
        capture.stop()
    assert auditctl_status(host.auditctl) == 0 and portwatch_lines(host) == []


class _GarbledRules(AuditControl):
    """The real audit control, but the kernel's rule list comes back malformed."""

    def list_rules(self) -> list[AuditRule]:
        raise ValueError("audit_rule_data of 12 bytes, need 1040")


def test_a_malformed_kernel_answer_turns_the_capture_off_and_leaves_nothing_behind(
        audit_host: AuditHost) -> None:
    host = audit_host
    capture = FailureCapture(lock_path=host.lock, control_factory=_GarbledRules)
    assert capture.start() is False
    assert capture.notes[-1] == ("failure capture is off: the kernel's audit answer could not be read "
                                 "(audit_rule_data of 12 bytes, need 1040)")
    assert portwatch_lines(host) == [] and restored(host)
    with host.lock.open("rb") as f:  # the lock is free, and says nothing about auditing
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert f.read() == b""
    capture.stop()  # idempotent after a failed start
    assert restored(host)


def _run_without(caps: str, lock: Path) -> subprocess.CompletedProcess[str]:
    code = ("import sys\nfrom portwatch.collect.capture import FailureCapture\n"
            "cap = FailureCapture(lock_path=sys.argv[1])\nok = cap.start()\nprint(ok)\n"
            "print('\\n'.join(cap.notes))\ncap.stop()\n")
    return subprocess.run(["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", sys.executable, "-c",
                           code, str(lock)], capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize("caps", ["-audit_control,-audit_read", "-audit_read"])
def test_without_the_capabilities_a_note_and_nothing_left_behind(audit_host: AuditHost, caps: str) -> None:
    host = audit_host
    run = _run_without(caps, host.lock)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "False" and NO_CAPABILITY_NOTE in lines[1:]
    assert portwatch_lines(host) == []
    assert restored(host)
    with AuditControl() as control:
        assert control.status().enabled == host.enabled_before


def test_a_capture_outside_the_host_namespace_says_it_cannot_see_records(netns: NetNS,
                                                                        audit_host: AuditHost) -> None:
    code = ("import sys\nfrom portwatch.collect.capture import FailureCapture\n"
            "cap = FailureCapture(lock_path=sys.argv[1])\nprint(cap.start())\nprint(cap.notes[0])\ncap.stop()\n")
    run = netns.run([sys.executable, "-c", code, str(audit_host.lock)])
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["False", OUTSIDE_NOTE]
    assert FailureCapture(lock_path=audit_host.lock).read().events == ()
    assert portwatch_lines(audit_host) == []


def test_a_burst_overflowing_a_small_buffer_is_counted_and_reads_are_bounded(
        netns: NetNS, audit_host: AuditHost) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40000")
    capture = audit_host.capture()
    small: AuditReader | None = None
    try:
        assert capture.start(), capture.notes
        small = AuditReader(RecordJoiner(), buffer_bytes=4096)
        run = netns.run([sys.executable, "-c", FAILING_CONNECTS, "300"])
        done = json.loads(run.stdout)
        pid, failed = done["pid"], done["failed"]
        assert failed == 300, run.stderr
        lost = small.read()
        assert lost.lost and small.dropped_total >= 1  # ENOBUFS: the kernel dropped records for it
        first = capture.read(max_messages=8)
        assert first.more and len(first.events) <= 8

        def burst(events: list[FailureEvent]) -> list[FailureEvent]:
            return [e for e in [*first.events, *events] if e.pid == pid]

        rest = wait_events(capture, lambda got: len(burst(got)) >= 300)
        assert len(burst(rest)) == 300 and capture.dropped_total == 0
    finally:
        if small is not None:
            small.close()
        capture.stop()
