"""Cgroups: from a socket's cgroup id to its cgroup path, and from a path to its unit, container, pod.

Job: :func:`cgroup2_mount` (where cgroup v2 is mounted, from the mount
table: ``/sys/fs/cgroup`` on unified hosts, ``/sys/fs/cgroup/unified`` on
hybrid ones), :func:`identity_from_path` (pure: the systemd unit, container
id and pod uid a cgroup path names), :func:`cgroup_of_pid` and
:class:`CgroupIndex` (cgroup id = inode of the cgroup directory -> path, a
cached walk of the mount re-walked on a miss; the pids of a cgroup from its
``cgroup.procs``). May import the standard library, :mod:`portwatch.model`,
:mod:`portwatch.collect.mounts` and :mod:`portwatch.collect.processes`.
"""

from __future__ import annotations

import os
from pathlib import Path

from portwatch.collect.mounts import Mount
from portwatch.lazy import LazyPattern
from portwatch.collect.processes import unit_from_cgroup_path
from portwatch.model import CgroupIdentity

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from typing import Iterable

__all__ = ["CgroupIndex", "cgroup2_mount", "cgroup_of_pid", "identity_from_path"]

_HEX64 = r"[0-9a-f]{64}"
# systemd driver: <runtime>-<id>.scope; cgroupfs driver: a bare id under docker/ or a pod.
# (prefix, pattern, runtime): a pattern is tried (and compiled) only on a part with its prefix.
_CONTAINER_SCOPES: tuple[tuple[str, LazyPattern, str], ...] = (
    ("docker-", LazyPattern(rf"^docker-({_HEX64})\.scope$"), "docker"),
    ("crio-", LazyPattern(rf"^crio-({_HEX64})\.scope$"), "cri-o"),
    ("cri-containerd-", LazyPattern(rf"^cri-containerd-({_HEX64})\.scope$"), "containerd"),
    ("libpod-", LazyPattern(rf"^libpod-({_HEX64})(?:\.scope)?$"), "libpod"),
)
_BARE_ID = LazyPattern(rf"^({_HEX64})$")
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# kubepods-besteffort-pod<uid>.slice / kubepods-pod<uid>.slice (systemd), pod<uid> (cgroupfs)
_POD = LazyPattern(rf"^(?:kubepods(?:-[a-z]+)*-)?pod({_UID})(?:\.slice)?$")


def _pod_match(part: str) -> re.Match[str] | None:
    """``_POD.match(part)``, without compiling it for a part that has no ``pod`` in it."""
    return _POD.match(part) if "pod" in part else None


def identity_from_path(path: str) -> CgroupIdentity:
    """What a cgroup path (relative to the cgroup2 mount) says about who runs in it.

    Recognises the container runtimes' cgroup names (``docker-<64 hex>.scope``,
    ``crio-``, ``cri-containerd-``, ``libpod-``; with the cgroupfs driver a
    bare 64-hex directory under ``docker/`` or a pod), Kubernetes pod slices
    (``kubepods-besteffort-pod<uid>.slice`` with underscores for dashes, or
    ``pod<uid>``) and the innermost systemd unit. The innermost container
    wins. Returns a :class:`CgroupIdentity` (fields ``None`` when not found).
    Never raises.
    """
    container = runtime = pod_uid = None
    parts = [p for p in path.split("/") if p]
    for index, part in enumerate(parts):
        for prefix, pattern, name in _CONTAINER_SCOPES:
            match = pattern.match(part) if part.startswith(prefix) else None
            if match:
                container, runtime = match.group(1), name
                break
        else:
            parent = parts[index - 1] if index else ""
            if (parent == "docker" or _pod_match(parent)) and (match := _BARE_ID.match(part)):
                container, runtime = match.group(1), "docker" if parent == "docker" else None
        match = _pod_match(part)
        if match:
            pod_uid = match.group(1).replace("_", "-")
    return CgroupIdentity(path="/" + "/".join(parts), unit=unit_from_cgroup_path(path),
                          container=container, runtime=runtime, pod_uid=pod_uid)


def cgroup2_mount(mounts: Iterable[Mount]) -> Path | None:
    """The mount point of the cgroup v2 hierarchy whose root is the filesystem's root; None if none."""
    for mount in mounts:
        if mount.fstype == "cgroup2" and mount.root == "/":
            return Path(mount.mount_point)
    for mount in mounts:  # inside a cgroup namespace the root is the namespace's
        if mount.fstype == "cgroup2":
            return Path(mount.mount_point)
    return None


def cgroup_of_pid(proc_root: Path, pid: int) -> str | None:
    """The cgroup v2 path of ``pid`` (the ``0::`` line of ``proc_root/PID/cgroup``); None if unreadable."""
    try:
        text = (Path(proc_root) / str(pid) / "cgroup").read_text(encoding="utf-8",
                                                                  errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


class CgroupIndex:
    """Cgroup id -> path under one cgroup2 mount, from a cached walk of the mount.

    A cgroup's id (what ``INET_DIAG_CGROUP_ID`` and ``ss --cgroup`` report) is
    the inode of its directory. The index walks the whole mount once, and again
    when asked for an id it does not know (a cgroup created since); an id still
    unknown after a walk is not walked for again until some other id misses.
    ``walks`` counts the walks, ``procs_reads`` the ``cgroup.procs`` files
    read (tests assert them). ``mount`` ``None`` (no cgroup2 on the host)
    makes every lookup miss without a walk. Not thread-safe.
    """

    def __init__(self, mount: Path | None) -> None:
        """Take the cgroup2 mount point (see :func:`cgroup2_mount`)."""
        self.mount = Path(mount) if mount is not None else None
        self._paths: dict[int, str] = {}
        self._missed: set[int] = set()
        self._identities: dict[str, CgroupIdentity] = {}
        self.walks = 0
        self.procs_reads = 0

    def _walk(self) -> None:
        """Rebuild the id -> path map from the directories under the mount."""
        assert self.mount is not None
        self.walks += 1
        paths: dict[int, str] = {}
        base = str(self.mount)
        try:
            paths[os.stat(base).st_ino] = "/"
        except OSError:
            self._paths = paths
            return
        stack = [(base, "")]
        while stack:
            directory, rel = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        try:
                            if not entry.is_dir(follow_symlinks=False):
                                continue
                            path = f"{rel}/{entry.name}"
                            paths[entry.inode()] = path
                        except OSError:
                            continue
                        stack.append((entry.path, path))
            except OSError:
                continue  # removed meanwhile
        self._paths = paths
        self._missed = set()

    def path_of(self, cgroup_id: int) -> str | None:
        """The path (relative to the mount, ``/`` for the root) of the cgroup ``cgroup_id``; None if unknown."""
        path = self._paths.get(cgroup_id)
        if path is not None or self.mount is None or cgroup_id in self._missed:
            return path
        self._walk()
        path = self._paths.get(cgroup_id)
        if path is None:
            self._missed.add(cgroup_id)
        return path

    def identity(self, cgroup_id: int) -> CgroupIdentity | None:
        """Who the cgroup ``cgroup_id`` belongs to (:func:`identity_from_path`); None if unknown."""
        path = self.path_of(cgroup_id)
        if path is None:
            return None
        known = self._identities.get(path)
        if known is None:
            known = self._identities[path] = identity_from_path(path)
        return known

    def pids(self, cgroup_id: int) -> tuple[int, ...]:
        """The pids in the cgroup ``cgroup_id`` now (its ``cgroup.procs``), ascending; () if unknown or gone."""
        path = self.path_of(cgroup_id)
        if path is None or self.mount is None:
            return ()
        self.procs_reads += 1
        try:
            text = (self.mount / path.lstrip("/") / "cgroup.procs").read_text()
        except OSError:
            self._paths.pop(cgroup_id, None)  # removed: walk again when asked again
            return ()
        return tuple(sorted(int(line) for line in text.split() if line.isdigit()))
