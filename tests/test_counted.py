"""A counted snapshot (only the sockets detectors look at built, the rest counted) gives what a full one gives.

Real sockets in a fresh network namespace: many connections to one
destination (an exhaustion finding), listeners inside the range, CLOSE_WAIT
sockets, a self-connect, a loop pair, a held service port. A script inside
reads the namespace twice with the netlink source, once full and once
counted, scans both with :func:`portwatch.scan.scan_snapshot` and compares
the JSON document, the terminal report and the metrics figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.netns import NetNS

#: Runs inside the namespace: argv[1] is the config file. Prints one JSON line.
_COMPARE = r"""
import dataclasses, json, sys
from portwatch.collect import Collector
from portwatch.collect.sources.netlink import NetlinkSource
from portwatch.config import load_config
from portwatch.output.json import to_json_document
from portwatch.output.metrics import scan_figures
from portwatch.output.report import render_text
from portwatch.scan import interest_ports, scan_snapshot

config = load_config(sys.argv[1])
results, sizes = [], []
for ports in (None, interest_ports(config)):
    collector = Collector(NetlinkSource())
    snap = dataclasses.replace(collector.snapshot(ports), taken_at=0.0)
    sizes.append((snap.counts is not None, len(snap.sockets), snap.socket_total))
    result = scan_snapshot(config, collector, snap, keyed=False)
    results.append(dataclasses.replace(result, duration=0.0))
full, counted = results
out = {
    "sizes": sizes,
    "json_same": to_json_document(full, "h") == to_json_document(counted, "h"),
    "text_same": render_text(full, "h", verbose=True) == render_text(counted, "h", verbose=True),
    "figures_same": scan_figures(full, 10, 100) == scan_figures(counted, 10, 100),
    "usage_same": dict(full.usage) == dict(counted.usage),
    "kinds": sorted(f.kind.value for f in counted.findings),
    "doc": to_json_document(counted, "h"),
}
print(json.dumps(out))
"""


def test_counted_and_full_snapshots_give_the_same_findings_json_report_and_metrics(
        netns: NetNS, tmp_path: Path) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40059")
    cfg = tmp_path / "portwatch.yml"
    cfg.write_text("services:\n  - name: api\n    port: 40100\n"
                   "thresholds:\n  close_wait: 2\n  exhaustion_warning: 0.4\n  exhaustion_critical: 0.9\n")
    netns.actor("exhaust", "--to", "127.0.0.1:8080", "--count", "30",
                "--also", "127.0.0.1:8081", "--count-also", "3")
    netns.actor("close-wait", "--count", "4")
    netns.actor("listen", "--proto", "tcp", "--port", "40058")
    netns.actor("listen", "--proto", "udp", "--port", "40057")
    netns.actor("hold-port", "--port", "40100", "--to", "127.0.0.1:2379", "--serve")
    netns.actor("loop-pair")
    netns.actor("self-connect")
    res = netns.run([sys.executable, "-c", _COMPARE, str(cfg)], timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    (full_counted, full_kept, full_total), (counted, kept, total) = out["sizes"]
    assert not full_counted and counted
    assert full_kept == full_total == total
    assert kept < total  # the exhaust actor's connections were only counted
    assert out["json_same"] and out["text_same"] and out["figures_same"] and out["usage_same"]
    for kind in ("ephemeral_exhaustion", "close_wait_buildup", "self_connect", "loop_pair",
                 "listener_in_ephemeral_range", "port_taken"):
        assert kind in out["kinds"], out["kinds"]
    (exhausted,) = [f for f in out["doc"]["findings"] if f["kind"] == "ephemeral_exhaustion"]
    assert exhausted["details"]["used"] == 30 and exhausted["processes"]
