"""Pods named by their Kubernetes ``NAMESPACE/NAME``, read from the runtimes' OCI bundle ``config.json``.

Real parts: a real process in a real network namespace, inside a cgroup the
test creates under the cgroup2 mount named like a kubepods pod's container
(``.../kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope``),
with its bundle's ``config.json`` in a run-root tree the test creates (given
to discovery as ``run_root``; the CLI test mounts it on ``/run`` in a
private mount namespace, so the host's ``/run`` is never touched). The
annotation parser and the bundle reader are checked on documents and files
shaped as containerd and CRI-O write them.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from portwatch.collect import BundleNames, BundleReader, Collector, bundle_reader, discover_namespaces
from portwatch.collect import names_from_annotations
from portwatch.config.types import Config, NamespacesConfig, Service, namespace_selected, service_applies
from portwatch.daemon.wiring import default_pass
from portwatch.model import NamespaceInfo, NamespaceKind
from portwatch.output.json import to_json_document
from portwatch.output.report import render_text
from portwatch.scan import make_source, namespace_names, run_namespaces_scan, select_namespaces
from tests.conftest import require
from tests.netns import REPO, NetNS
from tests.test_cgroups import MadeCgroups, actor_in, cgroups  # noqa: F401 (the fixture)

POD_NAMESPACE = "default"
CONTAINERD = "containerd/io.containerd.runtime.v2.task"
CRIO = "containers/storage/overlay-containers"


def containerd_document(pod: str, uid: str, container: str | None = None, ns: str = POD_NAMESPACE) -> dict[str, Any]:
    """A ``config.json`` as containerd's CRI plugin writes it: a sandbox's, or a container's when named."""
    annotations = {
        "io.kubernetes.cri.sandbox-id": "f" * 64,
        "io.kubernetes.cri.sandbox-namespace": ns,
        "io.kubernetes.cri.sandbox-name": pod,
        "io.kubernetes.cri.sandbox-uid": uid,
        "io.kubernetes.cri.container-type": "sandbox" if container is None else "container",
    }
    if container is None:
        annotations["io.kubernetes.cri.sandbox-log-directory"] = f"/var/log/pods/{ns}_{pod}_{uid}"
    else:
        annotations["io.kubernetes.cri.container-name"] = container
        annotations["io.kubernetes.cri.image-name"] = "docker.io/library/nginx:1.27"
    return {"ociVersion": "1.1.0", "process": {"args": ["/pause"]}, "annotations": annotations}


def crio_document(pod: str, uid: str, container: str | None = None) -> dict[str, Any]:
    """A ``config.json`` as CRI-O writes it (the kubelet's labels among its annotations)."""
    return {"ociVersion": "1.0.2-dev", "annotations": {
        "io.kubernetes.pod.namespace": POD_NAMESPACE,
        "io.kubernetes.pod.name": pod,
        "io.kubernetes.pod.uid": uid,
        "io.kubernetes.container.name": "POD" if container is None else container,
        "io.kubernetes.cri-o.ContainerType": "sandbox" if container is None else "container",
        "io.kubernetes.cri-o.SandboxID": "e" * 64,
    }}


def write(path: Path, text: str | bytes) -> Path:
    """Write ``text`` at ``path`` (parents made); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# ============================================================================ the parser, the reader

UID = "6f1c2b7e-3a4d-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.mark.parametrize("document, expected", [
    (containerd_document("web-1", UID), BundleNames("default", "web-1", UID, None, sandbox=True)),
    (containerd_document("web-1", UID, "nginx"), BundleNames("default", "web-1", UID, "nginx")),
    (crio_document("api-7d9f6c5b84-hq2xn", UID), BundleNames("default", "api-7d9f6c5b84-hq2xn", UID, None,
                                                             sandbox=True)),
    (crio_document("api-0", UID, "app"), BundleNames("default", "api-0", UID, "app")),
    # containerd before 1.6.11 wrote no sandbox-uid
    ({"annotations": {"io.kubernetes.cri.sandbox-namespace": "kube-system",
                      "io.kubernetes.cri.sandbox-name": "coredns-5d78c9869d-x2x7q"}},
     BundleNames("kube-system", "coredns-5d78c9869d-x2x7q")),
])
def test_containerd_and_crio_annotations_name_the_pod_and_its_container(
        document: dict[str, Any], expected: BundleNames) -> None:
    assert names_from_annotations(document) == expected


@pytest.mark.parametrize("document", [
    None, [], "text", {}, {"annotations": ["io.kubernetes.pod.name"]},
    {"annotations": {"io.kubernetes.cri.sandbox-name": "web-1"}},  # no namespace
    {"annotations": {"io.kubernetes.pod.namespace": "default"}},  # no name
    containerd_document("Web-1", UID),  # not a DNS subdomain
    containerd_document("web/1", UID),
    containerd_document("w" * 254, UID),
    containerd_document("web-1", UID, ns="de\nfault"),
    containerd_document("web-1\n", UID),  # a trailing newline: `$` would match before it
    containerd_document("web-1", UID, ns="default\n"),
    {"annotations": {"io.kubernetes.pod.namespace": 7, "io.kubernetes.pod.name": "web-1"}},
    {"annotations": {"nerdctl/name": "web"}},  # a container, but no pod
])
def test_a_document_naming_no_valid_pod_names_nothing(document: Any) -> None:
    assert names_from_annotations(document) is None


def test_an_invalid_uid_or_container_name_is_left_out_and_the_pod_still_named() -> None:
    doc = containerd_document("web-1", "not-a-uid", "Bad_Name")
    assert names_from_annotations(doc) == BundleNames("default", "web-1", None, None)


def test_the_reader_finds_containerd_and_crio_bundles_ignores_bad_files_quietly_and_caches(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    in_containerd, in_crio, bad, big, linked, missing = (secrets.token_hex(32) for _ in range(6))
    write(tmp_path / CONTAINERD / "moby" / "readme.txt", "another containerd namespace, empty of ours")
    good = write(tmp_path / CONTAINERD / "k8s.io" / in_containerd / "config.json",
                 json.dumps(containerd_document("web-1", UID, "nginx")))
    write(tmp_path / CRIO / in_crio / "userdata" / "config.json", json.dumps(crio_document("api-0", UID)))
    write(tmp_path / CONTAINERD / "k8s.io" / bad / "config.json", b'{"annotations": {"io.kube\xff')
    write(tmp_path / CONTAINERD / "k8s.io" / big / "config.json",
          json.dumps({**containerd_document("web-2", UID), "pad": "x" * 2000}))
    (tmp_path / CONTAINERD / "k8s.io" / linked).mkdir()
    (tmp_path / CONTAINERD / "k8s.io" / linked / "config.json").symlink_to(good)
    reader = BundleReader(tmp_path, max_bytes=1024)

    assert reader.names(in_containerd) == BundleNames("default", "web-1", UID, "nginx")
    assert reader.names(in_crio, "cri-o") == BundleNames("default", "api-0", UID, None, sandbox=True)
    assert reader.names(in_crio) is not None  # found in the other runtime's place too
    assert (reader.reads, reader.ignored) == (2, 0)
    assert [reader.names(cid) for cid in (bad, big, linked, missing)] == [None] * 4
    assert reader.ignored == 3  # malformed, over the cap, a symlink; a missing one is no error
    assert reader.names("../../etc") is None and reader.candidates("../../etc") == []
    assert capsys.readouterr() == ("", "")

    reads = reader.reads
    assert reader.names(in_containerd) is not None and reader.names(bad) is None
    assert reader.reads == reads  # unchanged files are not read again
    write(good, json.dumps(containerd_document("web-1b", UID, "nginx")))
    assert reader.names(in_containerd) == BundleNames("default", "web-1b", UID, "nginx")
    assert reader.reads == reads + 1


def test_a_fifo_in_a_bundle_is_ignored_without_blocking(tmp_path: Path) -> None:
    cid = secrets.token_hex(32)
    path = tmp_path / CRIO / cid / "userdata" / "config.json"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    reader = BundleReader(tmp_path)
    assert reader.names(cid, "cri-o") is None and reader.ignored == 1


def test_services_and_patterns_name_a_pod_by_namespace_and_name() -> None:
    names = ("6f1c2b7e-3a4d-4e5f-8a9b-0c1d2e3f4a5b", "default/web-1")
    assert service_applies(Service(name="web", port=80, namespace="default/web-1"), names, host=False)
    # a pod's NAMESPACE/NAME is matched whole: no prefix, as there is for a container id
    assert not service_applies(Service(name="web", port=80, namespace="default/web-"), names, host=False)
    assert not service_applies(Service(name="web", port=80, namespace="default/web-1"), ("default/web-10",),
                               host=False)
    assert namespace_selected(NamespacesConfig(include=("default/web-*",)), names)
    assert namespace_selected(NamespacesConfig(include=("default/*",)), names)
    assert not namespace_selected(NamespacesConfig(include=("web-*",)), names)
    assert not namespace_selected(NamespacesConfig(exclude=("*/web-1",)), names)
    pod = NamespaceInfo(inode=7, dev=4, kind=NamespaceKind.POD, name=names[0], pod_uid=names[0],
                        pod_namespace="default", pod_name="web-1")
    assert pod.pod_ref == "default/web-1" and "default/web-1" in namespace_names(pod)
    assert NamespaceInfo(inode=7, dev=4, kind=NamespaceKind.POD, name="x", pod_name="web-1").pod_ref is None


# ============================================================================ a real pod namespace


@dataclass
class Pod:
    """One pod-like namespace: its netns, cgroup, actor, names and the run root holding its bundle."""

    netns: NetNS
    uid: str
    container: str
    name: str
    run_root: Path
    bundle: Path
    inode: int

    def discover(self) -> NamespaceInfo:
        """The namespace discovery finds for this pod (with ``run_root``)."""
        (found,) = [ns for ns in discover_namespaces(run_root=self.run_root).namespaces
                    if ns.inode == self.inode]
        return found


def make_pod(netns: NetNS, cgroups: MadeCgroups, run_root: Path, document: dict[str, Any] | None) -> Pod:
    """A listener on 20005 (in its namespace's range 20000-20999) in a kubepods container cgroup,
    with ``document`` (containerd-shaped, None: one made for ``default/web-<hex>``) as its bundle."""
    uid = str(uuid.uuid4())
    container = secrets.token_hex(32)
    name = f"web-{secrets.token_hex(3)}"
    slice_ = f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
    cgroup = cgroups.make(f"{slice_}/cri-containerd-{container}.scope")
    netns.sysctl("net/ipv4/ip_local_port_range", "20000 20999")
    actor_in(netns, cgroup, "listen", "--port", "20005")
    text = json.dumps(document if document is not None else containerd_document(name, uid, "web"))
    bundle = write(run_root / CONTAINERD / "k8s.io" / container / "config.json", text)
    return Pod(netns, uid, container, name, run_root, bundle, os.stat(f"/run/netns/{netns.name}").st_ino)


@pytest.fixture
def pod(netns: NetNS, cgroups: MadeCgroups, tmp_path: Path) -> Pod:
    """A pod ``default/web-<hex>`` whose container's bundle is readable under ``tmp_path/run``."""
    return make_pod(netns, cgroups, tmp_path / "run", None)


def test_discovery_names_a_pod_by_its_bundles_namespace_and_name(pod: Pod) -> None:
    ns = pod.discover()
    assert (ns.kind, ns.name, ns.key, ns.pod_uid) == (NamespaceKind.POD, pod.uid, pod.uid, pod.uid)
    assert (ns.pod_namespace, ns.pod_name, ns.pod_ref) == ("default", pod.name, f"default/{pod.name}")
    assert (ns.container, ns.container_name, ns.runtime) == (pod.container, "web", "containerd")
    # nothing read without the bundle: the pod is still named by its uid
    empty = Path(pod.run_root.parent / "empty")
    (bare,) = [n for n in discover_namespaces(run_root=empty).namespaces if n.inode == pod.inode]
    assert (bare.name, bare.pod_ref, bare.container_name) == (pod.uid, None, None)


def test_the_scan_shows_the_pod_in_json_and_the_report_and_a_service_names_it(pod: Pod) -> None:
    ref = f"default/{pod.name}"
    discovery = discover_namespaces(run_root=pod.run_root)
    (ns,) = select_namespaces(discovery, [ref])  # --netns default/web-...
    config = Config(services=(Service(name="web", port=20500, namespace=ref),
                              Service(name="other", port=20600, namespace="default/web-")))
    result = run_namespaces_scan(config, Collector(make_source("auto")), discovery, [ns])

    doc = to_json_document(result, "node-1")
    (entry,) = doc["namespaces"]
    assert {k: entry.get(k) for k in ("id", "name", "key", "kind", "pod", "pod_namespace", "pod_name",
                                      "container", "container_name")} == {
        "id": pod.inode, "name": pod.uid, "key": pod.uid, "kind": "pod", "pod": pod.uid,
        "pod_namespace": "default", "pod_name": pod.name, "container": pod.container, "container_name": "web"}
    assert sorted((f["kind"], f["details"].get("service")) for f in doc["findings"]) == [
        ("listener_in_ephemeral_range", None), ("service_port_at_risk", "web")]  # "default/web-" is no prefix
    for finding in doc["findings"]:
        assert finding["namespace"] == {"id": pod.inode, "name": pod.uid, "pod_namespace": "default",
                                        "pod_name": pod.name}
        assert finding["key"].endswith(f"@{pod.uid}")  # keys stay on the uid
    text = render_text(result, "node-1")
    assert f"network namespace {pod.uid} (pod, pod {ref}, container {pod.container[:12]}" in text


def test_the_daemons_include_and_exclude_pick_a_pod_by_namespace_and_name(pod: Pod) -> None:
    def selected(namespaces: NamespacesConfig) -> set[int]:
        result = default_pass(Config(namespaces=namespaces), collector, {},
                              discover=lambda: discover_namespaces(run_root=pod.run_root))
        return {r.snapshot.namespace.inode for r in result.results if r.snapshot.namespace is not None}

    collector = Collector(make_source("auto"))
    assert selected(NamespacesConfig(include=("default/web-*",))) == {pod.inode}
    assert pod.inode not in selected(NamespacesConfig(include=("default/web-*", "host"),
                                                      exclude=("default/web-*",)))
    assert selected(NamespacesConfig(include=(pod.uid,))) == {pod.inode}  # the uid still names it


def test_a_malformed_bundle_is_ignored_and_the_pod_still_named_by_its_uid(
        netns: NetNS, cgroups: MadeCgroups, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = make_pod(netns, cgroups, tmp_path / "run", {})
    made.bundle.write_bytes(b'{"annotations": {"io.kubernetes.cri.sandbox-name": "web-1", ')  # cut short
    ns = made.discover()
    assert (ns.kind, ns.name, ns.pod_ref, ns.container_name) == (NamespaceKind.POD, made.uid, None, None)
    assert bundle_reader(made.run_root).ignored == 1
    config = Config(namespaces=NamespacesConfig(include=("default/web-*",)))
    assert not namespace_selected(config.namespaces, namespace_names(ns))
    assert capsys.readouterr() == ("", "")


def test_a_bundle_of_another_pod_uid_is_not_believed(
        netns: NetNS, cgroups: MadeCgroups, tmp_path: Path) -> None:
    made = make_pod(netns, cgroups, tmp_path / "run", containerd_document("web-1", str(uuid.uuid4()), "web"))
    assert made.discover().pod_ref is None


@pytest.fixture
def unshare() -> Iterator[str]:
    """The ``unshare`` binary (a private mount namespace for the CLI test)."""
    require(os.path.exists("/usr/bin/unshare"), "needs unshare (util-linux)")
    yield "/usr/bin/unshare"


def test_scan_all_namespaces_names_the_pod_from_the_bundle_under_run(pod: Pod, unshare: str) -> None:
    # /run in a private mount namespace is a fresh tmpfs holding only the test's bundle
    target = f"/run/{CONTAINERD}/k8s.io/{pod.container}"
    script = (f"mount -t tmpfs -o size=1m,mode=0755 pwtest /run && mkdir -p {target}"
              f" && cp {pod.bundle} {target}/config.json"
              f" && exec {sys.executable} -m portwatch scan -A --format json")
    proc = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=180, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    (entry,) = [n for n in doc["namespaces"] if n["id"] == pod.inode]
    assert (entry["kind"], entry["name"], entry["pod"]) == ("pod", pod.uid, pod.uid)
    assert (entry["pod_namespace"], entry["pod_name"], entry["container_name"]) == ("default", pod.name, "web")
    (finding,) = [f for f in doc["findings"] if f["namespace"]["id"] == pod.inode]
    assert finding["namespace"]["pod_name"] == pod.name and finding["kind"] == "listener_in_ephemeral_range"
