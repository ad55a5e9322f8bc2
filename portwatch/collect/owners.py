"""Who holds a socket: the walk of ``/proc/PID/fd`` and what the collector remembers of it across scans.

Job: :class:`OwnerWalk` (one, possibly resumed, walk of ``proc_root/*/fd``
matching ``socket:[INODE]`` links), :func:`find_socket_owners` (one walk, as a
function), and :class:`OwnerMemory` (where sockets were found, and which ones
nobody holds, kept across scans so a long-lived listener costs one readlink per
scan). May import the standard library, :mod:`portwatch.model` and
:mod:`portwatch.collect.errors`.
"""

from __future__ import annotations

import os
from pathlib import Path

from portwatch.collect.errors import CollectError, cause
from portwatch.model.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import AbstractSet, Collection, Iterable

__all__ = ["FD_CACHE_SIZE", "OwnerMemory", "OwnerScan", "OwnerWalk", "find_socket_owners"]


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


class OwnerWalk:
    """The state of one (possibly resumed) walk of ``proc_root/*/fd``.

    Records the pids holding each inode of ``interesting``; remembers which
    pids were already read so a resumed walk reads each fd table at most once.
    ``reads`` counts the fd tables read (whole or in part), ``full_walks`` the
    walks of every process :meth:`run` started (not those :meth:`read_pids`
    did), so callers and tests can tell what attribution cost.
    """

    def __init__(self, proc_root: Path, interesting: AbstractSet[int]) -> None:
        self.proc_root = proc_root
        self.interesting = interesting
        self.seen: dict[int, list[int]] = {}
        self.fd_names: dict[int, list[tuple[int, str]]] = {}  # wanted inode -> (pid, fd) where found
        self.scanned: set[int] = set()
        self.denied = 0
        self.complete = False
        self.reads = 0
        self.full_walks = 0

    def read_pids(self, pids: Iterable[int], wanted: set[int]) -> None:
        """Read the fd tables of ``pids`` only (not read yet), until every inode of ``wanted`` is found.

        The targeted read before a walk of every process: e.g. the pids of
        the cgroups the wanted sockets were created in. Found inodes are
        discarded from ``wanted``. Never raises (a vanished pid is skipped).
        """
        wanted.difference_update(self.seen)
        for pid in pids:
            if not wanted:
                return
            if pid in self.scanned:
                continue
            if self._read_fds(pid, wanted):
                self.scanned.add(pid)

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
            raise CollectError(f"{self.proc_root}: {cause(exc)}") from None
        self.full_walks += 1
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
        self.reads += 1
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
    walk = OwnerWalk(Path(proc_root), wanted)
    if wanted:
        walk.run(wanted, stop_early=not all_holders)
    return OwnerScan(owners=walk.owners_of(sorted(wanted)), denied=walk.denied)


class OwnerMemory:
    """Where earlier scans found sockets, and which sockets a complete walk found nobody holding.

    Both are bounded to :data:`FD_CACHE_SIZE` entries, the oldest dropped
    first. A listener lives for days; checking its one fd with a readlink is
    exact and spares the daemon a walk of every fd table each scan. A socket
    owned by nobody (a kernel socket, e.g. nfsd's listeners) stays so, and
    must not cost a walk of every fd table on every scan. Not thread-safe.
    """

    def __init__(self, proc_root: Path) -> None:
        """Take the proc mount whose ``PID/fd/N`` links are checked."""
        self.proc_root = proc_root
        self._fd_cache: dict[int, list[tuple[int, str]]] = {}
        # inode -> the number of fd tables the walk that found nobody could not read
        self._unowned: dict[int, int] = {}

    def owners(self, inodes: Collection[int]) -> dict[int, tuple[int, ...]]:
        """Owners of ``inodes`` found where earlier scans saw them, checked now.

        Each remembered (pid, fd) is checked with one readlink: it counts only
        if that fd still is ``socket:[inode]``; a stale entry is forgotten.
        Returns ``{inode: pids}`` for the inodes still found. Never raises.
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

    def unowned(self, inodes: Iterable[int]) -> dict[int, int]:
        """Those of ``inodes`` an earlier complete walk found nobody holding.

        Returns ``{inode: fd tables that walk could not read}``.
        """
        return {i: self._unowned[i] for i in inodes if i in self._unowned}

    def remember_fds(self, walk: OwnerWalk, inodes: Collection[int]) -> None:
        """Keep where ``walk`` found ``inodes`` for later scans."""
        for inode in inodes:
            places = walk.fd_names.get(inode)
            if places:
                self._fd_cache.pop(inode, None)
                self._fd_cache[inode] = list(places)
        while len(self._fd_cache) > FD_CACHE_SIZE:
            del self._fd_cache[next(iter(self._fd_cache))]

    def remember_unowned(self, inodes: Iterable[int], denied: int) -> None:
        """Keep that a complete walk, which could not read ``denied`` fd tables, found nobody holding ``inodes``."""
        for inode in inodes:
            self._unowned.pop(inode, None)
            self._unowned[inode] = denied
        while len(self._unowned) > FD_CACHE_SIZE:
            del self._unowned[next(iter(self._unowned))]
