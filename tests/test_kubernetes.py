"""deploy/kubernetes/portwatch.yaml: a valid manifest granting exactly what the namespace scan needs.

- every document validates against the Kubernetes API schemas (``kubernetes-validate``,
  strict: unknown fields are errors);
- the DaemonSet's invariants: hostNetwork and hostPID, every capability dropped but
  exactly the four the scan uses, a read-only root filesystem, the probe paths, every
  host mount read-only but the state directory, ``/run/netns`` with HostToContainer
  propagation, resources set;
- the Service selects the pods, names the container's port and carries the scrape
  annotations (and the pods do not, so nothing is scraped twice).

:func:`podman_privileges` turns the DaemonSet into ``podman run`` options, so that
tests/test_image.py runs the image with the manifest's privileges without restating them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.conftest import require

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "deploy" / "kubernetes" / "portwatch.yaml"
#: What the namespace scan needs; the manifest explains each (see collect/namespaces.py,
#: collect/owners.py, collect/events.py).
CAPABILITIES = ["DAC_READ_SEARCH", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]
PORT = 9731


def manifest_documents() -> list[dict[str, Any]]:
    """The manifest's documents, in order."""
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc is not None]


def _document(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in manifest_documents() if d["kind"] == kind]
    return doc


def daemonset_pod() -> dict[str, Any]:
    """The DaemonSet's pod spec."""
    spec: dict[str, Any] = _document("DaemonSet")["spec"]["template"]["spec"]
    return spec


def daemonset_container() -> dict[str, Any]:
    """The DaemonSet's one container."""
    (container,) = daemonset_pod()["containers"]
    assert isinstance(container, dict)
    return container


def podman_privileges(writable: Path, configmap_dir: Path) -> list[str]:
    """``podman run`` options that grant what the DaemonSet grants, read from the manifest.

    Host namespaces, user, capabilities, ``no_new_privs``, read-only root, and the
    volumes: a read-only hostPath is the host's directory (``rslave`` for
    HostToContainer propagation; an empty directory beside ``configmap_dir`` for a
    ``DirectoryOrCreate`` one the host lacks), a writable hostPath is ``writable`` (a test must not
    write on the host), a ConfigMap is ``configmap_dir`` filled with the ConfigMap's
    data. Raises AssertionError on anything in the manifest it cannot translate.
    """
    pod, container = daemonset_pod(), daemonset_container()
    security = container["securityContext"]
    options = [f"--user={pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"]
    if pod.get("hostNetwork"):
        options.append("--network=host")
    if pod.get("hostPID"):
        options.append("--pid=host")
    assert security["capabilities"]["drop"] == ["ALL"]
    options += ["--cap-drop=ALL", "--cap-add=" + ",".join(security["capabilities"]["add"])]
    if security.get("allowPrivilegeEscalation") is False:
        options.append("--security-opt=no-new-privileges")
    if security.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        flags = ["ro"] if mount.get("readOnly") else []
        if "configMap" in volume:
            data = _document("ConfigMap")["data"]
            assert _document("ConfigMap")["metadata"]["name"] == volume["configMap"]["name"]
            for name, text in data.items():
                (configmap_dir / name).write_text(text)
            source = str(configmap_dir)
        elif "hostPath" in volume:
            source = volume["hostPath"]["path"] if mount.get("readOnly") else str(writable)
            if mount.get("readOnly") and volume["hostPath"].get("type") == "DirectoryOrCreate" \
                    and not Path(source).is_dir():  # the kubelet would make it empty: never on this host
                source = str(configmap_dir.parent / f"empty-{mount['name']}")
                Path(source).mkdir(exist_ok=True)
        else:
            raise AssertionError(f"volume {mount['name']}: no podman equivalent in this test")
        propagation = mount.get("mountPropagation", "None")
        assert propagation in ("None", "HostToContainer"), propagation
        if propagation == "HostToContainer":
            flags.append("rslave")
        options.append(f"--volume={source}:{mount['mountPath']}" + (":" + ",".join(flags) if flags else ""))
    return options


def _validator() -> ModuleType:
    """The ``kubernetes_validate`` module (the API's JSON schemas, offline); skips without it (fails in CI)."""
    try:
        module = importlib.import_module("kubernetes_validate")
    except ImportError:
        module = None
    require(module is not None, "kubernetes-validate is not installed (pip install kubernetes-validate)")
    assert module is not None
    return module


def test_manifest_validates_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = _validator()
    docs = manifest_documents()
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_a_wrong_field_fails_the_schema_validation() -> None:
    kubernetes_validate = _validator()
    daemonset = _document("DaemonSet")
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["ad"] = ["NET_RAW"]
    try:
        kubernetes_validate.validate(daemonset, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        assert "ad" in str(e)
    else:
        raise AssertionError("an unknown field passed the strict validation")


def test_daemonset_grants_exactly_what_the_namespace_scan_needs() -> None:
    pod, container = daemonset_pod(), daemonset_container()
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    assert pod.get("hostIPC", False) is False
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": CAPABILITIES}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security.get("privileged", False) is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # Each capability is explained next to the list.
    text = MANIFEST.read_text()
    for cap in CAPABILITIES:
        assert f"# {cap} " in text, f"{cap} has no comment saying why"


def test_host_mounts_are_read_only_but_the_state_directory() -> None:
    pod, container = daemonset_pod(), daemonset_container()
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    host = {path: volumes[m["name"]]["hostPath"]["path"] for path, m in mounts.items()
            if "hostPath" in volumes[m["name"]]}
    bundles = ("/run/containerd/io.containerd.runtime.v2.task", "/run/containers/storage/overlay-containers")
    assert host == {"/var/lib/portwatch": "/var/lib/portwatch", "/sys/fs/cgroup": "/sys/fs/cgroup",
                    "/run/netns": "/run/netns", **{b: b for b in bundles}}  # the OCI bundles: pod names
    writable = sorted(path for path, m in mounts.items() if not m.get("readOnly"))
    assert writable == ["/var/lib/portwatch"]
    assert mounts["/run/netns"]["mountPropagation"] == "HostToContainer"
    assert all(m.get("mountPropagation", "None") != "Bidirectional" for m in mounts.values())
    # /proc is the runtime's (hostPID): never a writable host mount of /proc or /.
    assert not any(p in ("/", "/proc") or p.startswith("/proc/") for p in host.values())


def test_probes_resources_and_listen_address() -> None:
    container = daemonset_container()
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": PORT, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert f"--listen-address=0.0.0.0:{PORT}" in container["args"]
    assert container["args"][0] == "run"


def test_service_selects_the_pods_and_carries_the_scrape_annotations() -> None:
    service, daemonset = _document("Service"), _document("DaemonSet")
    template = daemonset["spec"]["template"]
    assert service["spec"]["selector"] == daemonset["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port == {"name": "metrics", "port": PORT, "targetPort": "metrics", "protocol": "TCP"}
    assert service["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics"}
    assert "annotations" not in template["metadata"], "pods and Service annotated: scraped twice"
    namespace = _document("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for doc in manifest_documents()[1:]:
        assert doc["metadata"]["namespace"] == namespace["metadata"]["name"]


def test_podman_options_follow_the_manifest(tmp_path: Path) -> None:
    state, config = tmp_path / "state", tmp_path / "config"
    state.mkdir()
    config.mkdir()
    options = podman_privileges(state, config)
    assert options[:3] == ["--user=0:0", "--network=host", "--pid=host"]
    assert "--cap-add=" + ",".join(CAPABILITIES) in options and "--cap-drop=ALL" in options
    assert {"--read-only", "--security-opt=no-new-privileges"} <= set(options)
    assert f"--volume={state}:/var/lib/portwatch" in options
    assert "--volume=/run/netns:/run/netns:ro,rslave" in options
    assert "--volume=/sys/fs/cgroup:/sys/fs/cgroup:ro" in options
    assert f"--volume={config}:/etc/portwatch:ro" in options
    assert os.listdir(config) == ["portwatch.yaml"]
