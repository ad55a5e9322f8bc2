"""The OCI image: built by scripts/build-image from the Debian package, run by podman.

The image runs with the privileges deploy/kubernetes/portwatch.yaml grants, read from
the manifest (:func:`tests.test_kubernetes.podman_privileges`: the node's network and
pid namespaces, every capability dropped but the four the namespace scan needs, a
read-only root filesystem, the read-only cgroup and /run/netns mounts, the ConfigMap as
/etc/portwatch). ``portwatch scan -A`` in it must report a TCP self-connect made in a
network namespace created on this machine (``ip netns add``), attributed to that
namespace (its inode, its name, the finding key's ``@NAME`` suffix), naming the process
that holds it (a process outside the container: that needs hostPID and the
capabilities).

Podman runs on a temporary storage directory (removed afterwards, with the image
archive, and podman's blob cache in /var/lib/containers when it made it), so the
test leaves no image, container or layer behind. The image is built once (the package
build and mmdebstrap: a few minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.netns import NetNS
from tests.test_kubernetes import podman_privileges

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
#: What this machine's podman needs (measured), besides the privileges under test.
PODMAN_RUN = ["--runtime=runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def _version() -> str:
    for line in (REPO / "portwatch" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split('"')[1]
    raise AssertionError("no __version__ in portwatch/__init__.py")


def test_image_reports_a_self_connect_in_a_host_namespace(netns: NetNS) -> None:
    for tool in ("podman", "mmdebstrap", "dpkg-buildpackage", "lintian"):
        require(shutil.which(tool, path=CLEAN_ENV["PATH"]) is not None, f"{tool} is not installed")
    _proc, info = netns.actor("self-connect")
    inode = os.stat(f"/run/netns/{netns.name}").st_ino
    # Podman keeps a blob cache in /var/lib/containers whatever --root says.
    podman_cache = Path("/var/lib/containers")
    cache_existed = podman_cache.exists()
    work = Path(tempfile.mkdtemp(prefix="portwatch-image-test.", dir="/var/tmp"))
    podman = ["podman", "--root", str(work / "storage"), "--runroot", str(work / "run"),
              "--storage-driver", "vfs", "--cgroup-manager=cgroupfs"]
    try:
        (work / "state").mkdir()
        (work / "config").mkdir()
        privileges = podman_privileges(work / "state", work / "config")
        built = subprocess.run(["nice", "bash", str(REPO / "scripts" / "build-image"), "--out", str(work)],
                               capture_output=True, text=True, env=CLEAN_ENV, timeout=600)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        archive = work / f"portwatch-{_version()}.oci.tar"
        subprocess.run([*podman, "load", "-q", "-i", str(archive)], check=True, env=CLEAN_ENV,
                       capture_output=True, timeout=300)
        r = subprocess.run(
            [*podman, "run", "--rm", *PODMAN_RUN, *privileges,
             f"localhost/portwatch:{_version()}", "scan", "--all-namespaces", "--format", "json"],
            capture_output=True, text=True, env=CLEAN_ENV, timeout=120)
        version = subprocess.run([*podman, "run", "--rm", *PODMAN_RUN, f"localhost/portwatch:{_version()}",
                                  "--version"], capture_output=True, text=True, env=CLEAN_ENV, timeout=120)
    finally:
        subprocess.run([*podman, "rmi", "-a", "-f"], capture_output=True, env=CLEAN_ENV, timeout=120)
        shutil.rmtree(work, ignore_errors=True)
        if not cache_existed:
            shutil.rmtree(podman_cache, ignore_errors=True)
    # the package's C loop of the classifier is in the image (built for its architecture)
    assert version.stdout.rstrip().endswith(", C classifier)"), version.stdout + version.stderr
    assert r.returncode == 1, r.stdout + r.stderr  # a critical finding
    report: dict[str, Any] = json.loads(r.stdout)
    # The scan entered the namespaces: the host's and the one made here, named by its mount.
    namespaces = {ns["id"]: ns for ns in report["namespaces"]}
    assert inode in namespaces, (r.stderr, sorted(ns["name"] for ns in report["namespaces"]))
    assert (namespaces[inode]["name"], namespaces[inode]["kind"]) == (netns.name, "named")
    assert "host" in {ns["kind"] for ns in namespaces.values()}
    (finding,) = [f for f in report["findings"]
                  if f["kind"] == "self_connect" and f["namespace"]["id"] == inode]
    assert finding["namespace"] == {"id": inode, "name": netns.name}
    assert finding["key"].endswith(f"@{netns.name}"), finding["key"]
    assert finding["severity"] == "critical"
    assert str(info["port"]) in json.dumps(finding)
    assert "python" in json.dumps(finding["processes"])
