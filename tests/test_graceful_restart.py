"""A graceful restart is no false alarm: a service's own draining connections vs a foreign holder of its port.

Both cases are made for real in a fresh namespace, scanned with ``portwatch
scan`` (as :mod:`tests.test_scan_netns` does), and the verdict is checked
against what the kernel says: a new socket with SO_REUSEADDR binds the port
(the service could restart) or fails with EADDRINUSE (it could not).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.netns import NetNS
from tests.test_scan_netns import of_kind, pids, scan, write_config

PORT = 8080  # outside the ephemeral range: no service_port_at_risk finding beside the one under test
NAME = "drainsrv"

#: A server that sets SO_REUSEADDR, accepts one connection (from itself, on a client port), closes its
#: listener and keeps the accepted connection open, as a server draining before its restart does.
DRAINING_SERVER = r"""
import ctypes, json, socket, sys
ctypes.CDLL(None, use_errno=True).prctl(15, sys.argv[2].encode(), 0, 0, 0)  # PR_SET_NAME
port = int(sys.argv[1])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port))
listener.listen(8)
client = socket.create_connection(("127.0.0.1", port))
accepted, _peer = listener.accept()
listener.close()
print("READY " + json.dumps({"accepted": list(accepted.getsockname()), "peer": list(accepted.getpeername())}),
      flush=True)
sys.stdin.read()
"""

#: What a restarting service does: a new socket, SO_REUSEADDR, bind() the wildcard address, listen().
RESTART_BIND = r"""
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.listen(1)
    print("ok")
except OSError as exc:
    print(errno.errorcode.get(exc.errno or 0, str(exc.errno)))
"""


def start_draining_server(ns: NetNS) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start :data:`DRAINING_SERVER` in ``ns``; return it and what it printed once its listener is closed."""
    proc = ns.popen([sys.executable, "-c", DRAINING_SERVER, str(PORT), NAME])
    assert proc.stdout is not None
    # it never blocks before READY (it accepts its own connection); if it dies, readline() returns ""
    line = proc.stdout.readline()
    assert line.startswith("READY "), f"draining server failed (exit {proc.poll()}): {line!r}"
    info: dict[str, Any] = json.loads(line[len("READY "):])
    info["pid"] = proc.pid
    return proc, info


def restart_bind(ns: NetNS) -> str:
    """What a new SO_REUSEADDR socket's bind() of :data:`PORT` gets in ``ns``: ``ok`` or the errno name."""
    proc = ns.run([sys.executable, "-c", RESTART_BIND, str(PORT)], check=True)
    return proc.stdout.strip()


def port_taken(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in of_kind(doc, "port_taken") if f["port"] == PORT]


def test_own_draining_connections_are_no_critical_and_a_reuseaddr_bind_succeeds(netns: NetNS, tmp_path: Path) -> None:
    _proc, info = start_draining_server(netns)
    assert info["accepted"][1] == PORT and info["peer"][1] != PORT
    # the kernel agrees that the service can restart: its own accepted connection does not block a bind
    assert restart_bind(netns) == "ok"
    cfg = write_config(tmp_path, f"services:\n  - name: web\n    port: {PORT}\n    process: {NAME}\n")
    rc, doc = scan(netns, config=cfg)
    assert [f for f in doc["findings"] if f["severity"] == "critical"] == []
    assert rc == 0  # `scan` fails on critical findings by default: a graceful restart does not fail it
    (f,) = port_taken(doc)
    assert f["severity"] == "info" and f["details"]["draining"] is True
    assert "its own draining connections hold it" in f["summary"]
    assert "a restart with SO_REUSEADDR can bind it, one without cannot" in f["summary"]
    assert "EADDRINUSE" not in f["summary"]
    assert f"{NAME}[" in f["summary"]
    # the scan's verdict held: the bind still succeeds afterwards
    assert restart_bind(netns) == "ok"


def test_without_an_identity_the_same_holders_stay_critical(netns: NetNS, tmp_path: Path) -> None:
    _proc, _info = start_draining_server(netns)
    cfg = write_config(tmp_path, f"services:\n  - name: web\n    port: {PORT}\n")
    _rc, doc = scan(netns, config=cfg)
    (f,) = port_taken(doc)
    assert f["severity"] == "critical"  # nothing says whose connections these are: not assumed harmless


def test_foreign_outgoing_connection_on_the_port_is_critical_and_a_reuseaddr_bind_fails(
        netns: NetNS, tmp_path: Path) -> None:
    _proc, info = netns.actor("hold-port", "--port", str(PORT), "--to", "127.0.0.1:2379", "--serve")
    assert info["service_bind"] == "EADDRINUSE"
    # proven from a fresh process too: a restart of the service could not bind its port
    assert restart_bind(netns) == "EADDRINUSE"
    cfg = write_config(tmp_path, f"services:\n  - name: web\n    port: {PORT}\n    process: {NAME}\n")
    rc, doc = scan(netns, config=cfg)
    (f,) = port_taken(doc)
    assert f["severity"] == "critical" and "draining" not in f["details"]
    assert pids(f) == {info["pid"]}
    assert "fail with EADDRINUSE, even with SO_REUSEADDR" in f["summary"]
    assert rc == 1
