"""End-to-end: `portwatch scan -A` / `--netns` / `reserve -A` over real namespaces the tests make.

Three namespaces with different ranges: ``listening`` (an ``ip netns`` one,
range 20000-20999, a listener on 20005: outside the host's range, so only
its own range flags it), ``looped`` (unnamed, held by a process made with
``unshare -n``, which then becomes the self-connect actor) and ``clean``
(an ``ip netns`` one with nothing in it). Each test removes what it made.
The pure parts (how to apply a reservation in a pod or container, service
matching) are checked on constructed data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from portwatch.collect import OWN_NAMESPACE_NOTE, Collector, Discovery, discover_namespaces
from portwatch.config.types import Config, Service, service_applies
from portwatch.model import NamespaceInfo, NamespaceKind
from portwatch.output.reserve import how_to_apply
from portwatch.scan import make_source, run_namespaces_scan, select_namespaces
from tests.conftest import require
from tests.netns import ACTORS, REPO, NetNS, netns_available

PORTWATCH = [sys.executable, "-m", "portwatch"]
NOBODY = 65534
LISTEN_RANGE = "20000 20999"
LOOP_RANGE = "40000 40999"
CLEAN_RANGE = "30000 30999"


def env() -> dict[str, str]:
    """The environment of a portwatch run (the repository on PYTHONPATH)."""
    return dict(os.environ, PYTHONPATH=str(REPO))


def portwatch(*args: str, user: int | None = None, ns: NetNS | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``portwatch ARGS`` (as ``user``, inside ``ns`` when given) and return it, output captured."""
    cmd = [*PORTWATCH, *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    if ns is not None:
        return ns.run(cmd)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env(), cwd=REPO)


def scan_json(*args: str, user: int | None = None, ns: NetNS | None = None) -> dict[str, Any]:
    """``portwatch scan --format json ARGS``: its document (exit 0 or 1 required)."""
    proc = portwatch("scan", "--format", "json", *args, user=user, ns=ns)
    assert proc.returncode in (0, 1), f"exit {proc.returncode}: {proc.stderr}"
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


class Looped:
    """An unnamed namespace made by ``unshare -n`` whose process is a self-connect actor."""

    def __init__(self) -> None:
        require(shutil.which("unshare") is not None, "needs unshare (util-linux)")
        script = (f"ip link set lo up && echo '{LOOP_RANGE}' > /proc/sys/net/ipv4/ip_local_port_range"
                  f" && exec {' '.join(ACTORS)} self-connect")
        self.proc = subprocess.Popen(["unshare", "-n", "sh", "-c", script], stdout=subprocess.PIPE,
                                     stdin=subprocess.PIPE, text=True, env=env(), cwd=REPO)
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        line = self.proc.stdout.readline() if sel.select(60) else ""
        sel.close()
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"self-connect actor not ready: {line!r}")
        self.info: dict[str, Any] = json.loads(line[len("READY "):])
        self.inode = os.stat(f"/proc/{self.proc.pid}/ns/net").st_ino

    def close(self) -> None:
        """Stop the actor (its namespace goes with it)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


class Three:
    """The three namespaces of this module's tests."""

    def __init__(self, listening: NetNS, looped: Looped, clean: NetNS, port: int) -> None:
        self.listening, self.looped, self.clean, self.port = listening, looped, clean, port

    @staticmethod
    def inode(ns: NetNS) -> int:
        """The inode of an ``ip netns`` namespace."""
        return os.stat(f"/run/netns/{ns.name}").st_ino


@pytest.fixture
def three() -> Iterator[Three]:
    """Make the three namespaces; remove them (and their processes) afterwards."""
    ok, reason = netns_available()
    require(ok, reason)
    made: list[NetNS] = []
    looped: Looped | None = None
    try:
        listening = NetNS(prefix="pwlisten")
        made.append(listening)
        listening.sysctl("net/ipv4/ip_local_port_range", LISTEN_RANGE)
        _proc, info = listening.actor("listen", "--port", "20005")
        clean = NetNS(prefix="pwclean")
        made.append(clean)
        clean.sysctl("net/ipv4/ip_local_port_range", CLEAN_RANGE)
        looped = Looped()
        yield Three(listening, looped, clean, info["ports"][0])
    finally:
        if looped is not None:
            looped.close()
        for ns in made:
            ns.close()


def by_id(doc: dict[str, Any], inode: int) -> dict[str, Any]:
    """The one entry of ``doc["namespaces"]`` with ``id`` ``inode``."""
    found: list[dict[str, Any]] = [n for n in doc["namespaces"] if n["id"] == inode]
    assert len(found) == 1, [(n["id"], n["name"]) for n in doc["namespaces"]]
    return found[0]


def findings_in(doc: dict[str, Any], inode: int) -> list[dict[str, Any]]:
    """The findings ``doc`` places in the namespace ``inode``."""
    return [f for f in doc["findings"] if f["namespace"]["id"] == inode]


def test_all_namespaces_reports_each_finding_in_its_own_namespace_and_nothing_in_the_clean_one(
        three: Three) -> None:
    doc = scan_json("--all-namespaces")
    listening_id, clean_id = Three.inode(three.listening), Three.inode(three.clean)

    listening = by_id(doc, listening_id)
    assert listening["name"] == three.listening.name and listening["kind"] == "named"
    assert listening["netns"] == three.listening.name
    assert listening["kernel"]["ip_local_port_range"] == [20000, 20999]
    assert listening["sockets"]["by_protocol_state"]["tcp"]["LISTEN"] == 1
    (found,) = findings_in(doc, listening_id)
    assert found["kind"] == "listener_in_ephemeral_range" and found["port"] == three.port == 20005
    assert found["namespace"] == {"id": listening_id, "name": three.listening.name}
    assert found["key"] == f"listener_in_ephemeral_range:tcp:20005@{three.listening.name}"

    looped = by_id(doc, three.looped.inode)
    assert looped["kind"] == "process" and three.looped.proc.pid in looped["pids"]
    assert looped["kernel"]["ip_local_port_range"] == [40000, 40999]
    (loop,) = findings_in(doc, three.looped.inode)
    port = three.looped.info["port"]
    assert loop["kind"] == "self_connect" and loop["port"] == port and loop["severity"] == "critical"
    assert loop["namespace"] == {"id": three.looped.inode, "name": looped["name"]}
    assert loop["key"] == f"self_connect:tcp:127.0.0.1:{port}@{looped['key']}"
    assert {p["pid"] for p in loop["processes"]} == {three.looped.proc.pid}

    clean = by_id(doc, clean_id)
    assert clean["name"] == three.clean.name and clean["kernel"]["ip_local_port_range"] == [30000, 30999]
    assert clean["sockets"]["total"] == 0 and findings_in(doc, clean_id) == []
    assert clean["counts"] == {"critical": 0, "warning": 0, "info": 0, "ignored": 0}

    # the host's entry comes first, its keys unchanged, and no finding of the others leaks into it
    host = doc["namespaces"][0]
    assert host["kind"] == "host" and host["name"] == "host"
    assert all("@" not in f["key"] for f in findings_in(doc, host["id"]))
    assert not any(f["port"] in (20005, port) for f in findings_in(doc, host["id"]))
    assert doc["counts"]["critical"] >= 1 and len(doc["findings"]) == sum(
        sum(n["counts"][s] for s in ("critical", "warning", "info")) for n in doc["namespaces"])


def test_netns_selects_only_the_namespaces_it_names(three: Three) -> None:
    doc = scan_json("--netns", three.listening.name)
    assert [n["id"] for n in doc["namespaces"]] == [Three.inode(three.listening)]
    assert [f["kind"] for f in doc["findings"]] == ["listener_in_ephemeral_range"]
    assert doc["kernel"]["ip_local_port_range"] == [20000, 20999]

    by_pid = scan_json("--netns", str(three.looped.proc.pid), "--netns", f"/run/netns/{three.clean.name}")
    assert {n["id"] for n in by_pid["namespaces"]} == {three.looped.inode, Three.inode(three.clean)}
    assert [f["kind"] for f in by_pid["findings"]] == ["self_connect"]

    by_file = scan_json("--netns", f"/proc/{three.looped.proc.pid}/ns/net", "--netns", f"netns:{three.looped.inode}")
    assert [n["id"] for n in by_file["namespaces"]] == [three.looped.inode]


def test_an_unknown_netns_is_a_usage_error_naming_it() -> None:
    proc = portwatch("scan", "--netns", "no-such-namespace-here")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--netns no-such-namespace-here: no such network namespace" in proc.stderr


def test_the_table_groups_findings_by_namespace_and_counts_them(three: Three) -> None:
    proc = portwatch("scan", "--netns", three.listening.name, "--netns", three.clean.name)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "(2 network namespaces scanned," in text.splitlines()[0]
    sections = {part.split(" ", 1)[0]: part for part in text.split("\nnetwork namespace ")[1:]}
    assert set(sections) == {three.listening.name, three.clean.name}
    listening, clean = sections[three.listening.name], sections[three.clean.name]
    assert listening.startswith(f"{three.listening.name} (named)\n  ephemeral port range   20000-20999")
    assert "[listener_in_ephemeral_range]" in listening and "[listener_in_ephemeral_range]" not in clean
    assert "30000-30999" in clean


def test_a_service_named_for_a_namespace_applies_there_and_unnamed_ones_only_to_the_host(
        three: Three, tmp_path: Path) -> None:
    config = tmp_path / "portwatch.yaml"
    config.write_text("services:\n"
                      f"  - name: inside\n    port: 20005\n    namespace: {three.listening.name}\n"
                      "  - name: hostonly\n    port: 30500\n")
    doc = scan_json("--netns", three.listening.name, "--netns", three.clean.name, "--config", str(config))
    (found,) = doc["findings"]
    assert found["kind"] == "service_port_at_risk" and found["details"]["service"] == "inside"
    assert found["namespace"]["name"] == three.listening.name
    # the host's service is in the clean namespace's range, but does not live there
    assert findings_in(doc, Three.inode(three.clean)) == []


def test_reserve_all_prints_one_snippet_per_namespace_with_how_to_apply_it_there(three: Three) -> None:
    proc = portwatch("reserve", "--netns", three.listening.name, "--netns", three.clean.name)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "2 network namespaces scanned" in text
    assert (f"# apply: ip netns exec {three.listening.name} sysctl -w "
            "net.ipv4.ip_local_reserved_ports=20005") in text
    blocks = {block.split(" ", 1)[0]: block for block in text.split("# ==== network namespace ")[1:]}
    assert set(blocks) == {three.listening.name, three.clean.name}
    assert "net.ipv4.ip_local_reserved_ports = 20005" in blocks[three.listening.name]
    clean = blocks[three.clean.name]
    assert "nothing to add" in clean and "reserved_ports =" not in clean


def test_without_cap_sys_admin_all_namespaces_scans_the_own_one_with_one_note(netns: NetNS) -> None:
    doc = scan_json("-A", user=NOBODY, ns=netns)
    own = os.stat(f"/run/netns/{netns.name}").st_ino
    assert [n["id"] for n in doc["namespaces"]] == [own]
    assert doc["notes"] == [OWN_NAMESPACE_NOTE]


def test_how_to_apply_names_the_pods_sysctls_and_the_containers_runtime() -> None:
    pod = NamespaceInfo(inode=7, dev=4, kind=NamespaceKind.POD, name="5f3c-uid", pids=(42,), pod_uid="5f3c-uid",
                        container="a" * 64, runtime="containerd")
    lines = "\n".join(how_to_apply(pod, "8080,9000"))
    assert "securityContext:" in lines and "- name: net.ipv4.ip_local_reserved_ports" in lines
    assert 'value: "8080,9000"' in lines and "nsenter -t 42 -n sysctl -w" in lines
    assert "# apply: in the pod's spec (pod uid 5f3c-uid):" in lines  # its name unknown
    named = dataclasses.replace(pod, pod_namespace="default", pod_name="web-1")
    assert "# apply: in the pod's spec (pod default/web-1, uid 5f3c-uid):" in how_to_apply(named, "8080")
    box = NamespaceInfo(inode=8, dev=4, kind=NamespaceKind.CONTAINER, name="b" * 64, container="b" * 64,
                        runtime="libpod")
    (line,) = how_to_apply(box, "8080")
    assert "podman run --sysctl net.ipv4.ip_local_reserved_ports=8080" in line and "b" * 12 in line


def test_services_apply_by_namespace_name_container_prefix_or_to_the_host_when_unnamed() -> None:
    unnamed = Service(name="a", port=1)
    assert service_applies(unnamed, (), host=True) and not service_applies(unnamed, ("blue",), host=False)
    by_prefix = Service(name="b", port=1, namespace="0123456789ab")
    assert service_applies(by_prefix, ("0123456789abcdef" * 4,), host=False)
    assert not service_applies(Service(name="c", port=1, namespace="0123"), ("0123456789ab",), host=False)
    assert not service_applies(by_prefix, (), host=True)


def test_a_namespace_gone_before_it_is_read_is_skipped_without_a_note() -> None:
    found = discover_namespaces()
    own = next(ns for ns in found.namespaces if ns.own)
    gone = NamespaceInfo(inode=1, dev=own.dev, kind=NamespaceKind.PROCESS, name="gone", pids=(2**22 + 1,),
                         stable=False)
    result = run_namespaces_scan(Config(), Collector(make_source("auto")), Discovery((own, gone), own.inode))
    assert [r.snapshot.namespace for r in result.results] == [own]
    assert result.notes == () and result.skipped == ()


def test_a_pid_whose_namespace_has_ended_names_no_namespace(netns: NetNS) -> None:
    pid = netns.actor("listen", "--port", "20005")[0].pid
    netns.close()  # its process and namespace are gone: the pid names nothing now
    proc = portwatch("scan", "--netns", str(pid))
    assert proc.returncode == 2 and f"--netns {pid}: no such network namespace" in proc.stderr


def test_every_finding_carries_the_namespace_it_was_found_in(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "20000 20999")
    netns.actor("listen", "--port", "20005")
    discovery = discover_namespaces()
    (ns,) = select_namespaces(discovery, [netns.name])
    result = run_namespaces_scan(Config(), Collector(make_source("auto")), discovery, [ns])
    (scanned,) = result.results
    assert [f.kind.value for f in scanned.findings] == ["listener_in_ephemeral_range"]
    (f,) = scanned.findings
    assert f.namespace == ns and f.key.endswith(f"@{ns.key}")
