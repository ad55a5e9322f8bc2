"""``--web.systemd-socket``: serving on the sockets systemd passes (``LISTEN_FDS``), with systemd-socket-activate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from portwatch.config import DEFAULT_LISTEN_ADDRESS
from portwatch.web import WebError
from portwatch.web.activation import listen_fds
from tests.conftest import require_binary
from tests.netns import REPO, NetNS
from tests.nspawn import Container
from tests.test_systemd import (CONFIG_PATH, DAEMON_CONFIG, UNIT, VENV_PYTHON, dropin,  # noqa: F401
                                unit_container)

PORTWATCH = REPO / ".venv" / "bin" / "portwatch"
FETCH = ("import sys, time, urllib.request\n"
         "with urllib.request.urlopen(sys.argv[1], timeout=30) as r:\n"
         "    sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n")


def test_run_serves_on_the_socket_systemd_socket_activate_passes(netns: NetNS, tmp_path: Path) -> None:
    activate = require_binary("systemd-socket-activate")
    config = tmp_path / "portwatch.yaml"
    config.write_text(f"namespaces: {{scan: own}}\nstate_directory: {tmp_path / 'state'}\nweb:\n  listen_address: 127.0.0.1:1\n")
    stderr = tmp_path / "stderr"
    with open(stderr, "w") as err:
        proc = netns.popen([activate, "-l", "127.0.0.1:9731", str(PORTWATCH), "run", "--config", str(config),
                            "--web.systemd-socket"], stdout=subprocess.DEVNULL, stderr=err)
        # systemd-socket-activate has bound the port before it starts portwatch; the first
        # connection waits in its backlog until portwatch serves it.
        result = netns.run([sys.executable, "-c", FETCH, "http://127.0.0.1:9731/metrics"], timeout=60)
        assert result.returncode == 0, result.stderr + stderr.read_text()
        status, _, body = result.stdout.partition("\n")
        assert status == "200"
        assert "portwatch_scans_total" in body
        assert proc.poll() is None
        netns.stop(proc)
    log = stderr.read_text()
    assert "metrics on 127.0.0.1:9731" in log  # systemd's socket ...
    assert "127.0.0.1:1/" not in log  # ... not web.listen_address


def test_run_with_systemd_socket_but_no_sockets_fails_saying_why(netns: NetNS, tmp_path: Path) -> None:
    config = tmp_path / "portwatch.yaml"
    config.write_text(f"namespaces: {{scan: own}}\nstate_directory: {tmp_path / 'state'}\n")
    env = {k: v for k, v in netns.env().items() if not k.startswith("LISTEN_")}
    result = netns.run([str(PORTWATCH), "run", "--config", str(config), "--web.systemd-socket"], env=env)
    assert result.returncode != 0
    assert "--web.systemd-socket: no sockets passed" in result.stderr


def test_listen_fds_refuses_sockets_meant_for_another_process() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "portwatch.socket"}
    with pytest.raises(WebError) as e:
        listen_fds(env)
    assert "no sockets passed" in str(e.value)
    assert env == {}  # unset either way, as sd_listen_fds(unset_environment=1) does


def test_the_socket_unit_listens_on_the_default_port() -> None:
    unit = (REPO / "systemd" / "portwatch.socket").read_text()
    port = DEFAULT_LISTEN_ADDRESS.rpartition(":")[2]
    assert f"\nListenStream={port}\n" in unit
    assert "[Install]\nWantedBy=sockets.target" in unit


SOCKET_DROPIN = """\
[Unit]
Requires=portwatch.socket
After=portwatch.socket

[Service]
ExecStart=
ExecStart=/opt/portwatch/bin/portwatch run --config /etc/portwatch/portwatch.yaml --web.systemd-socket
"""


@pytest.mark.slow
def test_portwatch_socket_starts_the_service_on_the_first_scrape(unit_container: Container) -> None:
    c = unit_container
    c.write_file(CONFIG_PATH, DAEMON_CONFIG)
    c.write_file("/etc/systemd/system/portwatch.socket", (REPO / "systemd" / "portwatch.socket").read_text())
    dropin(c, "20-socket.conf", SOCKET_DROPIN)  # the drop-in docs/web.md shows
    r = c.systemctl("start", "portwatch.socket", timeout=60)
    assert r.returncode == 0, r.stderr + c.diagnostics(["portwatch.socket"])
    assert c.unit_state(UNIT)[0] == "inactive"  # nothing started it yet
    code = ("import urllib.request\n"
            "with urllib.request.urlopen('http://127.0.0.1:9731/metrics', timeout=120) as r:\n"
            "    print(r.status, 'portwatch_scans_total' in r.read().decode())\n")
    result = c.run([str(VENV_PYTHON), "-c", code], timeout=150)
    assert result.stdout.strip() == "200 True", result.stderr + c.diagnostics([UNIT, "portwatch.socket"])
    assert c.unit_state(UNIT) == ("active", "running"), c.diagnostics([UNIT])
    assert c.unit_state("portwatch.socket")[0] == "active"
