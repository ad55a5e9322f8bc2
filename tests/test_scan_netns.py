"""End-to-end: real failures made in network namespaces, found by `portwatch scan` run as a subprocess.

Each test makes the situation for real with an actor (tests/actors.py) in a
fresh namespace, then runs ``python -m portwatch scan --format json`` inside
the same namespace and checks the document.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.netns import NetNS

TINY = "40000 40009"
PORTWATCH = [sys.executable, "-m", "portwatch"]
NOBODY = 65534


def scan(ns: NetNS, *args: str, config: Path | None = None, user: int | None = None) -> tuple[int, dict[str, Any]]:
    """Run ``portwatch scan --format json`` in ``ns``; return (exit status, document)."""
    cmd = [*PORTWATCH, "scan", "--format", "json", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    proc = ns.run(cmd)
    assert proc.returncode in (0, 1), f"exit {proc.returncode}: {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


def of_kind(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in doc["findings"] if f["kind"] == kind]


def pids(finding: dict[str, Any]) -> set[int]:
    return {p["pid"] for p in finding["processes"]}


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "portwatch.yaml"
    path.write_text(text)
    return path


def test_socket_connected_to_itself_is_critical_and_names_its_process(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", TINY)
    _proc, info = netns.actor("self-connect")
    port = info["port"]
    rc, doc = scan(netns)
    (f,) = of_kind(doc, "self_connect")
    assert f["severity"] == "critical" and f["port"] == port
    assert f["key"] == f"self_connect:tcp:127.0.0.1:{port}"
    assert pids(f) == {info["pid"]}
    assert f["processes"][0]["name"].startswith("python")
    sock = f["sockets"][0]
    assert sock["local"] == sock["remote"] == {"ip": "127.0.0.1", "port": port}
    assert rc == 1  # a critical finding fails the default --fail-on critical


def test_ipv6_socket_connected_to_itself_is_found_with_a_bracketed_key(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", TINY)
    _proc, info = netns.actor("self-connect", "--family", "6")
    _rc, doc = scan(netns)
    (f,) = of_kind(doc, "self_connect")
    assert f["key"] == f"self_connect:tcp:[::1]:{info['port']}" and pids(f) == {info["pid"]}


def test_two_sockets_connected_to_each_other_are_one_loop_pair(netns: NetNS) -> None:
    _proc, info = netns.actor("loop-pair")
    _rc, doc = scan(netns)
    (f,) = of_kind(doc, "loop_pair")
    ports = sorted(s["local"]["port"] for s in f["sockets"])
    assert ports == sorted(info["ports"])
    assert pids(f) == {info["pid"]}
    assert of_kind(doc, "self_connect") == []


def test_listener_in_the_ephemeral_range_is_found_until_its_port_is_reserved(netns: NetNS) -> None:
    _tcp, tinfo = netns.actor("listen", "--proto", "tcp", "--port", "40005")
    _udp, uinfo = netns.actor("listen", "--proto", "udp", "--port", "40006")
    _rc, doc = scan(netns)
    found = {f["key"]: f for f in of_kind(doc, "listener_in_ephemeral_range")}
    assert set(found) == {"listener_in_ephemeral_range:tcp:40005", "listener_in_ephemeral_range:udp:40006"}
    assert pids(found["listener_in_ephemeral_range:tcp:40005"]) == {tinfo["pid"]}
    assert pids(found["listener_in_ephemeral_range:udp:40006"]) == {uinfo["pid"]}
    assert "net.ipv4.ip_local_reserved_ports=40005" in found["listener_in_ephemeral_range:tcp:40005"]["remediation"]

    # `portwatch reserve` proposes exactly those ports ...
    out = netns.run([*PORTWATCH, "reserve"], check=True).stdout
    assert "net.ipv4.ip_local_reserved_ports = 40005-40006" in out
    # ... and once they are reserved, the findings are gone.
    netns.sysctl("net/ipv4/ip_local_reserved_ports", "40005-40006")
    rc, doc = scan(netns, "--fail-on", "info")
    assert doc["findings"] == [] and rc == 0
    assert doc["kernel"]["ip_local_reserved_ports"] == "40005-40006"


def test_port_taken_names_the_holder(netns: NetNS, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "services:\n  - name: api\n    port: 40100\n")
    _proc, info = netns.actor("hold-port", "--port", "40100", "--to", "127.0.0.1:2379", "--serve")
    rc, doc = scan(netns, config=cfg)
    (f,) = of_kind(doc, "port_taken")
    assert f["key"] == "port_taken:tcp:40100" and f["severity"] == "critical"
    assert pids(f) == {info["pid"]}
    assert "'api'" in f["summary"] and f"[{info['pid']}]" in f["summary"]
    # the declared in-range port is also at risk, by design, while nothing is wrong yet
    assert [x["key"] for x in of_kind(doc, "service_port_at_risk")] == ["service_port_at_risk:tcp:40100"]
    assert rc == 1


def test_ports_used_towards_one_destination_warn_of_exhaustion(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", TINY)
    _proc, info = netns.actor("exhaust", "--to", "127.0.0.1:8080", "--count", "9",
                              "--also", "127.0.0.1:8081", "--count-also", "3")
    _rc, doc = scan(netns)
    found = of_kind(doc, "ephemeral_exhaustion")
    assert [f["key"] for f in found] == ["ephemeral_exhaustion:127.0.0.1->127.0.0.1:8080"]
    (f,) = found
    assert f["details"]["used"] == 9 and f["details"]["usable"] == 10
    assert f["details"]["ratio"] == pytest.approx(0.9)
    assert f["severity"] == "warning"
    assert pids(f) == {info["pid"]}
    # the tiny range is itself worth an info finding
    assert [x["details"]["problem"] for x in of_kind(doc, "range_misconfigured")] == ["small"]


def test_close_wait_sockets_above_the_threshold_are_a_buildup_of_their_process(netns: NetNS, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "thresholds:\n  close_wait: 3\n")
    _proc, info = netns.actor("close-wait", "--count", "5")
    _rc, doc = scan(netns, config=cfg)
    (f,) = of_kind(doc, "close_wait_buildup")
    assert f["details"]["count"] == 5 and f["details"]["threshold"] == 3
    assert pids(f) == {info["pid"]}
    assert f["key"] == f"close_wait_buildup:pid:{info['pid']}"


def test_clean_namespace_has_no_findings(netns: NetNS) -> None:
    _proc, _info = netns.actor("traffic")
    rc, doc = scan(netns, "--fail-on", "info")
    assert rc == 0
    assert doc["findings"] == []
    tcp_states = doc["sockets"]["by_protocol_state"]["tcp"]
    assert tcp_states.get("ESTABLISHED", 0) >= 2 and tcp_states.get("LISTEN", 0) >= 1
    assert tcp_states.get("TIME_WAIT", 0) >= 1


def test_scan_without_namespace_options_reads_its_own_namespace_only_and_says_which(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", TINY)
    _proc, info = netns.actor("self-connect")
    _rc, doc = scan(netns)
    own = os.stat(f"/run/netns/{netns.name}").st_ino
    (entry,) = doc["namespaces"]
    assert entry["id"] == own and entry["kernel"] == doc["kernel"] and entry["sockets"] == doc["sockets"]
    (f,) = of_kind(doc, "self_connect")
    # keys are those of a scan before namespaces: no namespace suffix, even outside the host's
    assert f["key"] == f"self_connect:tcp:127.0.0.1:{info['port']}"
    assert f["namespace"] == {"id": own, "name": entry["name"]}
    assert doc["notes"] == []


def test_table_report_shows_the_range_findings_and_fixes(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", TINY)
    _proc, info = netns.actor("self-connect")
    proc = netns.run([*PORTWATCH, "scan"])
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "ephemeral port range   40000-40009 (10 ports, 10 usable)" in out
    assert "CRITICAL (1)" in out and "[self_connect]" in out and f"[{info['pid']}]" in out
    assert "INFO (1)" in out and "fix:" in out


def test_without_root_attribution_is_partial(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", TINY)
    _proc, info = netns.actor("self-connect")
    _rc, doc = scan(netns, user=NOBODY)
    (f,) = of_kind(doc, "self_connect")
    assert f["processes"] == [] and "owner unknown" in f["summary"]
    assert len([n for n in doc["notes"] if n.startswith("attribution is partial")]) == 1


def test_bad_config_exit_2_lists_every_error(netns: NetNS, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "services:\n  - name: a\n    port: 70000\ninterval: fast\nbogus: 1\n")
    proc = netns.run([*PORTWATCH, "scan", "--config", str(cfg)])
    assert proc.returncode == 2 and proc.stdout == ""
    assert "services[0].port: must be 1..65535, got 70000" in proc.stderr
    assert "interval:" in proc.stderr and "bogus" in proc.stderr
    assert "Traceback" not in proc.stderr
    check = netns.run([*PORTWATCH, "check-config", str(cfg)])
    assert check.returncode == 2 and check.stderr == proc.stderr
    missing = netns.run([*PORTWATCH, "scan", "--config", str(tmp_path / "nope.yaml")])
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr and "Traceback" not in missing.stderr


def test_reserve_leaves_out_what_the_config_ignores(netns: NetNS, tmp_path: Path) -> None:
    # A UDP client's unconnected socket on a random in-range port looks like a
    # bound UDP service; ignored by process, it must not be proposed for reservation.
    _udp, _ = netns.actor("listen", "--proto", "udp", "--port", "45344")
    _tcp, tinfo = netns.actor("listen", "--proto", "tcp", "--port", "45000")
    cfg = write_config(tmp_path, "ignore:\n  - {kind: listener_in_ephemeral_range, port: 45344}\n"
                                 "services:\n  - {name: api, port: 45100}\n")
    out = netns.run([*PORTWATCH, "reserve", "--config", str(cfg)], check=True).stdout
    assert "net.ipv4.ip_local_reserved_ports = 45000,45100" in out
    assert "#   45000: tcp listener 0.0.0.0:45000 (python" in out and f"[{tinfo['pid']}]" in out
    assert "#   45100: declared service 'api' (tcp)" in out
    assert "45344" not in out


def test_unreadable_kernel_settings_exit_3_naming_the_file(netns: NetNS) -> None:
    # Hide the sysctls behind an empty tmpfs in a private mount namespace.
    proc = netns.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                      "mount -t tmpfs none /proc/sys/net/ipv4 && exec \"$@\"", "sh",
                      *PORTWATCH, "scan"])
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("portwatch: cannot scan: /proc/sys/net/ipv4/ip_local_port_range")
    assert "Traceback" not in proc.stderr


MANY_LISTENERS = r"""
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
socks = []
for port in range(40000, 43000):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    socks.append(s)
print("READY", flush=True)
sys.stdin.read()
"""


def test_three_thousand_listeners_of_one_process_are_one_entry_with_their_port_set(netns: NetNS) -> None:
    proc = netns.popen([sys.executable, "-c", MANY_LISTENERS])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    table = netns.run([*PORTWATCH, "scan", "--fail-on", "never"], timeout=120)
    assert table.returncode == 0, table.stderr
    entries = [line for line in table.stdout.splitlines() if "[listener_in_ephemeral_range]" in line]
    assert len(entries) == 1, table.stdout[:3000]
    assert "3000 findings on ports 40000-42999/tcp" in entries[0]
    assert "ip_local_reserved_ports=40000-42999" in table.stdout  # one fix for the whole set
    assert len(table.stdout.splitlines()) < 40  # once 15,009 lines
    verbose = netns.run([*PORTWATCH, "scan", "--fail-on", "never", "--verbose"], timeout=120)
    assert sum("[listener_in_ephemeral_range]" in line for line in verbose.stdout.splitlines()) == 3000
    code, doc = scan(netns)
    assert len(of_kind(doc, "listener_in_ephemeral_range")) == 3000  # JSON keeps every finding
