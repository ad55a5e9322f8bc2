"""The collector: snapshots from a socket source, owners attributed lazily, with caches across scans.

Job: :class:`Collector`, the one object the scan talks to. It reads the
sysctls (:mod:`~portwatch.collect.kernel`) and the socket table (a
:class:`~portwatch.model.SocketSource`), then finds owners only of the sockets
asked for (:mod:`~portwatch.collect.owners`) and describes their processes
(:mod:`~portwatch.collect.processes`). May import the standard library,
:mod:`portwatch.model` and the modules of :mod:`portwatch.collect`.
"""

from __future__ import annotations

import itertools
import operator
import time
from pathlib import Path

from portwatch.collect.cgroups import CgroupIndex, cgroup2_mount
from portwatch.collect.kernel import read_kernel_settings
from portwatch.collect.mounts import read_mountinfo
from portwatch.collect.errors import CollectError
from portwatch.collect.namespaces import NamespaceThread, NamespaceVanished
from portwatch.collect.owners import OwnerMemory, OwnerWalk
from portwatch.collect.processes import ProcessFactory, describe_processes
from portwatch.collect.sources import read_counted
from portwatch.model.records import dataclass, replace
from portwatch.model import (
    CgroupIdentity,
    KernelSettings,
    NamespaceInfo,
    Snapshot,
    Socket,
    SocketCounts,
    SocketSource,
    SocketTable,
    SourceUnavailable,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # imported where used: importing the package loads no netlink module
    from typing import Callable, Collection

    from portwatch.collect.sources.netlink import NetlinkSource

__all__ = ["PARTIAL_ATTRIBUTION_NOTE", "AttributionCounters", "Collector", "NamespaceScan"]

#: The note :meth:`Collector.attribute` adds when it could not read some
#: processes' file descriptors; ``{denied}`` is the number of such processes.
PARTIAL_ATTRIBUTION_NOTE = (
    "attribution is partial: the owners of {unowned} sockets are unknown and {denied} processes' "
    "file descriptors could not be read (run as root or with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)"
)
_PARTIAL_PREFIX = "attribution is partial:"
_ScanKey = tuple[KernelSettings, tuple[Socket, ...], float]


@dataclass
class AttributionCounters:
    """What attribution cost so far, summed over a collector's life (tests assert them).

    ``fd_tables_read``: ``/proc/PID/fd`` tables read (whole or in part);
    ``full_walks``: walks of every process started; ``cgroup_narrowed``:
    wanted sockets whose owner was found among their cgroup's
    ``cgroup.procs``; ``cgroup_lookups``: cgroups whose ``cgroup.procs`` was
    read for that.
    """

    fd_tables_read: int = 0
    full_walks: int = 0
    cgroup_narrowed: int = 0
    cgroup_lookups: int = 0


@dataclass(frozen=True)
class NamespaceScan:
    """The outcome of reading one namespace in :meth:`Collector.snapshot_namespaces`.

    ``outcome`` is ``ok`` (``snapshot`` is set), ``vanished`` (the namespace
    ended before or while it was read: skip it quietly), ``denied`` (no
    privilege to enter it) or ``failed`` (``message`` says why: unreadable
    sysctls, a failed dump).
    """

    namespace: NamespaceInfo
    outcome: str
    snapshot: Snapshot | None = None
    message: str = ""


class Collector:
    """Takes snapshots from a socket source and attributes their sockets lazily.

    Keeps the state of the latest ``/proc`` walk, keyed to the scan it was made
    for, so that repeated :meth:`attribute` calls on one scan read every
    process's fd table at most once. Not thread-safe.
    """

    def __init__(self, source: SocketSource, proc_root: Path = Path("/proc"),
                 clock: Callable[[], float] = time.time,
                 process_factory: ProcessFactory | None = None,
                 cgroups: CgroupIndex | None = None,
                 namespace_source: NetlinkSource | None = None) -> None:
        """Take the socket source, the proc mount (sysctls, fd tables, cgroups),
        the clock giving ``Snapshot.taken_at``, the process factory for
        :func:`describe_processes` (``None``: ``psutil.Process``), the
        cgroup index that narrows owner searches (``None``: one on the cgroup2
        mount named in ``proc_root/self/mountinfo``, made when first needed;
        no such mount, no narrowing) and the source that reads other
        namespaces inside them (``None``: a :class:`NetlinkSource` made when
        first needed)."""
        self.source = source
        self.proc_root = Path(proc_root)
        self.clock = clock
        self.process_factory = process_factory
        self._cgroups = cgroups
        self.counters = AttributionCounters()
        # The scans the walk belongs to (one, or every namespace of one
        # snapshot_namespaces pass: socket inodes are unique across
        # namespaces, so one walk serves them all): their settings and sockets
        # objects (held, so their ids stay unique; every scan makes new ones)
        # and timestamps. Copies made by attribute() share all three.
        self._walk_keys: tuple[_ScanKey, ...] = ()
        self._walk: OwnerWalk | None = None
        # Across scans: where (pid, fd) each attributed socket was found, and
        # the sockets a complete walk found nobody holding.
        self._memory = OwnerMemory(self.proc_root)
        # The netlink source that fetches other namespaces' dumps (see _snapshot_in).
        self._ns_source = namespace_source

    def snapshot(self, ports: Collection[int] | None = None) -> Snapshot:
        """Read the kernel settings and the socket table.

        Returns a :class:`Snapshot` with the source's owners (if any), no
        process descriptions (see :meth:`attribute`), ``taken_at`` from the
        clock and ``source`` set to the source's name. With ``ports`` (the
        ports of interest: declared services' and remembered listeners'), a
        source that can count (netlink) returns a counted snapshot
        (``Snapshot.counts``: only the sockets detectors look at are built,
        see :func:`~portwatch.collect.sources.read_counted`); without, or
        from another source, a full one. Raises
        :class:`CollectError` for unreadable sysctls, and whatever the source
        raises (:class:`~portwatch.model.SourceUnavailable`, ``OSError``,
        ``ValueError``).
        """
        # A new scan: the previous scan's walk state (its socket table and the
        # inodes it saw) is of no use any more; let it go before reading anew.
        self._walk = None
        self._walk_keys = ()
        settings = read_kernel_settings(self.proc_root)
        counts = None
        if ports is None:
            table = self.source.read()
        else:
            table, counts = read_counted(self.source, settings, frozenset(ports))
        return Snapshot(settings=settings, sockets=table.sockets, taken_at=self.clock(),
                        owners=dict(table.owners), processes={}, source=self.source.name,
                        counts=counts)

    @property
    def cgroups(self) -> CgroupIndex:
        """The cgroup index (made from ``proc_root/self/mountinfo`` on first use)."""
        if self._cgroups is None:
            mounts = read_mountinfo(self.proc_root / "self" / "mountinfo")
            self._cgroups = CgroupIndex(cgroup2_mount(mounts))
        return self._cgroups

    def snapshot_namespace(self, namespace: NamespaceInfo, ports: Collection[int] | None = None) -> Snapshot:
        """Read the kernel settings and socket table of another network namespace.

        The sysctls are read, the NETLINK_SOCK_DIAG socket is created and the
        dumps are run in a thread inside ``namespace`` (:class:`NamespaceThread`).
        The collector's own namespace (``namespace.own``) is read with
        :meth:`snapshot` and its configured source. Returns a
        :class:`Snapshot` whose ``namespace`` is ``namespace`` and ``source``
        ``netlink``, or ``procnet`` where sock_diag is not available in that
        namespace (:class:`~portwatch.collect.sources.procnet.ProcNetSource`,
        read in the entering thread; psutil cannot serve there). Raises :class:`~portwatch.collect.namespaces.NamespaceVanished`
        when the namespace is gone (skip it quietly), ``PermissionError``
        without the privilege to enter it, :class:`CollectError` for
        unreadable sysctls and what :class:`NetlinkSource` raises
        (:class:`~portwatch.model.SourceUnavailable` without sock_diag there).
        ``ports``: as for :meth:`snapshot` (a netlink read is then counted).
        """
        with NamespaceThread(self.proc_root) as thread:
            return self._snapshot_in(namespace, ports, thread)

    def _snapshot_in(self, namespace: NamespaceInfo, ports: Collection[int] | None,
                     thread: NamespaceThread) -> Snapshot:
        """:meth:`snapshot_namespace`, entering namespaces with ``thread``.

        Inside the namespace the thread reads the sysctls, makes the
        NETLINK_SOCK_DIAG socket and runs the dumps: a counted read
        (:meth:`NetlinkSource.count`) classifies them there; a
        full read's answers (:meth:`NetlinkSource.fetch`: system calls only)
        are parsed here. Where sock_diag is
        missing the thread reads ``/proc/thread-self/net`` instead
        (:class:`~portwatch.collect.sources.procnet.ProcNetSource`).
        """
        if namespace.own:
            return replace(self.snapshot(ports), namespace=namespace)
        # Here, not at module level: importing the package loads no netlink module.
        from portwatch.collect.netlink import UNAVAILABLE_ERRNOS
        from portwatch.collect.sources.netlink import (
            Answers,
            NetlinkSource,
            default_socket_factory,
            parse_table,
            sockstat_in_use,
        )

        self._walk = None
        self._walk_keys = ()
        if self._ns_source is None:
            self._ns_source = NetlinkSource()  # fetches only: each socket is made in its namespace
        netlink = self._ns_source

        def inside() -> tuple[KernelSettings, Answers | SocketTable, SocketCounts | None, str]:
            settings = read_kernel_settings(Path("/proc"))  # the thread's namespace's /proc/sys
            try:
                sock = default_socket_factory()
            except OSError as exc:
                if exc.errno not in UNAVAILABLE_ERRNOS:
                    raise
            else:
                try:
                    if ports is None:
                        return settings, netlink.fetch(sock), None, netlink.name
                    table, counts = netlink.count(sock, settings, frozenset(ports), sockstat_in_use())
                    return settings, table, counts, netlink.name
                except SourceUnavailable:
                    pass
            # no sock_diag in this namespace (imported here: it costs a pass 2 ms, `socket` included)
            from portwatch.collect.sources.procnet import ProcNetSource
            return settings, ProcNetSource().read(), None, ProcNetSource.name

        settings, got, counts, source_name = thread.run(namespace, inside)
        table = parse_table(got) if isinstance(got, Answers) else got
        return Snapshot(settings=settings, sockets=table.sockets, taken_at=self.clock(),
                        owners={}, processes={}, source=source_name, namespace=namespace,
                        counts=counts)

    def snapshot_namespaces(self, namespaces: Collection[NamespaceInfo],
                            ports: Collection[int] | None = None) -> list[NamespaceScan]:
        """:meth:`snapshot_namespace` of each of ``namespaces``, in order, never raising for one.

        Returns one :class:`NamespaceScan` per namespace: a namespace that
        vanished gives outcome ``vanished``, a ``PermissionError`` ``denied``,
        any other ``OSError``, ``ValueError`` (malformed dump) or
        :class:`CollectError` ``failed`` with its message. The snapshots
        of one call share one walk of ``/proc/PID/fd`` in :meth:`attribute`:
        a process read for one namespace's sockets is not read again for
        another's. ``ports``: as for :meth:`snapshot`, for every namespace.
        One thread enters the namespaces in turn (:class:`NamespaceThread`).
        """
        scans: list[NamespaceScan] = []
        with NamespaceThread(self.proc_root) as thread:
            for namespace in namespaces:
                try:
                    snap = self._snapshot_in(namespace, ports, thread)
                except NamespaceVanished as exc:
                    scans.append(NamespaceScan(namespace, "vanished", message=str(exc)))
                except PermissionError as exc:
                    scans.append(NamespaceScan(namespace, "denied", message=str(exc)))
                except (CollectError, OSError, ValueError) as exc:
                    scans.append(NamespaceScan(namespace, "failed", message=str(exc)))
                else:
                    scans.append(NamespaceScan(namespace, "ok", snapshot=snap))
        self._walk = None
        self._walk_keys = tuple(_key(s.snapshot) for s in scans if s.snapshot is not None)
        return scans

    def identity_of(self, sock: Socket) -> CgroupIdentity | None:
        """Who created ``sock``: the unit, container and pod of its cgroup; None without a cgroup id or when unknown."""
        if sock.cgroup_id is None:
            return None
        return self.cgroups.identity(sock.cgroup_id)

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
        stays unowned. Before that walk, sockets with a ``cgroup_id`` (other
        than the root cgroup's) are looked for in the fd tables of their
        cgroup's ``cgroup.procs`` pids; only those still missing cost the
        walk of every process. The walk stops early as :func:`find_socket_owners`
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
            cached = self._memory.owners(missing)
            owners.update(cached)
            missing.difference_update(cached)
            known_unowned = self._memory.unowned(missing)
            missing.difference_update(known_unowned)
        unowned, denied = len(known_unowned), max(known_unowned.values(), default=0)
        if missing:
            walk = self._walk_for(snapshot)
            missing &= walk.interesting
            reads, walks = walk.reads, walk.full_walks
            wanted = [s for s in snapshot.sockets if s.inode in missing]  # one pass over the table
            self._narrow(wanted, walk, missing)
            uids = {s.uid for s in wanted if s.uid is not None}
            walk.run(missing, stop_early=True, uids=uids)
            owners.update(walk.owners_of(missing))
            self._memory.remember_fds(walk, missing)
            still = [i for i in missing if i not in owners]
            if walk.complete:
                self._memory.remember_unowned(still, walk.denied)
            unowned += len(still)
            denied = max(denied, walk.denied)
            self.counters.fd_tables_read += walk.reads - reads
            self.counters.full_walks += walk.full_walks - walks
        if denied and unowned:
            # Only worth saying when a socket we needed stays unexplained:
            # an unreadable fd table that held none of them changes nothing.
            notes = tuple(n for n in notes if not n.startswith(_PARTIAL_PREFIX))
            notes += (PARTIAL_ATTRIBUTION_NOTE.format(unowned=unowned, denied=denied),)
        pids = {pid for i in requested for pid in owners.get(i, ())}
        new_pids = sorted(p for p in pids if p not in snapshot.processes)
        processes = dict(snapshot.processes)
        processes.update(describe_processes(new_pids, self.proc_root, self.process_factory))
        return replace(snapshot, owners=owners, processes=processes, notes=notes)

    def _narrow(self, sockets: list[Socket], walk: OwnerWalk, missing: set[int]) -> None:
        """Look for ``missing`` inodes (those of ``sockets``) in the fd tables of their cgroups'
        processes first."""
        by_cgroup: dict[int, set[int]] = {}
        for sock in sockets:
            if sock.cgroup_id is not None and sock.inode in missing:
                by_cgroup.setdefault(sock.cgroup_id, set()).add(sock.inode)
        if not by_cgroup:
            return
        index = self.cgroups
        for cgroup_id, wanted in by_cgroup.items():
            if index.path_of(cgroup_id) in (None, "/"):
                continue  # unknown, or the root cgroup: that is no narrowing
            self.counters.cgroup_lookups += 1
            before = len(wanted)
            walk.read_pids(index.pids(cgroup_id), wanted)
            self.counters.cgroup_narrowed += before - len(wanted)

    def _in_pass(self, snapshot: Snapshot) -> bool:
        """True if ``snapshot`` is one of the scans the walk state is kept for (identity, not equality)."""
        return any(key[0] is snapshot.settings and key[1] is snapshot.sockets
                   and key[2] == snapshot.taken_at for key in self._walk_keys)

    def _walk_for(self, snapshot: Snapshot) -> OwnerWalk:
        """The walk state of ``snapshot``'s scan (or pass), started afresh for a new one."""
        if self._walk is not None and self._in_pass(snapshot):
            return self._walk
        if not self._in_pass(snapshot):
            self._walk_keys = (_key(snapshot),)
        # Every inode of the pass's tables (map/attrgetter: C speed over 100,000 sockets); the
        # non-positive ones (mini sockets' 0, psutil's stand-ins) match no ``socket:[N]`` link.
        inode = operator.attrgetter("inode")
        interesting = frozenset(itertools.chain.from_iterable(map(inode, key[1]) for key in self._walk_keys))
        self._walk = OwnerWalk(self.proc_root, interesting)
        return self._walk


def _key(snapshot: Snapshot) -> _ScanKey:
    """What identifies the scan a snapshot (or a copy of it) comes from."""
    return (snapshot.settings, snapshot.sockets, snapshot.taken_at)
