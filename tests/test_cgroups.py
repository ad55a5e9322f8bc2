"""Cgroups: socket cgroup ids, id -> path -> container / pod / unit, owners found through cgroup.procs.

The tests create their cgroups under the cgroup2 mount named in
``/proc/self/mountinfo`` (``/sys/fs/cgroup/unified`` on a hybrid host) and
remove them after, moving any process left inside back to the root first.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from portwatch.collect import (
    CgroupIndex,
    Collector,
    cgroup2_mount,
    discover_namespaces,
    identity_from_path,
    parse_mountinfo,
    read_mountinfo,
)
from portwatch.collect.sources.netlink import NetlinkSource
from portwatch.model import CgroupIdentity, NamespaceKind, Snapshot, Socket
from tests.conftest import require
from tests.netns import ACTORS, NetNS

CONTAINER = "0123456789abcdef" * 4
POD_UID = "6f1c2b7e-3a4d-4e5f-8a9b-0c1d2e3f4a5b"


class MadeCgroups:
    """Cgroups made for one test under the cgroup2 mount: made by :meth:`make`, removed by :meth:`close`."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.base = mount / f"pwtest-{uuid.uuid4().hex[:8]}"
        self.base.mkdir()

    def make(self, relative: str) -> Path:
        """Create ``base/relative`` (and its parents); returns its path."""
        path = self.base / relative
        path.mkdir(parents=True)
        return path

    def close(self) -> None:
        """Move leftover processes to the root cgroup, then remove every directory, deepest first."""
        dirs = sorted((Path(d) for d, _, _ in os.walk(self.base)), key=lambda p: len(p.parts),
                      reverse=True)
        for path in dirs:
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    (self.mount / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # exited meanwhile
            path.rmdir()


@pytest.fixture
def cgroups() -> Iterator[MadeCgroups]:
    """A private subtree of the cgroup2 hierarchy."""
    require(os.geteuid() == 0, "needs root to create cgroups")
    mount = cgroup2_mount(read_mountinfo())
    require(mount is not None, "needs a cgroup2 mount")
    assert mount is not None
    made = MadeCgroups(mount)
    try:
        yield made
    finally:
        made.close()


def actor_in(netns: NetNS, cgroup: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start a test actor in ``netns`` already inside ``cgroup`` (it joins before exec)."""
    def join() -> None:  # in the child, before exec: "0" means the writing process
        (cgroup / "cgroup.procs").write_text("0")

    proc = netns.popen([*ACTORS, *args], preexec_fn=join)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    return proc, json.loads(line[len("READY "):])


def listener(snapshot: Snapshot, port: int) -> Socket:
    """The TCP listener of ``snapshot`` on ``port``."""
    found = [s for s in snapshot.sockets if s.is_listener and s.local.port == port]
    assert len(found) == 1, found
    return found[0]


def test_sockets_carry_their_cgroup_and_owners_are_found_through_cgroup_procs(
        netns: NetNS, cgroups: MadeCgroups) -> None:
    docker = cgroups.make(f"system.slice/docker-{CONTAINER}.scope")
    pod_slice = ("kubepods.slice/kubepods-besteffort.slice/"
                 f"kubepods-besteffort-pod{POD_UID.replace('-', '_')}.slice")
    pod_container = secrets.token_hex(32)
    pod = cgroups.make(f"{pod_slice}/cri-containerd-{pod_container}.scope")
    in_docker, _ = actor_in(netns, docker, "listen", "--port", "21001")
    in_pod, _ = actor_in(netns, pod, "listen", "--port", "21002")

    # a pod's process in it: named by the pod's uid before the mount's name (CRI runtimes
    # mount pod sandboxes as /run/netns/cni-<uuid>, a name nobody knows the pod by)
    target = [ns for ns in discover_namespaces().namespaces if ns.netns_name == netns.name]
    assert [(ns.kind, ns.name) for ns in target] == [(NamespaceKind.POD, POD_UID)]
    assert (target[0].pod_uid, target[0].container) == (POD_UID, CONTAINER)
    collector = Collector(NetlinkSource())
    snap = collector.snapshot_namespace(target[0])
    a, b = listener(snap, 21001), listener(snap, 21002)
    assert a.cgroup_id == os.stat(docker).st_ino and b.cgroup_id == os.stat(pod).st_ino
    assert collector.identity_of(a) == CgroupIdentity(
        path=f"/{cgroups.base.name}/system.slice/docker-{CONTAINER}.scope",
        unit=f"docker-{CONTAINER}.scope", container=CONTAINER, runtime="docker")
    ident = collector.identity_of(b)
    assert ident is not None and (ident.pod_uid, ident.container) == (POD_UID, pod_container)

    done = collector.attribute(snap, [a.inode, b.inode])

    assert done.owners == {a.inode: (in_docker.pid,), b.inode: (in_pod.pid,)}
    counters = collector.counters
    assert (counters.full_walks, counters.cgroup_narrowed, counters.cgroup_lookups) == (0, 2, 2)
    assert counters.fd_tables_read == 2


def test_a_socket_whose_process_left_its_cgroup_is_still_found_by_the_full_walk(
        netns: NetNS, cgroups: MadeCgroups) -> None:
    first = cgroups.make(f"docker-{CONTAINER}.scope")
    proc, _ = actor_in(netns, first, "listen", "--port", "21003")
    (cgroups.mount / "cgroup.procs").write_text(str(proc.pid))  # moves on; its socket does not
    target = [ns for ns in discover_namespaces().namespaces if ns.name == netns.name][0]
    collector = Collector(NetlinkSource())
    snap = collector.snapshot_namespace(target)
    sock = listener(snap, 21003)
    assert sock.cgroup_id == os.stat(first).st_ino

    done = collector.attribute(snap, [sock.inode])

    assert done.owners[sock.inode] == (proc.pid,)
    assert collector.counters.full_walks == 1 and collector.counters.cgroup_narrowed == 0


def test_cgroup_index_walks_again_for_a_new_cgroup_and_not_again_for_an_unknown_id(
        cgroups: MadeCgroups) -> None:
    index = CgroupIndex(cgroups.mount)
    assert index.path_of(os.stat(cgroups.base).st_ino) == f"/{cgroups.base.name}"
    assert index.walks == 1
    assert index.path_of(os.stat(cgroups.base).st_ino) is not None and index.walks == 1
    late = cgroups.make("late.service")
    assert index.path_of(os.stat(late).st_ino) == f"/{cgroups.base.name}/late.service"
    assert index.walks == 2
    assert index.path_of(1 << 60) is None and index.path_of(1 << 60) is None
    assert index.walks == 3
    assert index.pids(os.stat(late).st_ino) == () and index.procs_reads == 1
    assert CgroupIndex(None).path_of(1) is None


@pytest.mark.parametrize("path, expected", [
    (f"/system.slice/docker-{CONTAINER}.scope",
     CgroupIdentity(f"/system.slice/docker-{CONTAINER}.scope", f"docker-{CONTAINER}.scope",
                    CONTAINER, "docker")),
    (f"/machine.slice/libpod-{CONTAINER}.scope/container",
     CgroupIdentity(f"/machine.slice/libpod-{CONTAINER}.scope/container",
                    f"libpod-{CONTAINER}.scope", CONTAINER, "libpod")),
    (f"/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/crio-{CONTAINER}.scope",
     CgroupIdentity(f"/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/"
                    f"crio-{CONTAINER}.scope", f"crio-{CONTAINER}.scope", CONTAINER, "cri-o",
                    POD_UID)),
    (f"/kubepods/burstable/pod{POD_UID}/{CONTAINER}",
     CgroupIdentity(f"/kubepods/burstable/pod{POD_UID}/{CONTAINER}", None, CONTAINER, None,
                    POD_UID)),
    (f"/docker/{CONTAINER}", CgroupIdentity(f"/docker/{CONTAINER}", None, CONTAINER, "docker")),
    ("/system.slice/nginx.service", CgroupIdentity("/system.slice/nginx.service",
                                                   "nginx.service")),
    (f"/system.slice/docker-{CONTAINER[:60]}.scope",
     CgroupIdentity(f"/system.slice/docker-{CONTAINER[:60]}.scope",
                    f"docker-{CONTAINER[:60]}.scope")),
    ("/", CgroupIdentity("/")),
])
def test_identity_from_path_names_runtime_container_pod_and_unit(
        path: str, expected: CgroupIdentity) -> None:
    assert identity_from_path(path) == expected


def test_cgroup2_mount_is_found_in_mountinfo_wherever_it_is() -> None:
    hybrid = parse_mountinfo(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert cgroup2_mount(hybrid) == Path("/sys/fs/cgroup/unified")
    spaced = parse_mountinfo("41 31 0:38 / /mnt/c\\040g shared:9 - cgroup2 cgroup2 rw\n")
    assert cgroup2_mount(spaced) == Path("/mnt/c g")
    assert cgroup2_mount(parse_mountinfo("garbage\n")) is None


def test_two_namespaces_of_one_systemd_unit_get_different_keys(cgroups: MadeCgroups) -> None:
    unit = cgroups.make("pwtest-dup.service")
    procs = []
    try:
        for _ in range(2):
            proc = subprocess.Popen(["unshare", "-n", "sleep", "600"],
                                    preexec_fn=lambda: (unit / "cgroup.procs").write_text("0"))
            procs.append(proc)
        mine: list[Any] = []
        for _ in range(100):  # unshare has exec'd sleep in its namespace by then
            mine = [ns for ns in discover_namespaces().namespaces if ns.unit == "pwtest-dup.service"]
            if len(mine) == 2:
                break
            time.sleep(0.05)
        assert len(mine) == 2, mine
        assert all(ns.name == "pwtest-dup.service" and ns.kind is NamespaceKind.PROCESS for ns in mine)
        assert {ns.key for ns in mine} == {f"netns:{ns.inode}" for ns in mine}  # two keys, not one
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
