"""The failure capture: audit rules in, failed connect()/bind() calls out, as :class:`FailureEvent` values.

Job: :class:`FailureCapture`, which puts together the audit control
(:mod:`portwatch.collect.audit`), the passive reader
(:mod:`portwatch.collect.auditlog`), the caller's namespace and cgroup (read
from ``/proc/PID`` as each record arrives, while the process lives) and, for
a failed ``bind()``, the port's holders (:mod:`portwatch.collect.holders`).
May import the standard library, :mod:`portwatch.model` and the modules of
:mod:`portwatch.collect`.

Life cycle: :meth:`~FailureCapture.start` checks the privileges, enables
auditing when it is off (remembering that portwatch did), adds portwatch's
rules or reuses the equal ones a crashed run left, and joins the multicast
group; :meth:`~FailureCapture.read` returns a :class:`FailureBatch`;
:meth:`~FailureCapture.stop` removes the rules and, if portwatch enabled
auditing, disables it again (unless an audit daemon registered since: then
auditing is its own). Several captures on one host (a daemon and a
``watch``) share the rules: each holds a shared ``flock`` on a lock file in
``/run``; the one that stops last (it gets the exclusive lock) removes them.
The lock file also records that portwatch enabled auditing, so a run that
follows a crash still restores the state that was there before the crashed
run. Failing to start is never an error: ``start()`` returns False and
:attr:`~FailureCapture.notes` says why, once.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from pathlib import Path
from typing import Callable

from portwatch.collect.audit import AuditControl, AuditError, AuditRule, failure_rules, install_rules
from portwatch.collect.auditlog import AuditReader, JoinedRecord, RecordJoiner, untrusted
from portwatch.collect.cgroups import cgroup_of_pid, identity_from_path
from portwatch.collect.holders import port_holders
from portwatch.model import CgroupIdentity, NamespaceInfo, NamespaceKind
from portwatch.model.failures import FailedCall, FailureBatch, FailureEvent, Holder

__all__ = ["DEFAULT_LOCK_PATH", "NO_CAPABILITY_NOTE", "FailureCapture"]

#: The inode of the initial network namespace on recent kernels (include/linux/proc_ns.h, PROC_NET_INIT_INO);
#: older kernels number it like any other namespace (from 0xF0000000 up, so never this value).
NET_INIT_INO = 0xEFFFFFF9
#: A sysctl the kernel registers in the initial network namespace only (net/core/sysctl_net_core.c,
#: ``net_core_table``), on every kernel: ``/proc/sys/net`` shows the reader's own namespace.
HOST_ONLY_SYSCTL = ("sys", "net", "core", "netdev_max_backlog")
#: What start() survives from the kernel's answers, besides OSError: malformed data (short structs).
_BAD_ANSWER = (ValueError, struct.error)
#: Where the captures of one host coordinate (tmpfs: gone at boot, as the kernel's audit state is).
#: Its directory is the unit's ``RuntimeDirectory=portwatch`` (writable under ``ProtectSystem=strict``);
#: made when missing (``portwatch watch --failures`` without the service).
DEFAULT_LOCK_PATH = Path("/run/portwatch/audit.lock")
#: What the lock file holds while portwatch has auditing enabled: ``enabled-by-portwatch backlog_limit=N``
#: (N: the backlog limit before portwatch raised it).
_ENABLED_MARK = "enabled-by-portwatch"
#: The backlog limit portwatch sets when it enables auditing itself (auditd's usual ``-b 8192``). The
#: kernel default, 64, makes a burst of failing calls wait in the kernel (backlog_wait_time) for the
#: records to drain: 2,000 failing connect() calls take 0.1-0.2 s at 8192, and at 64 up to 1.2 s
#: when the reader is busy (3.9 s measured once); benchmarks/failures_bench.py measures it.
BACKLOG_LIMIT = 8192
#: How long start() waits for the shared lock while another capture holds it exclusively (it does so
#: only while it removes the rules at its stop: milliseconds); beyond it the capture stays off, with a note.
LOCK_TIMEOUT = 10.0

NO_CAPABILITY_NOTE = (
    "failure capture is off: the audit subsystem needs CAP_AUDIT_CONTROL (to add rules) and "
    "CAP_AUDIT_READ (to read records); scans go on without it"
)
LATE_ENABLE_NOTE = (
    f"auditing was disabled: portwatch enabled it for the capture, with a backlog limit of {BACKLOG_LIMIT} "
    "(and restores both at stop); "
    "processes started before auditing was first enabled since boot have no audit context, "
    "so their failures are not seen until they restart"
)

#: ``(pid) -> (netns dev, netns inode, cgroup identity)`` of a live process, Nones when gone.
Context = tuple[int | None, int | None, CgroupIdentity | None]
#: ``(port, namespace or None for the own) -> holders``: the targeted dump.
HolderLookup = Callable[[int, NamespaceInfo | None], tuple[Holder, ...]]


def _default_holders(port: int, namespace: NamespaceInfo | None) -> tuple[Holder, ...]:
    return port_holders(port, namespace)


class FailureCapture:
    """Failed ``connect()`` (EADDRNOTAVAIL) and ``bind()`` (EADDRINUSE) calls of every process on the host.

    ``FailureCapture(proc_root=/proc, lock_path=/run/portwatch/audit.lock,
    control_factory=AuditControl, reader_factory=AuditReader,
    holders=port_holders, machine=None, pair_timeout=0.5, max_holder_dumps=16,
    lock_timeout=10, lock_wait=time.sleep)``: every part is a parameter so
    tests can point it elsewhere. ``start()`` waits at most ``lock_timeout``
    seconds for the shared lock (``lock_wait`` pauses between tries). Must run in the host network
    namespace (the kernel multicasts audit records only there). Not
    thread-safe: one thread calls :meth:`read`; :meth:`stop` from the same.

    Attributes: ``active`` (capturing), ``notes`` (why not, or caveats; each
    said once), ``rules`` (the rules held), ``reused`` (how many a crashed
    run had left), ``enabled_by_portwatch``, ``busy`` (the last :meth:`start`
    gave up waiting for the lock: a temporary condition), ``holder_errors`` (targeted
    dumps that failed or were skipped: at most ``max_holder_dumps`` per
    :meth:`read`), and the reader's counters through
    :attr:`dropped_total`.
    """

    def __init__(self, *, proc_root: Path = Path("/proc"), lock_path: Path = DEFAULT_LOCK_PATH,
                 control_factory: Callable[[], AuditControl] = AuditControl,
                 reader_factory: Callable[[RecordJoiner], AuditReader] = AuditReader,
                 holders: HolderLookup = _default_holders, machine: str | None = None,
                 pair_timeout: float = 0.5, max_holder_dumps: int = 16,
                 lock_timeout: float = LOCK_TIMEOUT,
                 lock_wait: Callable[[float], None] = time.sleep) -> None:
        self._proc = Path(proc_root)
        self._lock_path = Path(lock_path)
        self._control_factory = control_factory
        self._reader_factory = reader_factory
        self._holders = holders
        self._machine = machine
        self._pair_timeout = pair_timeout
        self._max_dumps = max_holder_dumps
        self._lock_timeout = lock_timeout
        self._lock_wait = lock_wait
        self._dumps_left = max_holder_dumps
        self._lock_fd: int | None = None
        self._reader: AuditReader | None = None
        self.active = False
        self.notes: list[str] = []
        self.rules: list[AuditRule] = []
        self.reused = 0
        self.enabled_by_portwatch = False
        self.holder_errors = 0
        self.busy = False  # the last start() gave up waiting for the lock: worth trying again later

    # ----------------------------------------------------------------- start / stop

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _own_netns(self) -> tuple[int, bool]:
        """``(own netns inode or 0, whether it is the host's)``.

        The host's when the own namespace has the kernel's fixed init inode
        :data:`NET_INIT_INO` (recent kernels), or when ``/proc/sys/net``
        (which shows the reader's own namespace) has :data:`HOST_ONLY_SYSCTL`,
        which every kernel registers in the initial namespace only. Without
        ``/proc/sys``: the same namespace as pid 1's; when that cannot be read
        either, unknown, and counted as the host's (nothing better is known;
        the records then simply never come).
        """
        try:
            own = os.stat(self._proc / "self" / "ns" / "net").st_ino
        except OSError:
            own = 0
        if own == NET_INIT_INO:
            return own, True
        if (self._proc / "sys" / "net" / "core").is_dir():
            return own, self._proc.joinpath(*HOST_ONLY_SYSCTL).exists()
        try:
            return own, own == os.stat(self._proc / "1" / "ns" / "net").st_ino
        except OSError:
            return own, True

    def start(self) -> bool:
        """Start capturing; True on success. On failure: False, nothing left behind, :attr:`notes` says why."""
        if self.active:
            return True
        if not self._own_netns()[1]:
            self._note("failure capture is off: the kernel sends audit records only to readers in the host "
                       "network namespace, and portwatch runs in another one")
            return False
        try:
            wanted, optional = failure_rules(self._machine)
        except LookupError as exc:
            self._note(f"failure capture is off: {exc}")
            return False
        try:
            control = self._control_factory()
        except OSError as exc:
            self._note(self._why(exc))
            return False
        try:
            return self._start(control, wanted, optional)
        except OSError as exc:  # AuditError, PermissionError, TimeoutError, a lock file that cannot be made
            self._note(self._why(exc))
            self._release(control, remove=False)
            return False
        except _BAD_ANSWER as exc:  # a malformed answer of the kernel: off, and nothing left behind
            self._note(f"failure capture is off: the kernel's audit answer could not be read ({exc})")
            self._release(control, remove=True)
            return False
        finally:
            control.close()

    def _start(self, control: AuditControl, wanted: tuple[AuditRule, ...],
               optional: tuple[AuditRule, ...]) -> bool:
        # The lock first, then the status: a capture that is stopping (it holds the lock exclusively)
        # may disable auditing before it lets go, and a status read before that would be stale.
        try:
            try:
                self._lock_path.parent.mkdir(mode=0o755)
            except FileExistsError:  # the usual case (a file in the way: the open below says so)
                pass
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # not the audit subsystem's refusal: say which file
            self._note(f"failure capture is off: cannot open its lock file {self._lock_path}: "
                       f"{os.strerror(exc.errno or 0)}")
            return False
        self.busy = not self._lock_shared()
        if self.busy:
            self._note(f"failure capture is off: {self._lock_path} stayed locked by another process for "
                       f"{self._lock_timeout:g}s (a portwatch capture that is stopping holds it for a moment)")
            self._unlock()
            return False
        status = control.status()
        if status.enabled == 2:
            self._note("failure capture is off: auditing is locked (enabled 2): no rule can be added until reboot")
            self._unlock()
            return False
        if status.enabled == 0:
            mark = f"{_ENABLED_MARK} backlog_limit={status.backlog_limit}\n"
            os.ftruncate(self._lock_fd, 0)
            os.pwrite(self._lock_fd, mark.encode(), 0)
            control.set_enabled(1)
            if status.backlog_limit < BACKLOG_LIMIT:
                control.set_backlog_limit(BACKLOG_LIMIT)
            self._note(LATE_ENABLE_NOTE)
        elif status.backlog_limit < 1024 and self._marked() is None:
            self._note(f"the audit backlog limit is {status.backlog_limit}: a burst of failures can make the "
                       f"failing processes wait in the kernel; auditd's `-b {BACKLOG_LIMIT}` avoids it")
        self.enabled_by_portwatch = self._marked() is not None
        self.rules, self.reused, notes = install_rules(control, wanted, optional)
        for n in notes:
            self._note(n)
        joiner = RecordJoiner(pair_timeout=self._pair_timeout, on_syscall=self._context)
        try:
            self._reader = self._reader_factory(joiner)
        except OSError as exc:
            self._release(control, remove=True)
            raise AuditError(exc.errno or errno.EPERM, str(exc)) from exc
        self.active = True
        return True

    def _lock_shared(self) -> bool:
        """Take the shared lock within ``lock_timeout`` seconds; False when it stayed held exclusively."""
        assert self._lock_fd is not None
        deadline = time.monotonic() + self._lock_timeout
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                self._lock_wait(0.05)

    def _marked(self) -> int | None:
        """The backlog limit to restore when portwatch enabled auditing (the lock file says so), else None."""
        if self._lock_fd is None:
            return None
        words = os.pread(self._lock_fd, 128, 0).decode(errors="replace").split()
        if not words or words[0] != _ENABLED_MARK:
            return None
        limit = next((w.partition("=")[2] for w in words[1:] if w.startswith("backlog_limit=")), "")
        return int(limit) if limit.isdigit() else BACKLOG_LIMIT

    @staticmethod
    def _why(exc: OSError) -> str:
        if exc.errno in (errno.EPERM, errno.EACCES):
            return NO_CAPABILITY_NOTE
        if exc.errno == errno.ECONNREFUSED:
            return ("failure capture is off: the kernel accepts audit control only from the initial "
                    "user namespace")
        if exc.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT, errno.ENOENT):
            return "failure capture is off: this kernel has no audit support (CONFIG_AUDIT)"
        return f"failure capture is off: {exc}"

    def stop(self) -> None:
        """Stop: close the reader; the last capture of the host removes the rules and restores auditing."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        was_active, self.active = self.active, False
        if not was_active and self._lock_fd is None:
            return
        try:
            control = self._control_factory()
        except OSError as exc:
            self._note(f"could not remove the audit rules at stop: {exc}")
            self._unlock()
            return
        try:
            self._release(control, remove=True)
        finally:
            control.close()

    def _release(self, control: AuditControl, remove: bool) -> None:
        """Remove the rules and restore auditing if this is the last capture; drop the lock."""
        if self._lock_fd is None:
            return
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._note("another portwatch capture runs on this host: its audit rules stay")
            self._unlock()
            return
        try:
            if remove:
                for rule in self.rules:
                    try:
                        control.delete_rule(rule)
                    except AuditError as exc:
                        if exc.errno != errno.ENOENT:
                            self._note(f"could not remove an audit rule: {exc}")
                self.rules = []
            backlog = self._marked()
            if backlog is not None:
                if control.status().pid:  # an audit daemon registered since: auditing is its own now
                    self._note("an audit daemon runs now: auditing stays enabled as it set it")
                else:
                    control.set_enabled(0)
                    if backlog != BACKLOG_LIMIT:
                        control.set_backlog_limit(backlog)
                os.ftruncate(self._lock_fd, 0)
        except (OSError, *_BAD_ANSWER) as exc:
            self._note(f"could not restore the audit state: {exc}")
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> FailureCapture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- reading

    @property
    def dropped_total(self) -> int:
        """ENOBUFS reported since start: records the kernel dropped for this reader."""
        return self._reader.dropped_total if self._reader is not None else 0

    def fileno(self) -> int:
        """The reader's file descriptor (readable when records are queued); -1 when not capturing."""
        return self._reader.fileno() if self._reader is not None else -1

    def read(self, max_messages: int = 4096) -> FailureBatch:
        """The failures completed since the last read (bounded; never blocks). Empty when not capturing.

        Call it when :meth:`fileno` is readable and now and then (every
        second or so): a failure whose second record never comes is reported
        after the pair bound. Raises ``OSError`` for a broken socket.
        """
        if self._reader is None:
            return FailureBatch()
        got = self._reader.read(max_messages)
        self._dumps_left = self._max_dumps
        events = tuple(self._event(r) for r in got.records)
        return FailureBatch(events, got.lost, self._reader.dropped_total, got.more)

    def _context(self, pid: int) -> Context:
        """The namespace (dev, inode) and cgroup identity of a live ``pid``; Nones when it is gone."""
        dev: int | None = None
        inode: int | None = None
        try:
            st = os.stat(self._proc / str(pid) / "ns" / "net")
            dev, inode = st.st_dev, st.st_ino
        except OSError:
            pass
        path = cgroup_of_pid(self._proc, pid)
        return dev, inode, identity_from_path(path) if path is not None else None

    def _event(self, rec: JoinedRecord) -> FailureEvent:
        f = rec.fields
        dev, inode, identity = rec.context if isinstance(rec.context, tuple) else (None, None, None)
        pid = _int(f.get("pid")) or 0
        arch = _int(f.get("arch"), 16) or 0
        holders: tuple[Holder, ...] = ()
        if rec.call is FailedCall.BIND and rec.address is not None and inode is not None and dev is not None:
            holders = self._find_holders(rec.address.port, pid, dev, inode)
        return FailureEvent(
            at=rec.at, serial=rec.serial, call=rec.call, exit=rec.exit, pid=pid,
            arch="b64" if arch & 0x80000000 else "b32",
            ppid=_int(f.get("ppid")), uid=_int(f.get("uid")),
            comm=untrusted(f.get("comm"), "comm" in rec.quoted), exe=untrusted(f.get("exe"), "exe" in rec.quoted),
            address=rec.address, netns_inode=inode, identity=identity, complete=rec.complete, holders=holders)

    def _find_holders(self, port: int, pid: int, dev: int, inode: int) -> tuple[Holder, ...]:
        if self._dumps_left <= 0:
            self.holder_errors += 1  # a storm of failed binds: the rest of this read goes without holders
            return ()
        self._dumps_left -= 1
        own = self._own_netns()[0] == inode
        ns = None if own else NamespaceInfo(inode, dev, NamespaceKind.PROCESS, f"netns:{inode}", pids=(pid,),
                                            stable=False)
        try:
            return self._holders(port, ns)
        except Exception:  # noqa: BLE001 - the namespace vanished, a dump was refused: the event still counts
            self.holder_errors += 1
            return ()


def _int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None
