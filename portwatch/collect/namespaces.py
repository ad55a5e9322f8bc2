"""Network namespaces: find every one on the host, name it, and run code inside one.

Job: :func:`discover_namespaces` (``/proc/*/ns/net`` deduplicated by device
and inode, plus the nsfs bind mounts of the mount table, each named: the
pod uid, the ``ip netns`` name, the container id, the systemd unit, else the
lowest pid's command; a pod's Kubernetes namespace/name from its OCI
bundle), :func:`run_in_namespace` (a callable run in a short-lived thread
that ``setns()``-es into the namespace; the calling thread never changes
namespace) and :func:`can_enter_namespaces`. A
namespace that is gone by the time it is entered raises
:class:`NamespaceVanished`. May import the standard library,
:mod:`portwatch.model` and the modules of :mod:`portwatch.collect`.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from portwatch.collect.cgroups import cgroup_of_pid, identity_from_path
from portwatch.collect.mounts import Mount, read_mountinfo
from portwatch.model import CgroupIdentity, NamespaceInfo, NamespaceKind
from portwatch.model.records import dataclass, replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    import queue
    from typing import Callable, Iterable, TypeVar

    T = TypeVar("T")

    from portwatch.collect.oci import BundleReader

__all__ = [
    "CLONE_NEWNET",
    "NETNS_DIRS",
    "NamespaceThread",
    "OWN_NAMESPACE_NOTE",
    "Discovery",
    "NamespaceVanished",
    "can_enter_namespaces",
    "discover_namespaces",
    "open_namespace",
    "run_in_namespace",
]

CLONE_NEWNET = 0x40000000
#: Where ``ip netns`` keeps its bind mounts; a mount in one of these is named by its file name.
NETNS_DIRS: tuple[str, ...] = ("/run/netns", "/var/run/netns")
#: Mounts docker makes for its sandboxes (named by the container found inside, if any).
_DOCKER_NETNS_DIRS: tuple[str, ...] = ("/run/docker/netns", "/var/run/docker/netns")
#: Pids kept per namespace.
MAX_PIDS = 4
_CAP_SYS_ADMIN = 21

#: The one note when portwatch cannot enter other namespaces.
OWN_NAMESPACE_NOTE = (
    "only portwatch's own network namespace was scanned: entering the others needs "
    "CAP_SYS_ADMIN (and CAP_SYS_PTRACE to open /proc/PID/ns/net)"
)


class NamespaceVanished(Exception):
    """The namespace no longer exists (its last process exited, its mount was removed).

    Not an error: a scan skips it quietly. The message names the namespace.
    """


@dataclass(frozen=True)
class Discovery:
    """What :func:`discover_namespaces` found.

    ``namespaces``: the host namespace first, then by inode. ``own``: the
    inode of the namespace portwatch runs in. ``notes``: things to tell the
    reader once (e.g. :data:`OWN_NAMESPACE_NOTE`).
    """

    namespaces: tuple[NamespaceInfo, ...]
    own: int
    notes: tuple[str, ...] = ()


def can_enter_namespaces(proc_root: Path = Path("/proc")) -> bool:
    """True if this process has CAP_SYS_ADMIN in its effective set (what ``setns`` needs)."""
    try:
        text = (Path(proc_root) / "self" / "status").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    return False


def _stat_ns(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a namespace file; None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _command(proc_root: Path, pid: int) -> str | None:
    """The command name of ``pid`` (``comm``); None if gone."""
    try:
        return (proc_root / str(pid) / "comm").read_text(errors="replace").strip() or None
    except OSError:
        return None


class _Found:
    """What discovery gathered about one namespace before naming it."""

    def __init__(self, dev: int, inode: int) -> None:
        self.dev, self.inode = dev, inode
        self.pids: list[int] = []
        self.paths: list[str] = []


def _identify(found: _Found, proc_root: Path, host: int | None, own: int,
              bundles: Callable[[], BundleReader]) -> NamespaceInfo:
    """Name one namespace from its mounts and its processes' cgroups (see :func:`discover_namespaces`)."""
    netns_name = next((os.path.basename(p) for p in found.paths
                       if os.path.dirname(p) in NETNS_DIRS), None)
    container = runtime = pod_uid = unit = command = None
    identities: list[CgroupIdentity] = []
    # The lowest pids say who the namespace belongs to (a pod's pause process,
    # a container's init); the host's are not worth reading.
    for pid in found.pids[:MAX_PIDS] if found.inode != host else ():
        path = cgroup_of_pid(proc_root, pid)
        if path is None:
            continue
        identity = identity_from_path(path)
        identities.append(identity)
        if identity.pod_uid and not pod_uid:
            pod_uid = identity.pod_uid
        if identity.container and not container:
            container, runtime = identity.container, identity.runtime
        unit = unit or identity.unit
    pod = _pod_names(bundles, pod_uid, container, identities) if pod_uid else (None, None, None)
    if found.pids:
        command = _command(proc_root, found.pids[0])
    if found.inode == host:
        kind, name, stable = NamespaceKind.HOST, "host", True
    elif pod_uid is not None:
        # before the mount's name: containerd and CRI-O mount pod sandboxes as
        # /run/netns/cni-<uuid>, a name nobody knows the pod by
        kind, name, stable = NamespaceKind.POD, pod_uid, True
    elif netns_name is not None:
        kind, name, stable = NamespaceKind.NAMED, netns_name, True
    elif container is not None:
        kind, name, stable = NamespaceKind.CONTAINER, container, True
    elif unit is not None and unit != "init.scope":
        kind, name, stable = NamespaceKind.PROCESS, unit, True
    else:
        fallback = os.path.basename(found.paths[0]) if found.paths else f"netns:{found.inode}"
        kind, name, stable = NamespaceKind.PROCESS, command or fallback, False
    return NamespaceInfo(
        inode=found.inode, dev=found.dev, kind=kind, name=name,
        pids=tuple(found.pids[:MAX_PIDS]), paths=tuple(found.paths), own=found.inode == own,
        stable=stable, netns_name=netns_name, container=container, runtime=runtime,
        pod_uid=pod_uid, unit=unit if unit != "init.scope" else None, command=command,
        pod_namespace=pod[0], pod_name=pod[1], container_name=pod[2])


def _pod_names(bundles: Callable[[], BundleReader], pod_uid: str, container: str | None,
               identities: list[CgroupIdentity]) -> tuple[str | None, str | None, str | None]:
    """(pod namespace, pod name, container name) of the pod ``pod_uid`` from its containers' OCI bundles.

    The bundles of the containers the namespace's pids run in (in the pod
    ``pod_uid``) are read in turn until one names the pod; one naming
    another pod uid is not believed. The container name is that of
    ``container`` (the namespace's), when its bundle was read and it is not
    the pod's sandbox. All None when no bundle is readable.
    """
    seen: set[str] = set()
    for identity in identities:
        cid = identity.container
        if cid is None or cid in seen or identity.pod_uid != pod_uid:
            continue
        seen.add(cid)
        names = bundles().names(cid, identity.runtime)
        if names is None or (names.pod_uid is not None and names.pod_uid != pod_uid):
            continue
        return names.pod_namespace, names.pod_name, names.container_name if cid == container else None
    return None, None, None


def _unique_keys(infos: list[NamespaceInfo]) -> list[NamespaceInfo]:
    """``infos`` with a name that several namespaces share made not ``stable``.

    A systemd unit (or a container id a runtime reuses) can hold more than one
    network namespace; keyed on that name, their findings and metric series
    would merge. Those namespaces are keyed on their inode instead
    (``netns:INODE``), the name stays for people to read.
    """
    counts: dict[str, int] = {}
    for ns in infos:
        if ns.stable:
            counts[ns.name] = counts.get(ns.name, 0) + 1
    return [replace(ns, stable=False) if ns.stable and counts[ns.name] > 1 else ns
            for ns in infos]


def discover_namespaces(proc_root: Path = Path("/proc"),
                        mountinfo: Path | Iterable[Mount] = Path("/proc/self/mountinfo"),
                        capable: bool | None = None, run_root: Path = Path("/run")) -> Discovery:
    """Find every network namespace on the host and name it.

    Takes the proc mount, the mount table (a mountinfo path, or parsed
    :class:`~portwatch.collect.mounts.Mount`\\ s) and whether namespaces may be
    entered (``None``: :func:`can_enter_namespaces`). Reads
    ``proc_root/*/ns/net`` (deduplicated by ``st_dev`` and ``st_ino``; a
    process that exits meanwhile or cannot be read is skipped) and adds the
    nsfs mounts of network namespaces (``/run/netns/NAME``, docker's
    ``/var/run/docker/netns/*``), with or without a process inside.

    Naming, most specific first: pid 1's namespace is ``host`` (kind host);
    an ``ip netns`` mount gives kind ``named``; processes in a Kubernetes pod
    slice give kind ``pod`` named by the pod uid; in a container runtime's
    cgroup kind ``container`` named by the container id; else kind
    ``process`` named by the systemd unit, or (not ``stable``) by the lowest
    pid's command. A pod's Kubernetes namespace and name (and its
    container's name) come from the runtimes' OCI bundles under ``run_root``
    (:class:`~portwatch.collect.oci.BundleReader`), when readable. Without
    the capability only the own namespace is returned, with
    :data:`OWN_NAMESPACE_NOTE`. Returns a :class:`Discovery`. Never
    raises for what it reads.
    """
    proc_root = Path(proc_root)
    own_id = _stat_ns(str(proc_root / "thread-self" / "ns" / "net")) or _stat_ns(
        str(proc_root / "self" / "ns" / "net"))
    own_inode = own_id[1] if own_id else 0
    if capable is None:
        capable = can_enter_namespaces(proc_root)
    host_id = _stat_ns(str(proc_root / "1" / "ns" / "net"))
    host = host_id[1] if host_id else own_inode
    found: dict[tuple[int, int], _Found] = {}
    try:
        names = os.listdir(proc_root)
    except OSError:
        names = []
    for pid in sorted(int(n) for n in names if n.isascii() and n.isdigit()):
        ident = _stat_ns(f"{proc_root}/{pid}/ns/net")
        if ident is None or (not capable and ident[1] != own_inode):
            continue
        entry = found.get(ident)
        if entry is None:
            entry = found[ident] = _Found(*ident)
        entry.pids.append(pid)
    if capable:
        mounts = read_mountinfo(mountinfo) if isinstance(mountinfo, (str, Path)) else mountinfo
        for mount in mounts:
            if mount.fstype != "nsfs" or not mount.root.startswith("net:"):
                continue
            ident = _stat_ns(mount.mount_point)
            if ident is None:
                continue
            entry = found.get(ident)
            if entry is None:
                entry = found[ident] = _Found(*ident)
            if mount.mount_point not in entry.paths:
                entry.paths.append(mount.mount_point)
    if own_id is not None and own_id not in found:
        found[own_id] = _Found(*own_id)
        found[own_id].paths.append(str(proc_root / "thread-self" / "ns" / "net"))
    def bundles() -> BundleReader:  # the OCI module is imported only when a pod is named
        from portwatch.collect.oci import bundle_reader

        return bundle_reader(run_root)

    infos = _unique_keys([_identify(f, proc_root, host, own_inode, bundles) for f in found.values()])
    infos.sort(key=lambda ns: (ns.kind is not NamespaceKind.HOST, ns.inode))
    notes = () if capable else (OWN_NAMESPACE_NOTE,)
    return Discovery(namespaces=tuple(infos), own=own_inode, notes=notes)


def _libc_setns() -> Callable[[int, int], int]:
    """``setns(fd, nstype)``: ``os.setns`` (Python 3.12+) or libc's through ctypes; raises OSError."""
    native = getattr(os, "setns", None)
    if native is not None:
        def call(fd: int, nstype: int) -> int:
            native(fd, nstype)
            return 0
        return call
    import ctypes  # only where entering a namespace is asked for

    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.setns
    fn.argtypes = [ctypes.c_int, ctypes.c_int]

    def call_libc(fd: int, nstype: int) -> int:
        if fn(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return 0
    return call_libc


_SETNS: Callable[[int, int], int] | None = None
_VANISHED_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})


def open_namespace(ns: NamespaceInfo, proc_root: Path = Path("/proc"),
                   retry_pause: Callable[[], None] = lambda: time.sleep(0.01)) -> int:
    """Open a handle (fd, close-on-exec) on ``ns``: one of its mounts, else one of its pids.

    The handle keeps the namespace alive while open; it is checked to be the
    same namespace (device and inode), so a reused pid is not mistaken for
    it. A process that is exiting or exec-ing can refuse the open for a
    moment (EACCES, even to root): a refused pid is tried once more after
    ``retry_pause()``, and one whose process is gone by then does not count
    as a refusal. Raises :class:`NamespaceVanished` when no mount or pid
    leads to it any more, ``PermissionError`` when they exist but cannot be
    opened.
    """
    candidates = [*ns.paths, *(f"{proc_root}/{pid}/ns/net" for pid in ns.pids)]
    refused: list[str] = []
    for path in candidates:
        fd = _open_same(path, ns, refused)
        if fd is not None:
            return fd
    if refused:
        retry_pause()
        again: list[str] = []
        for path in refused:
            fd = _open_same(path, ns, again)
            if fd is not None:
                return fd
        # a pid path (.../PID/ns/net) whose process has ended since was not a refusal
        still = [p for p in again if not p.endswith("/ns/net") or os.path.exists(p[:-len("/ns/net")])]
        if still:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), still[0])
    raise NamespaceVanished(f"network namespace {ns.name} (inode {ns.inode}) no longer exists")


def _open_same(path: str, ns: NamespaceInfo, refused: list[str]) -> int | None:
    """An fd on ``path`` when it is ``ns`` (None otherwise; ``path`` added to ``refused`` on EACCES/EPERM)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        refused.append(path)
        return None
    except OSError:
        return None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) == (ns.dev, ns.inode):
        return fd
    os.close(fd)
    return None


def run_in_namespace(ns: NamespaceInfo, fn: Callable[[], T], proc_root: Path = Path("/proc"),
                     timeout: float = 30.0) -> T:
    """Run ``fn()`` inside the network namespace ``ns`` and return what it returns.

    ``fn`` runs in a new thread that ``setns()``-es into the namespace first
    and ends after ``fn``: the calling thread (and every other) stays where
    it is. Inside, ``/proc/sys/net/...`` and ``/proc/thread-self/net/...``
    show the namespace's own values (``/proc/self/net`` does not), and a
    socket created there (e.g. NETLINK_SOCK_DIAG) keeps working in that
    namespace after the thread ends. The own namespace runs ``fn`` in a
    thread too. Raises :class:`NamespaceVanished` when the
    namespace is gone, ``PermissionError`` without CAP_SYS_ADMIN or access to
    its ``/proc/PID/ns/net``, ``TimeoutError`` when ``fn`` takes longer than
    ``timeout`` seconds (the thread is left to finish), and whatever ``fn``
    raises. :class:`NamespaceThread` does the same for many namespaces with one thread.
    """
    with NamespaceThread(proc_root, timeout) as thread:
        return thread.run(ns, fn)


class NamespaceThread:
    """One thread that enters network namespaces in turn and runs a callable in each.

    :meth:`run` has the contract of :func:`run_in_namespace`, for one pass
    over many namespaces without a thread per namespace: the thread is made
    on the first :meth:`run`, ``setns()``-es into each namespace asked for
    before running its callable, and ends on :meth:`close` (or the end of a
    ``with`` block). Only that thread ever changes namespace. One caller at
    a time; a callable that times out leaves its thread to finish, and the
    next :meth:`run` makes a new one.
    """

    def __init__(self, proc_root: Path = Path("/proc"), timeout: float = 30.0) -> None:
        """Take the proc mount (``PID/ns/net``) and the time limit of one callable, in seconds."""
        import queue  # (and threading, in run): only where a namespace is entered

        self.proc_root = Path(proc_root)
        self.timeout = timeout
        self._requests: queue.SimpleQueue[tuple[int, Callable[[], object]] | None] | None = None
        self._answers: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()

    def __enter__(self) -> NamespaceThread:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def run(self, ns: NamespaceInfo, fn: Callable[[], T]) -> T:
        """Run ``fn()`` inside ``ns`` in the thread and return its result (see :func:`run_in_namespace`).

        Raises :class:`NamespaceVanished`, ``PermissionError``, ``TimeoutError``
        and what ``fn`` raises, as :func:`run_in_namespace` does.
        """
        import queue
        import threading

        global _SETNS
        fd = open_namespace(ns, self.proc_root)
        try:
            if _SETNS is None:
                _SETNS = _libc_setns()
            if self._requests is None:
                self._requests = queue.SimpleQueue()
                threading.Thread(target=_serve, args=(self._requests, self._answers, _SETNS),
                                 name="netns", daemon=True).start()
            self._requests.put((fd, fn))
            try:
                ok, value = self._answers.get(timeout=self.timeout)
            except BaseException as exc:  # no answer (time out, interrupt): that thread is let go
                self.close()
                self._answers = queue.SimpleQueue()  # what it answers later goes nowhere
                if isinstance(exc, queue.Empty):
                    raise TimeoutError(
                        f"network namespace {ns.name}: no answer after {self.timeout}s") from None
                raise
        finally:
            os.close(fd)
        if ok:
            return value  # type: ignore[return-value]  # what fn returned, a T
        assert isinstance(value, BaseException)
        if isinstance(value, OSError) and value.errno in _VANISHED_ERRNOS:
            raise NamespaceVanished(f"network namespace {ns.name} vanished: {value}") from value
        raise value

    def close(self) -> None:
        """End the thread (it finishes what it runs first); a later :meth:`run` makes a new one."""
        if self._requests is not None:
            self._requests.put(None)
            self._requests = None


def _serve(requests: queue.SimpleQueue[tuple[int, Callable[[], object]] | None],
           answers: queue.SimpleQueue[tuple[bool, object]], setns: Callable[[int, int], int]) -> None:
    """The body of a :class:`NamespaceThread`: enter each namespace asked for and run its callable,
    until ``None``; answers (True, result) or (False, exception)."""
    while (request := requests.get()) is not None:
        fd, fn = request
        try:
            setns(fd, CLONE_NEWNET)
            answers.put((True, fn()))
        except BaseException as exc:  # handed to the caller
            answers.put((False, exc))
