"""The OCI image: built by scripts/build-image from the Debian package, run by podman.

The image runs with the privileges deploy/kubernetes/portwatch.yaml grants (the
network and pid namespaces it is given, every capability dropped but
CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, a read-only root filesystem) and must report
a TCP self-connect made in a network namespace created on this machine, naming the
process that holds it (a process outside the container: that needs hostPID and the
two capabilities).

Podman runs on a temporary storage directory (removed afterwards, with the image
archive, and podman's blob cache in /var/lib/containers when it made it), so the
test leaves no image, container or layer behind. About a minute:
the package build and mmdebstrap.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require
from tests.netns import NetNS

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "deploy" / "kubernetes" / "portwatch.yaml"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
#: What this machine's podman needs (measured), besides the privileges under test.
PODMAN_RUN = ["--runtime=runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def _version() -> str:
    for line in (REPO / "portwatch" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split('"')[1]
    raise AssertionError("no __version__ in portwatch/__init__.py")


def _manifest_capabilities() -> list[str]:
    for doc in yaml.safe_load_all(MANIFEST.read_text()):
        if doc["kind"] == "DaemonSet":
            spec = doc["spec"]["template"]["spec"]
            assert spec["hostNetwork"] is True and spec["hostPID"] is True
            (container,) = spec["containers"]
            security = container["securityContext"]
            assert security["capabilities"]["drop"] == ["ALL"]
            assert security["readOnlyRootFilesystem"] is True
            caps: list[str] = security["capabilities"]["add"]
            return caps
    raise AssertionError("no DaemonSet in the manifest")


def test_image_reports_a_self_connect_in_a_host_namespace(netns: NetNS) -> None:
    for tool in ("podman", "mmdebstrap", "dpkg-buildpackage", "lintian"):
        require(shutil.which(tool, path=CLEAN_ENV["PATH"]) is not None, f"{tool} is not installed")
    caps = _manifest_capabilities()
    _proc, info = netns.actor("self-connect")
    # Podman keeps a blob cache in /var/lib/containers whatever --root says.
    podman_cache = Path("/var/lib/containers")
    cache_existed = podman_cache.exists()
    work = Path(tempfile.mkdtemp(prefix="portwatch-image-test.", dir="/var/tmp"))
    podman = ["podman", "--root", str(work / "storage"), "--runroot", str(work / "run"),
              "--storage-driver", "vfs", "--cgroup-manager=cgroupfs"]
    try:
        built = subprocess.run(["bash", str(REPO / "scripts" / "build-image"), "--out", str(work)],
                               capture_output=True, text=True, env=CLEAN_ENV, timeout=600)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        archive = work / f"portwatch-{_version()}.oci.tar"
        subprocess.run([*podman, "load", "-q", "-i", str(archive)], check=True, env=CLEAN_ENV,
                       capture_output=True, timeout=300)
        r = subprocess.run(
            [*podman, "run", "--rm", *PODMAN_RUN, f"--network=ns:/run/netns/{netns.name}",
             "--pid=host", "--cap-drop=ALL", f"--cap-add={','.join(caps)}", "--read-only",
             f"localhost/portwatch:{_version()}", "scan", "--format", "json"],
            capture_output=True, text=True, env=CLEAN_ENV, timeout=120)
    finally:
        subprocess.run([*podman, "rmi", "-a", "-f"], capture_output=True, env=CLEAN_ENV, timeout=120)
        shutil.rmtree(work, ignore_errors=True)
        if not cache_existed:
            shutil.rmtree(podman_cache, ignore_errors=True)
    assert r.returncode == 1, r.stdout + r.stderr  # a critical finding
    report: dict[str, Any] = json.loads(r.stdout)
    (finding,) = [f for f in report["findings"] if f["kind"] == "self_connect"]
    assert finding["severity"] == "critical"
    assert str(info["port"]) in json.dumps(finding)
    assert "python" in json.dumps(finding["processes"])
