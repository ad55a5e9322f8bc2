"""Everything portwatch reads from the kernel: sysctls, the socket table, socket owners.

This is the only module that reads ``/proc`` or calls psutil. Every function
takes the root it reads (``proc_root``) and the functions it calls
(``net_connections``, ``process_factory``, ``clock``) as parameters, so tests
can point it at fixture trees or replace a function without monkeypatching.

Reading happens in three steps, from cheap to expensive:

1. :class:`Collector.snapshot` reads the sysctls and the socket table from a
   :class:`~portwatch.model.SocketSource` (every socket, no process walk unless
   the source does one anyway, as :class:`PsutilSource` does).
2. The detectors decide which sockets matter.
3. :meth:`Collector.attribute` finds the owners of only those sockets
   (:func:`find_socket_owners`, a walk of ``/proc/PID/fd``) and describes the
   owning processes (:func:`describe_processes`).

Errors: a file that cannot be read or holds garbage raises
:class:`CollectError`, whose message names the file and the cause, e.g.
``/proc/sys/net/ipv4/ip_local_port_range: permission denied``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, Any, Callable, Collection, Iterable, Mapping

import psutil

from portwatch.model import (
    Endpoint,
    Family,
    KernelSettings,
    PortRange,
    ProcessInfo,
    Protocol,
    Snapshot,
    Socket,
    SocketSource,
    SocketState,
    SocketTable,
    normalize_ip,
)

__all__ = [
    "CollectError",
    "SourceReadError",
    "parse_port_range",
    "parse_reserved_ports",
    "read_kernel_settings",
    "PsutilSource",
    "OwnerScan",
    "find_socket_owners",
    "systemd_unit_from_cgroup",
    "describe_processes",
    "Collector",
    "PARTIAL_ATTRIBUTION_NOTE",
    "DEFAULT_UNPRIVILEGED_PORT_START",
]


class CollectError(Exception):
    """Something portwatch must read could not be read, or held garbage.

    ``str()`` names the file (or function) and the cause, e.g.
    ``"/proc/sys/net/ipv4/ip_local_port_range: permission denied"``; it is
    meant to be shown to a person as is.
    """


class SourceReadError(CollectError, OSError):
    """One read of a socket source failed (e.g. psutil was denied access).

    Both a :class:`CollectError` (clear message) and an ``OSError``, which is
    what :class:`~portwatch.model.SocketSource` promises callers for a failed
    read.
    """


#: Value of ``ip_unprivileged_port_start`` assumed when the file does not exist
#: (kernels before 4.11, where ports below 1024 always needed privilege).
DEFAULT_UNPRIVILEGED_PORT_START = 1024

#: The note :meth:`Collector.attribute` adds when it could not read some
#: processes' file descriptors; ``{denied}`` is the number of such processes.
PARTIAL_ATTRIBUTION_NOTE = (
    "attribution is partial: the owners of {unowned} sockets are unknown and {denied} processes' "
    "file descriptors could not be read (run as root or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)"
)
_PARTIAL_PREFIX = "attribution is partial:"

_SYSCTL_DIR = ("sys", "net", "ipv4")
_RANGE_FILE = "ip_local_port_range"
_RESERVED_FILE = "ip_local_reserved_ports"
_UNPRIV_FILE = "ip_unprivileged_port_start"

_DIGITS = re.compile(r"[0-9]+")


# --------------------------------------------------------------------------- errors


def _cause(exc: OSError) -> str:
    """A short lower-case cause for an OSError, without the file name."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, NotADirectoryError):
        return "not a directory"
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _exc_text(exc: BaseException) -> str:
    """The message of an exception; its arguments or its type name when ``str()`` is empty."""
    return str(exc) or " ".join(str(a) for a in exc.args) or type(exc).__name__


def _shorten(text: str, limit: int = 60) -> str:
    """``repr`` of ``text``, cut to about ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _read_text(path: Path, missing_ok: bool) -> str | None:
    """The contents of ``path``; ``None`` if it does not exist and ``missing_ok``.

    Raises :class:`CollectError` naming ``path`` for any other failure.
    """
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as exc:
        if missing_ok:
            return None
        raise CollectError(f"{path}: {_cause(exc)}") from None
    except OSError as exc:
        raise CollectError(f"{path}: {_cause(exc)}") from None


# --------------------------------------------------------------------------- sysctls


def parse_port_range(text: str, source: str) -> PortRange:
    """Parse ``ip_local_port_range`` contents (``"32768\\t60999\\n"``).

    Takes the file's text and ``source``, the name used in error messages
    (normally the file's path). Returns the :class:`PortRange`. Raises
    :class:`CollectError` naming ``source`` unless the text is exactly two
    whitespace-separated integers with ``1 <= low <= high <= 65535``.
    """
    fields = text.split()
    if len(fields) != 2 or not all(_DIGITS.fullmatch(f) for f in fields):
        raise CollectError(
            f"{source}: expected two port numbers 'LOW HIGH', got {_shorten(text)}")
    low, high = int(fields[0]), int(fields[1])
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise CollectError(f"{source}: port {port} is outside 1..65535")
    if low > high:
        raise CollectError(f"{source}: range start {low} is above its end {high}")
    return PortRange(low, high)


def parse_reserved_ports(text: str, source: str) -> frozenset[int]:
    """Parse ``ip_local_reserved_ports`` contents (the kernel's port-list syntax).

    Accepts ``""`` or ``"\\n"`` (no ports), single ports (``"8080"``), ranges and
    comma-separated lists (``"1-3,8080,9000-9002"``), with whitespace tolerated
    around items and around a range's dash. Ports are 0..65535, as the kernel's
    bitmap allows. Returns every port listed (ranges expanded). Raises
    :class:`CollectError` naming ``source`` for anything else (empty items,
    reversed ranges, non-numbers, ports above 65535).
    """
    body = text.strip()
    if not body:
        return frozenset()
    ports: set[int] = set()
    for item in body.split(","):
        bounds = [b.strip() for b in item.split("-")]
        if not 1 <= len(bounds) <= 2 or not all(_DIGITS.fullmatch(b) for b in bounds):
            raise CollectError(
                f"{source}: {_shorten(item.strip())} is not a port or a LOW-HIGH range "
                f"(in {_shorten(body)})")
        low, high = int(bounds[0]), int(bounds[-1])
        if high > 65535:
            raise CollectError(f"{source}: port {high} is outside 0..65535")
        if low > high:
            raise CollectError(f"{source}: range {low}-{high} is reversed")
        ports.update(range(low, high + 1))
    return frozenset(ports)


def read_kernel_settings(proc_root: Path = Path("/proc")) -> KernelSettings:
    """Read the port sysctls of the caller's network namespace.

    Takes the proc mount to read (``proc_root/sys/net/ipv4/...``). Returns the
    :class:`KernelSettings`. Fallbacks: a missing ``ip_local_reserved_ports``
    means no reserved ports; a missing ``ip_unprivileged_port_start``
    (kernels before 4.11) means :data:`DEFAULT_UNPRIVILEGED_PORT_START`.
    Raises :class:`CollectError` naming the file when ``ip_local_port_range``
    is missing, when any of the three files exists but cannot be read, or when
    one holds garbage.
    """
    base = Path(proc_root).joinpath(*_SYSCTL_DIR)
    range_path = base / _RANGE_FILE
    range_text = _read_text(range_path, missing_ok=False)
    assert range_text is not None
    port_range = parse_port_range(range_text, str(range_path))

    reserved_path = base / _RESERVED_FILE
    reserved_text = _read_text(reserved_path, missing_ok=True)
    reserved = (frozenset() if reserved_text is None
                else parse_reserved_ports(reserved_text, str(reserved_path)))

    unpriv_path = base / _UNPRIV_FILE
    unpriv_text = _read_text(unpriv_path, missing_ok=True)
    if unpriv_text is None:
        unpriv = DEFAULT_UNPRIVILEGED_PORT_START
    else:
        value = unpriv_text.strip()
        if not _DIGITS.fullmatch(value) or int(value) > 65535:
            raise CollectError(
                f"{unpriv_path}: expected a port number 0..65535, got {_shorten(unpriv_text)}")
        unpriv = int(value)
    return KernelSettings(port_range=port_range, reserved=reserved,
                          unprivileged_port_start=unpriv)


# --------------------------------------------------------------------------- psutil source

_FAMILIES: Mapping[int, Family] = {socket.AF_INET: Family.IPV4, socket.AF_INET6: Family.IPV6}
_PROTOCOLS: Mapping[int, Protocol] = {socket.SOCK_STREAM: Protocol.TCP,
                                      socket.SOCK_DGRAM: Protocol.UDP}
_TCP_STATES: Mapping[str, SocketState] = {
    s.value: s for s in SocketState if s is not SocketState.UNCONN}
_WILDCARD: Mapping[Family, str] = {Family.IPV4: "0.0.0.0", Family.IPV6: "::"}


class PsutilSource:
    """A :class:`~portwatch.model.SocketSource` built on ``psutil.net_connections("inet")``.

    The portable fallback, and the reference the other sources are tested
    against. psutil walks every process itself, so the table it returns
    carries owners; it reports no inodes, so sockets get synthetic negative
    inodes (-1, -2, ...) unique within one read, and ``owners`` maps them to
    the one pid psutil names (psutil lists a shared socket once, under the
    first holder it found). ``uid`` is ``None`` (psutil does not say).
    Sockets of other families or types are skipped.

    State mapping: TCP status strings become :class:`SocketState`; a TCP status
    psutil does not know (it says ``NONE``, for kernel states newer than its
    table) becomes ``CLOSE``. UDP sockets are ``ESTABLISHED`` when they have a
    remote address, else ``UNCONN``. Addresses go through
    :func:`~portwatch.model.normalize_ip` (IPv4-mapped IPv6 becomes IPv4; the
    family stays the one the socket was opened with).
    """

    name = "psutil"

    def __init__(self, net_connections: Callable[..., list[Any]] = psutil.net_connections) -> None:
        """Take the function to call (``psutil.net_connections`` or a stand-in with its contract)."""
        self._net_connections = net_connections

    def read(self) -> SocketTable:
        """Read every TCP and UDP, IPv4 and IPv6 socket of the current network namespace.

        Returns a :class:`~portwatch.model.SocketTable` with owners for sockets
        whose pid psutil reported. Raises :class:`SourceReadError` (an
        ``OSError``) when psutil is denied access or fails, or reports an
        address that is not an address.
        """
        try:
            conns = self._net_connections("inet")
        except psutil.AccessDenied:
            raise SourceReadError(
                "psutil.net_connections: permission denied (run as root to see every socket)"
            ) from None
        except (psutil.Error, OSError) as exc:
            raise SourceReadError(f"psutil.net_connections: {_exc_text(exc)}") from None
        sockets: list[Socket] = []
        owners: dict[int, tuple[int, ...]] = {}
        for conn in conns:
            family = _FAMILIES.get(conn.family)
            protocol = _PROTOCOLS.get(conn.type)
            if family is None or protocol is None:
                continue
            inode = -(len(sockets) + 1)
            try:
                local = self._endpoint(conn.laddr, family)
                remote = self._endpoint(conn.raddr, family) if conn.raddr else None
            except (ValueError, TypeError) as exc:
                raise SourceReadError(
                    f"psutil.net_connections: bad address in {conn!r}: {exc}") from None
            if protocol is Protocol.TCP:
                state = _TCP_STATES.get(str(conn.status), SocketState.CLOSE)
            else:
                state = SocketState.ESTABLISHED if remote is not None else SocketState.UNCONN
            sockets.append(Socket(protocol, family, state, local, remote, inode, None))
            if conn.pid is not None:
                owners[inode] = (int(conn.pid),)
        return SocketTable(sockets=tuple(sockets), owners=owners)

    @staticmethod
    def _endpoint(addr: Any, family: Family) -> Endpoint:
        """An :class:`Endpoint` from psutil's ``addr(ip, port)`` (``()`` = wildcard, port 0)."""
        if not addr:
            return Endpoint(_WILDCARD[family], 0)
        ip, port = addr[0], addr[1]
        return Endpoint(normalize_ip(str(ip)), int(port))


# --------------------------------------------------------------------------- owners


@dataclass(frozen=True)
class OwnerScan:
    """What a walk of ``/proc/PID/fd`` found.

    ``owners`` maps a socket inode to the pids holding it, in ascending pid
    order (a socket can be shared by several processes after fork or fd
    passing). ``denied`` counts the processes whose fd table could not be read
    for lack of permission; when it is non-zero, attribution may be partial.
    """

    owners: dict[int, tuple[int, ...]]
    denied: int


_SOCKET_PREFIX = "socket:["

#: Sockets whose (pid, fd) the collector remembers across scans.
FD_CACHE_SIZE = 4096


class _Walk:
    """The state of one (possibly resumed) walk of ``proc_root/*/fd``.

    Records the pids holding each inode of ``interesting``; remembers which
    pids were already read so a resumed walk reads each fd table at most once.
    """

    def __init__(self, proc_root: Path, interesting: AbstractSet[int]) -> None:
        self.proc_root = proc_root
        self.interesting = interesting
        self.seen: dict[int, list[int]] = {}
        self.fd_names: dict[int, list[tuple[int, str]]] = {}  # wanted inode -> (pid, fd) where found
        self.scanned: set[int] = set()
        self.denied = 0
        self.complete = False

    def run(self, wanted: set[int], stop_early: bool, uids: AbstractSet[int] = frozenset()) -> None:
        """Read fd tables of pids not read yet.

        Processes running as one of ``uids`` (the owners the kernel reported
        for the wanted sockets) are read first, then the others, each group in
        ascending pid order: a socket's creator usually still runs as its uid,
        so this finds owners sooner without ever missing one. With
        ``stop_early`` the walk stops as soon as the last inode of ``wanted``
        is found, in the middle of a process's fd table if need be (that
        process is then read again, from the start, by a later walk that
        needs more); else it reads every process. Raises
        :class:`CollectError` when ``proc_root`` cannot be listed.
        """
        remaining = {i for i in wanted if i not in self.seen}
        if self.complete or (stop_early and not remaining):
            return
        try:
            names = os.listdir(self.proc_root)
        except OSError as exc:
            raise CollectError(f"{self.proc_root}: {_cause(exc)}") from None
        pids = sorted(int(n) for n in names if n.isascii() and n.isdigit())
        if uids:
            pids.sort(key=lambda pid: self._uid_of(pid) not in uids)  # stable: pid order within groups
        for pid in pids:
            if pid in self.scanned:
                continue
            finished = self._read_fds(pid, remaining if stop_early else None)
            if finished:
                self.scanned.add(pid)
            if stop_early and not remaining:
                return
        self.complete = True

    def _uid_of(self, pid: int) -> int | None:
        """The uid owning ``proc_root/pid`` (the process's effective uid), None if gone."""
        try:
            return os.stat(os.path.join(self.proc_root, str(pid))).st_uid
        except OSError:
            return None

    def _read_fds(self, pid: int, remaining: set[int] | None) -> bool:
        """Record the interesting sockets ``pid`` holds, discarding them from ``remaining``.

        Stops as soon as ``remaining`` (when given) becomes empty and returns
        False then; returns True when the whole fd table was read (or the
        process is gone). A process whose fd table is not readable counts in
        ``denied``.
        """
        fd_dir = os.path.join(self.proc_root, str(pid), "fd")
        interesting = self.interesting
        try:
            with os.scandir(fd_dir) as entries:
                for entry in entries:
                    try:
                        target = os.readlink(entry.path)
                    except (FileNotFoundError, ProcessLookupError):
                        continue  # the fd was closed meanwhile
                    except PermissionError:
                        self.denied += 1
                        return True
                    except OSError:
                        continue  # not a symlink: not an fd entry
                    if not (target.startswith(_SOCKET_PREFIX) and target.endswith("]")):
                        continue
                    try:
                        inode = int(target[len(_SOCKET_PREFIX):-1])
                    except ValueError:
                        continue
                    if inode in interesting:
                        holders = self.seen.setdefault(inode, [])
                        if pid not in holders:
                            holders.append(pid)
                        if remaining is not None and inode in remaining:
                            self.fd_names.setdefault(inode, []).append((pid, entry.name))
                            remaining.discard(inode)
                            if not remaining:
                                return False
        except PermissionError:
            self.denied += 1
        except OSError:
            pass  # vanished (ENOENT, ESRCH), or not a process directory
        return True

    def owners_of(self, inodes: Iterable[int]) -> dict[int, tuple[int, ...]]:
        """The recorded holders of those ``inodes`` that were found."""
        return {i: tuple(self.seen[i]) for i in inodes if i in self.seen}


def find_socket_owners(inodes: Collection[int], proc_root: Path = Path("/proc"),
                       all_holders: bool = False) -> OwnerScan:
    """Find which processes hold the sockets with these inodes.

    Walks ``proc_root/<pid>/fd/*`` in ascending pid order with ``os.scandir``
    and ``os.readlink``, matching ``socket:[N]``; non-positive inodes are
    ignored (they are synthetic or orphaned). Processes that vanish mid-walk
    are skipped silently; those whose fd table is not readable count in
    ``OwnerScan.denied``.

    Trade-off on shared sockets: by default the walk stops after the process
    in which the last requested inode was found, so it costs less than a full
    walk when the owners sit early in the pid order. A socket held by several
    processes (inherited across fork, passed over a unix socket) then lists
    only the holders among the processes read so far: ascending pid order
    usually finds the parent (e.g. a server's master process) first, and
    children with higher pids may be missing. ``all_holders=True`` reads every
    process and lists every holder. Inodes held by nobody always cost a full
    walk.

    Returns an :class:`OwnerScan` with an entry for each inode found. Raises
    :class:`CollectError` when ``proc_root`` cannot be listed.
    """
    wanted = {i for i in inodes if i > 0}
    walk = _Walk(Path(proc_root), wanted)
    if wanted:
        walk.run(wanted, stop_early=not all_holders)
    return OwnerScan(owners=walk.owners_of(sorted(wanted)), denied=walk.denied)


# --------------------------------------------------------------------------- processes

_UNIT_SUFFIXES = (".service", ".scope")


def _unit_from_path(path: str) -> str | None:
    """The innermost systemd unit (``.service`` or ``.scope``) in a cgroup path."""
    units = [c for c in path.split("/")
             if any(c.endswith(sfx) and len(c) > len(sfx) for sfx in _UNIT_SUFFIXES)]
    if not units:
        return None
    # A user manager runs in user@UID.service/init.scope: name the service.
    if units[-1] == "init.scope" and len(units) > 1:
        return units[-2]
    return units[-1]


def systemd_unit_from_cgroup(text: str) -> str | None:
    """The systemd unit of a process, from the text of its ``/proc/PID/cgroup``.

    Reads the cgroup v2 line (``0::/system.slice/nginx.service``) first, then
    the v1 ``name=systemd`` hierarchy (``1:name=systemd:/system.slice/x.service``);
    other v1 controllers are ignored (they need not follow units). Returns the
    innermost ``.service`` or ``.scope`` of the path: a user unit under
    ``user@1000.service/app.slice/foo.service`` gives ``foo.service``, a login
    session gives ``session-3.scope``, the user manager itself
    (``user@1000.service/init.scope``) gives ``user@1000.service``. Returns
    ``None`` when no unit is found (root cgroup, slices only, a container's
    cgroup namespace, garbage). Never raises.
    """
    v2: str | None = None
    named: str | None = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "name=systemd" in controllers.split(","):
            named = path
    for candidate in (v2, named):
        if candidate:
            unit = _unit_from_path(candidate)
            if unit is not None:
                return unit
    return None


def _read_unit(proc_root: Path, pid: int) -> str | None:
    """The unit of ``pid`` from ``proc_root/PID/cgroup``; ``None`` if unreadable."""
    try:
        text = (proc_root / str(pid) / "cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return systemd_unit_from_cgroup(text)


def _describe_one(pid: int, proc_root: Path,
                  process_factory: Callable[[int], psutil.Process]) -> ProcessInfo:
    """Describe one process; see :func:`describe_processes`."""
    try:
        proc = process_factory(pid)
    except psutil.NoSuchProcess:
        return ProcessInfo(pid=pid, gone=True)
    except psutil.Error:
        return ProcessInfo(pid=pid, unit=_read_unit(proc_root, pid))
    values: dict[str, Any] = {}
    getters: list[tuple[str, Callable[[], Any]]] = [
        ("name", proc.name),
        ("cmdline", lambda: tuple(proc.cmdline())),
        ("user", proc.username),
    ]
    for key, getter in getters:
        try:
            values[key] = getter()
        except psutil.NoSuchProcess:  # includes ZombieProcess: it has exited
            return ProcessInfo(pid=pid, gone=True, **values)
        except psutil.Error:  # AccessDenied and the like: leave this field unknown
            continue
    return ProcessInfo(pid=pid, unit=_read_unit(proc_root, pid), **values)


def describe_processes(pids: Iterable[int], proc_root: Path = Path("/proc"),
                       process_factory: Callable[[int], psutil.Process] = psutil.Process,
                       ) -> dict[int, ProcessInfo]:
    """Describe processes: name, command line, user name, systemd unit.

    Takes the pids, the proc mount whose ``PID/cgroup`` gives the unit, and
    the factory that opens a process (``psutil.Process`` or a stand-in).
    Returns ``{pid: ProcessInfo}`` for every pid given. A process that no
    longer exists (or is a zombie) gets ``gone=True`` with whatever was read
    before; a field the privileges do not allow reading is ``None`` (``()``
    for the command line) while the others are still read; an unreadable
    cgroup file leaves ``unit`` ``None``. Never raises for a process's
    failure. A pid reused by a new process since its socket was seen is
    described as the new process (nothing here can tell).
    """
    root = Path(proc_root)
    return {pid: _describe_one(pid, root, process_factory) for pid in dict.fromkeys(pids)}


# --------------------------------------------------------------------------- collector


class Collector:
    """Takes snapshots from a socket source and attributes their sockets lazily.

    Keeps the state of the latest ``/proc`` walk, keyed to the scan it was made
    for, so that repeated :meth:`attribute` calls on one scan read every
    process's fd table at most once. Not thread-safe.
    """

    def __init__(self, source: SocketSource, proc_root: Path = Path("/proc"),
                 clock: Callable[[], float] = time.time,
                 process_factory: Callable[[int], psutil.Process] = psutil.Process) -> None:
        """Take the socket source, the proc mount (sysctls, fd tables, cgroups),
        the clock giving ``Snapshot.taken_at`` and the process factory for
        :func:`describe_processes`."""
        self.source = source
        self.proc_root = Path(proc_root)
        self.clock = clock
        self.process_factory = process_factory
        # The scan the walk belongs to: its settings and sockets objects (held,
        # so their ids stay unique; snapshot() makes new ones for every scan)
        # and its timestamp. Copies made by attribute() share all three.
        self._walk_key: tuple[KernelSettings, tuple[Socket, ...], float] | None = None
        self._walk: _Walk | None = None
        # Across scans: where (pid, fd) each attributed socket was found. A
        # listener lives for days; checking its one fd with a readlink is
        # exact and spares the daemon a walk of every fd table each scan.
        self._fd_cache: dict[int, list[tuple[int, str]]] = {}
        # Across scans: sockets a complete walk found no process holding (kernel
        # sockets, e.g. nfsd's listeners), with the number of fd tables that
        # walk could not read: a socket owned by nobody stays so, and must not
        # cost a walk of every fd table on every scan.
        self._unowned: dict[int, int] = {}

    def snapshot(self) -> Snapshot:
        """Read the kernel settings and the socket table.

        Returns a :class:`Snapshot` with the source's owners (if any), no
        process descriptions (see :meth:`attribute`), ``taken_at`` from the
        clock and ``source`` set to the source's name. Raises
        :class:`CollectError` for unreadable sysctls, and whatever the source
        raises (:class:`~portwatch.model.SourceUnavailable`, ``OSError``,
        ``ValueError``).
        """
        # A new scan: the previous scan's walk state (its socket table and the
        # inodes it saw) is of no use any more; let it go before reading anew.
        self._walk = None
        self._walk_key = None
        settings = read_kernel_settings(self.proc_root)
        table = self.source.read()
        return Snapshot(settings=settings, sockets=table.sockets, taken_at=self.clock(),
                        owners=dict(table.owners), processes={}, source=self.source.name)

    def attribute(self, snapshot: Snapshot, inodes: Collection[int]) -> Snapshot:
        """Return a copy of ``snapshot`` whose owners and processes cover ``inodes``.

        Owners the snapshot already has are kept without a lookup. Missing
        positive inodes are first looked up where an earlier scan found them
        (one readlink of the remembered ``PID/fd/N`` each, exact); those an
        earlier complete walk found nobody holding stay unowned; the rest,
        if they belong to the snapshot's sockets, in ``proc_root/*/fd`` (other
        inodes are ignored); what the walk saw is
        kept for this scan (the snapshot and the copies this method made from
        it), so later calls only read processes not read yet, and never
        re-read one; an inode the walk already looked for and did not find
        stays unowned. The walk stops early as :func:`find_socket_owners`
        describes (shared sockets may list only their first holders). Every
        pid owning a requested inode that is not yet in ``snapshot.processes``
        is described (:func:`describe_processes`). When a requested socket
        stays without an owner and fd tables could not be read for lack of
        permission, the copy carries one note (:data:`PARTIAL_ATTRIBUTION_NOTE`)
        replacing any earlier such note.
        Raises :class:`CollectError` when ``proc_root`` cannot be listed.
        """
        requested = list(dict.fromkeys(inodes))
        owners = dict(snapshot.owners)
        missing = {i for i in requested if i > 0 and i not in owners}
        notes = snapshot.notes
        known_unowned: dict[int, int] = {}
        if missing:
            cached = self._from_fd_cache(missing)
            owners.update(cached)
            missing.difference_update(cached)
            known_unowned = {i: self._unowned[i] for i in missing if i in self._unowned}
            missing.difference_update(known_unowned)
        unowned, denied = len(known_unowned), max(known_unowned.values(), default=0)
        if missing:
            walk = self._walk_for(snapshot)
            missing &= walk.interesting
            uids = {s.uid for s in snapshot.sockets if s.uid is not None and s.inode in missing}
            walk.run(missing, stop_early=True, uids=uids)
            owners.update(walk.owners_of(missing))
            self._remember_fds(walk, missing)
            still = [i for i in missing if i not in owners]
            if walk.complete:
                self._remember_unowned(still, walk.denied)
            unowned += len(still)
            denied = max(denied, walk.denied)
        if denied and unowned:
            # Only worth saying when a socket we needed stays unexplained:
            # an unreadable fd table that held none of them changes nothing.
            notes = tuple(n for n in notes if not n.startswith(_PARTIAL_PREFIX))
            notes += (PARTIAL_ATTRIBUTION_NOTE.format(unowned=unowned, denied=denied),)
        pids = {pid for i in requested for pid in owners.get(i, ())}
        new_pids = sorted(p for p in pids if p not in snapshot.processes)
        processes = dict(snapshot.processes)
        processes.update(describe_processes(new_pids, self.proc_root, self.process_factory))
        return dataclasses.replace(snapshot, owners=owners, processes=processes, notes=notes)

    def _from_fd_cache(self, inodes: Collection[int]) -> dict[int, tuple[int, ...]]:
        """Owners of ``inodes`` found where earlier scans saw them, checked now.

        Each remembered (pid, fd) is checked with one readlink: it counts only
        if that fd still is ``socket:[inode]``; a stale entry is forgotten.
        """
        found: dict[int, tuple[int, ...]] = {}
        for inode in inodes:
            places = self._fd_cache.get(inode)
            if not places:
                continue
            target = f"{_SOCKET_PREFIX}{inode}]"
            live = []
            for pid, fd in places:
                try:
                    if os.readlink(os.path.join(self.proc_root, str(pid), "fd", fd)) == target:
                        live.append((pid, fd))
                except OSError:
                    pass
            if live:
                self._fd_cache[inode] = live
                found[inode] = tuple(dict.fromkeys(pid for pid, _fd in live))
            else:
                del self._fd_cache[inode]
        return found

    def _remember_fds(self, walk: _Walk, inodes: Collection[int]) -> None:
        """Keep where the walk found ``inodes`` for later scans (at most FD_CACHE_SIZE, oldest out)."""
        for inode in inodes:
            places = walk.fd_names.get(inode)
            if places:
                self._fd_cache.pop(inode, None)
                self._fd_cache[inode] = list(places)
        while len(self._fd_cache) > FD_CACHE_SIZE:
            del self._fd_cache[next(iter(self._fd_cache))]

    def _remember_unowned(self, inodes: Iterable[int], denied: int) -> None:
        """Keep that a complete walk found nobody holding ``inodes`` (at most FD_CACHE_SIZE, oldest out)."""
        for inode in inodes:
            self._unowned.pop(inode, None)
            self._unowned[inode] = denied
        while len(self._unowned) > FD_CACHE_SIZE:
            del self._unowned[next(iter(self._unowned))]

    def _same_scan(self, snapshot: Snapshot) -> bool:
        """True if the kept walk state belongs to ``snapshot``'s scan (identity, not equality)."""
        key = self._walk_key
        return (self._walk is not None and key is not None and key[0] is snapshot.settings
                and key[1] is snapshot.sockets and key[2] == snapshot.taken_at)

    def _walk_for(self, snapshot: Snapshot) -> _Walk:
        """The walk state of ``snapshot``'s scan, started afresh for a new scan."""
        if not self._same_scan(snapshot) or self._walk is None:
            interesting = frozenset(s.inode for s in snapshot.sockets if s.inode > 0)
            self._walk = _Walk(self.proc_root, interesting)
            self._walk_key = (snapshot.settings, snapshot.sockets, snapshot.taken_at)
        return self._walk
