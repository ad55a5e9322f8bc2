"""End to end in a network namespace: a REAL self-connect (tests/actors.py), found by real
scans, alerted to a REAL Alertmanager in the same namespace, resolved there once the socket
is closed. Also ``portwatch scan --alerts-dry-run`` on the same situation, and the daemon
(``portwatch run``) doing the same once it drives portwatch.alerts.

The engine-level test runs this module as a driver inside the namespace
(``python -m tests.test_alerts_netns CONFIG HOST``): it scans every
:data:`DRIVER_INTERVAL` seconds with ``portwatch.scan.run_scan`` and hands the
findings to :class:`portwatch.alerts.Alerting`, until SIGTERM.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from tests.alertmanager import WAIT, Alertmanager, wait_for
from tests.netns import REPO, NetNS

pytestmark = pytest.mark.netns

TINY = "40000 40009"
AM_PORT = 9093
METRICS_PORT = 9731
DRIVER_INTERVAL = 0.5
PORTWATCH = REPO / ".venv" / "bin" / "portwatch"
FETCH = ("import sys, urllib.request\n"
         "try:\n"
         "    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:\n"
         "        sys.stdout.write(r.read().decode())\n"
         "except OSError as e:\n"
         "    sys.exit(1)\n")
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM", "LISTEN_FDS")


def ns_fetch(ns: NetNS) -> Callable[[str], bytes | None]:
    """GET a URL from inside ``ns``: the body, or None."""
    def fetch(url: str) -> bytes | None:
        res = ns.run([sys.executable, "-c", FETCH, url], timeout=30)
        return res.stdout.encode() if res.returncode == 0 else None
    return fetch


def config_text(state_dir: Path, extra: str = "") -> str:
    return f"""\
interval: 1s
state_directory: {state_dir}
{extra}alerts:
  sinks:
    am:
      type: alertmanager
      urls: ["http://127.0.0.1:{AM_PORT}"]
      resend_interval: 1h
      retry_initial_delay: 100ms
      retry_max_delay: 1s
  rules:
    - name: page
      kind: self_connect
      sinks: [am]
"""


def start_alertmanager(ns: NetNS, tmp_path: Path) -> Alertmanager:
    return Alertmanager(tmp_path / "am", port=AM_PORT, popen=ns.popen, fetch=ns_fetch(ns)).start()


def check_firing(am: Alertmanager, port: int, pid: int, instance: str) -> dict[str, Any]:
    key = f"self_connect:tcp:127.0.0.1:{port}"
    (alert,) = wait_for(f"the self-connect on port {port} in Alertmanager",
                        lambda: am.find(alertname="PortwatchSelfConnect") or None,
                        explain=lambda: f"alerts: {am.alerts()}")
    assert alert["labels"] == {"alertname": "PortwatchSelfConnect", "severity": "critical", "kind": "self_connect",
                               "instance": instance, "port": str(port), "key": key, "rule": "page"}
    ann = alert["annotations"]
    assert f"127.0.0.1:{port} is connected to itself" in ann["summary"]
    assert "start the server before its clients" in ann["remediation"]
    assert f"[{pid}]" in ann["processes"]
    assert alert["status"]["state"] == "active"
    return alert


def wait_resolved(am: Alertmanager) -> None:
    # A firing alert's endsAt is 4 h ahead (resend_interval 1h): only portwatch's resolution removes it now.
    wait_for("the alert to be resolved in Alertmanager", lambda: am.find(alertname="PortwatchSelfConnect") == [],
             explain=lambda: f"alerts: {am.alerts()}")


@contextmanager
def stops_cleanly(proc: subprocess.Popen[str], output: Path, state: Path) -> Iterator[None]:
    """Run the body, then SIGTERM ``proc`` (also when the body fails) and check a clean stop.

    A clean stop: exit 0 (else ``output`` is shown) and no alert left firing or pending in
    ``state``'s alerts.json.
    """
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(WAIT)
    assert code == 0, output.read_text()
    saved = json.loads((state / "alerts.json").read_text())
    assert saved["alerts"] == [] and saved["pending"] == []


def test_real_self_connect_reaches_alertmanager_and_resolves(netns: NetNS, tmp_path: Path) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", TINY)
    am = start_alertmanager(netns, tmp_path)
    actor, info = netns.actor("self-connect")
    config = tmp_path / "portwatch.yaml"
    config.write_text(config_text(tmp_path / "state"))
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = netns.popen([sys.executable, "-m", "tests.test_alerts_netns", str(config), "e2e-host"],
                             stdout=out, stderr=subprocess.STDOUT)
    with stops_cleanly(driver, log, tmp_path / "state"):
        check_firing(am, info["port"], info["pid"], "e2e-host")
        netns.stop(actor)
        wait_resolved(am)
    am.stop()


def test_alerts_dry_run_on_a_real_self_connect(netns: NetNS, tmp_path: Path) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", TINY)
    _actor, info = netns.actor("self-connect")
    config = tmp_path / "portwatch.yaml"
    config.write_text(config_text(tmp_path / "state"))
    res = netns.run([str(PORTWATCH), "scan", "--alerts-dry-run", "--fail-on", "never", "--config", str(config)])
    assert res.returncode == 0, res.stderr
    key = f"self_connect:tcp:127.0.0.1:{info['port']}"
    assert "Alerts (dry run: nothing sent):" in res.stdout
    assert f"critical {key}: rule 'page' fires now as critical -> am" in res.stdout
    res = netns.run([str(PORTWATCH), "scan", "--alerts-dry-run", "--format", "json", "--fail-on", "never",
                     "--config", str(config)])
    entries = json.loads(res.stdout)["alerts_dry_run"]
    assert {"finding": key, "kind": "self_connect", "finding_severity": "critical", "summary": entries[0]["summary"],
            "rule": "page", "severity": "critical", "sinks": ["am"], "state": "fires now",
            "fires_in_seconds": None} in entries
    assert not (tmp_path / "state").exists()  # a dry run writes nothing


def test_daemon_sends_a_real_self_connect_to_alertmanager(netns: NetNS, tmp_path: Path) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", TINY)
    am = start_alertmanager(netns, tmp_path)
    actor, info = netns.actor("self-connect")
    state = tmp_path / "state"
    config = tmp_path / "portwatch.yaml"
    config.write_text(config_text(state, extra="namespaces:\n  scan: own\n"))
    stderr = tmp_path / "daemon.stderr"
    env = {k: v for k, v in netns.env().items() if k not in SYSTEMD_ENV}
    with open(stderr, "w") as err:
        daemon = netns.popen([str(PORTWATCH), "run", "--config", str(config), "--listen-address",
                              f"127.0.0.1:{METRICS_PORT}"], env=env, stdout=subprocess.DEVNULL, stderr=err)
    fetch = ns_fetch(netns)
    with stops_cleanly(daemon, stderr, state):
        check_firing(am, info["port"], info["pid"], socket.gethostname())

        def sent() -> bool:
            body = fetch(f"http://127.0.0.1:{METRICS_PORT}/metrics")
            return body is not None and 'portwatch_alerts_sent_total{sink="am"} 1.0' in body.decode()

        wait_for("portwatch_alerts_sent_total{sink=\"am\"} 1 on /metrics", sent,
                 explain=lambda: stderr.read_text())
        netns.stop(actor)
        wait_resolved(am)
    am.stop()


# --------------------------------------------------------------------------- the driver


def drive(argv: Sequence[str]) -> int:
    """Scan every DRIVER_INTERVAL s and feed the findings to Alerting until SIGTERM; 0 on a clean stop."""
    from prometheus_client import CollectorRegistry

    from portwatch.alerts import Alerting
    from portwatch.collect import Collector
    from portwatch.config import load_config
    from portwatch.scan import make_source, run_scan

    config_path, host = Path(argv[0]), argv[1]
    config = load_config(config_path)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    alerting = Alerting(config.alerts, config.state_directory, host, CollectorRegistry(), journal=lambda: None)
    alerting.start()
    collector = Collector(make_source(config.source))
    try:
        while not stop.is_set():
            result = run_scan(config, collector)
            alerting.process(result.findings, time.time())
            print(json.dumps([f.key for f in result.findings]), flush=True)
            stop.wait(DRIVER_INTERVAL)
    finally:
        alerting.stop(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(drive(sys.argv[1:]))
