"""Failed system calls seen by the audit capture: ``connect()`` -> EADDRNOTAVAIL, ``bind()`` -> EADDRINUSE.

Job: :class:`FailureEvent` (one failed call: who made it, what address it
was about, in which network namespace, and for a failed ``bind()`` who held
the port at that moment), :class:`Holder` (one socket holding a port and its
owners), :class:`FailureBatch` (what one read of the capture returns) and
:class:`FailureWindow` (the events of the last N seconds, bounded: what the
detectors count over). Frozen data plus one small bounded container;
standard library only, no clock (times come in the events and the ``now``
arguments).
"""

from __future__ import annotations

import enum
from collections import deque
from portwatch.model.records import dataclass, field

from portwatch.model.findings import ProcessInfo
from portwatch.model.namespaces import CgroupIdentity, NamespaceInfo, NamespaceKind
from portwatch.model.results import ScanResult
from portwatch.model.sockets import Endpoint, Socket
from portwatch.model.text import iso_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Mapping

__all__ = [
    "DEFAULT_FAILURE_WINDOW",
    "FailedCall",
    "FailureBatch",
    "FailureEvent",
    "FailureGroup",
    "FailureWindow",
    "Holder",
    "group_failures",
    "keyed_namespace",
    "times_words",
    "where_words",
]

#: Seconds over which failures are counted (and a failure finding stays current).
DEFAULT_FAILURE_WINDOW = 300.0


class FailedCall(str, enum.Enum):
    """Which call failed, and with what: the two failures portwatch's audit rules select."""

    CONNECT = "connect"  # connect() -> EADDRNOTAVAIL: no usable ephemeral port left
    BIND = "bind"  # bind() -> EADDRINUSE: the port is held

    @property
    def errno_name(self) -> str:
        """``EADDRNOTAVAIL`` or ``EADDRINUSE``."""
        return "EADDRNOTAVAIL" if self is FailedCall.CONNECT else "EADDRINUSE"


@dataclass(frozen=True)
class Holder:
    """A socket holding a port when a ``bind()`` on it failed, and its owners (empty when unknown)."""

    socket: Socket
    processes: tuple[ProcessInfo, ...] = ()


@dataclass(frozen=True)
class FailureEvent:
    """One failed ``connect()``/``bind()`` as the kernel's audit records describe it.

    ``at``: the record's time (Unix seconds); ``serial``: the audit event's
    serial number (``audit(TIME:SERIAL)``); ``call``: which call failed;
    ``exit``: the negated errno the call returned; ``arch``: ``b64``/``b32``;
    ``pid``, ``ppid``, ``uid``, ``comm`` (the kernel's 15-character task
    name) and ``exe`` (the executable's path) of the caller; ``address``:
    the socket address the call was given (the destination of a
    ``connect()``, the address and port a ``bind()`` asked for), ``None``
    when the SOCKADDR record did not arrive or held no inet address;
    ``netns_inode``: the inode of the caller's network namespace (read from
    ``/proc/PID/ns/net`` when the record arrived; ``None`` when the process
    was already gone); ``identity``: its cgroup's unit, container and pod;
    ``complete``: both records (SYSCALL and SOCKADDR) were joined;
    ``holders``: for a ``bind()``, the sockets holding that port in that
    namespace right after the failure (a targeted dump), with their owners.
    """

    at: float
    serial: int
    call: FailedCall
    exit: int
    pid: int
    arch: str = "b64"
    ppid: int | None = None
    uid: int | None = None
    comm: str | None = None
    exe: str | None = None
    address: Endpoint | None = None
    netns_inode: int | None = None
    identity: CgroupIdentity | None = None
    complete: bool = True
    holders: tuple[Holder, ...] = ()

    @property
    def process(self) -> ProcessInfo:
        """The caller as a :class:`ProcessInfo` (name from ``comm``, command line from ``exe``)."""
        unit = self.identity.unit if self.identity is not None else None
        return ProcessInfo(pid=self.pid, name=self.comm, cmdline=(self.exe,) if self.exe else (),
                           unit=unit)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the event."""
        ident = self.identity
        return {
            "at": self.at, "serial": self.serial, "call": self.call.value, "error": self.call.errno_name,
            "exit": self.exit, "arch": self.arch, "pid": self.pid, "ppid": self.ppid, "uid": self.uid,
            "comm": self.comm, "exe": self.exe,
            "address": str(self.address) if self.address is not None else None,
            "netns_inode": self.netns_inode,
            "unit": ident.unit if ident else None, "container": ident.container if ident else None,
            "pod_uid": ident.pod_uid if ident else None, "complete": self.complete,
            "holders": [{"socket": h.socket.describe(), "processes": [p.label() for p in h.processes]}
                        for h in self.holders],
        }


@dataclass(frozen=True)
class FailureBatch:
    """What one read of the capture returned.

    ``events``: the failures completed in this read, oldest first; ``lost``:
    the kernel reported ENOBUFS (records were dropped) during this read;
    ``dropped_total``: ENOBUFS counted since the capture started; ``more``:
    the read stopped at its bound with data possibly still queued.
    """

    events: tuple[FailureEvent, ...] = ()
    lost: bool = False
    dropped_total: int = 0
    more: bool = False


@dataclass
class FailureWindow:
    """The failure events of the last ``window`` seconds, at most ``max_events`` (oldest dropped first).

    Feed it with :meth:`add` (events in time order); :meth:`current` returns
    the events at most ``window`` seconds older than ``now``. Pure and not
    thread-safe.
    """

    window: float = DEFAULT_FAILURE_WINDOW
    max_events: int = 10_000
    _events: deque[FailureEvent] = field(default_factory=deque, repr=False)

    def __post_init__(self) -> None:
        if not self.window > 0 or self.max_events < 1:
            raise ValueError("window and max_events must be positive")

    def add(self, events: Iterable[FailureEvent]) -> None:
        """Remember ``events``; beyond ``max_events`` the oldest are forgotten."""
        for e in events:
            self._events.append(e)
            if len(self._events) > self.max_events:
                self._events.popleft()

    def current(self, now: float) -> tuple[FailureEvent, ...]:
        """The events of the ``window`` seconds before ``now`` (older ones are forgotten), oldest first."""
        while self._events and now - self._events[0].at > self.window:
            self._events.popleft()
        return tuple(self._events)


@dataclass(frozen=True)
class FailureGroup:
    """Failure events that share one finding key, oldest first (never empty)."""

    events: tuple[FailureEvent, ...]

    @property
    def first(self) -> FailureEvent:
        """The oldest event."""
        return self.events[0]

    @property
    def last(self) -> FailureEvent:
        """The newest event."""
        return self.events[-1]

    @property
    def processes(self) -> tuple[ProcessInfo, ...]:
        """The distinct callers (by pid, newest description kept), in order of first failure."""
        by_pid: dict[int, ProcessInfo] = {}
        for e in self.events:
            by_pid[e.pid] = e.process
        return tuple(by_pid.values())

    def details(self, window: float) -> dict[str, object]:
        """What every failure finding's ``details`` carry: the transient marking, counts, callers, namespace."""
        last = self.last
        ident = last.identity
        return {
            "transient": True, "call": last.call.value, "error": last.call.errno_name,
            "count": len(self.events), "window_seconds": window,
            "first_seen": iso_time(self.first.at, "milliseconds"), "last_seen": iso_time(last.at, "milliseconds"),
            "comm": last.comm, "exe": last.exe, "pids": sorted({e.pid for e in self.events}),
            "unit": ident.unit if ident else None, "container": ident.container if ident else None,
            "pod_uid": ident.pod_uid if ident else None, "netns_inode": last.netns_inode,
            "complete": all(e.complete for e in self.events),
        }


def where_words(details: Mapping[str, Any]) -> str:
    """`` (container 0123456789ab)`` or `` (unit.service)`` from a failure finding's details, else empty."""
    if details.get("container"):
        return f" (container {str(details['container'])[:12]})"
    return f" ({details['unit']})" if details.get("unit") else ""


def times_words(details: Mapping[str, Any]) -> str:
    """``once in 300 s`` / ``3 times in 300 s`` from a failure finding's details."""
    count = int(details.get("count", 1))
    return ("once" if count == 1 else f"{count} times") + f" in {float(details.get('window_seconds', 0)):g} s"


def group_failures(events: Iterable[FailureEvent], key: Callable[[FailureEvent], str | None],
                   ) -> dict[str, FailureGroup]:
    """``events`` grouped by ``key(event)`` (events whose key is None are left out), each group in time order."""
    groups: dict[str, list[FailureEvent]] = {}
    for e in events:
        k = key(e)
        if k is not None:
            groups.setdefault(k, []).append(e)
    return {k: FailureGroup(tuple(sorted(v, key=lambda e: (e.at, e.serial)))) for k, v in groups.items()}


def keyed_namespace(result: ScanResult | None, namespace: NamespaceInfo | None) -> tuple[NamespaceInfo | None, str]:
    """The namespace of a failure finding (``namespace``, else the scan's) and its key suffix.

    The suffix is ``@KEY`` for a namespace other than the host's, as a scan
    keys its findings, else empty.
    """
    ns = namespace if namespace is not None else (result.snapshot.namespace if result is not None else None)
    return ns, (f"@{ns.key}" if ns is not None and ns.kind is not NamespaceKind.HOST else "")
