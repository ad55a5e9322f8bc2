"""``portwatch watch --failures``: the failure capture for the watch's own run, on real system calls.

The watch runs in the host namespace with ``-A`` (the kernel sends audit
records only there); a process in a test namespace whose range has 10 ports
makes ten connections to one destination and an eleventh ``connect()`` that
really fails with EADDRNOTAVAIL. The watch prints ``connect_failed``
attributed to that namespace and exits 1. The :func:`~tests.auditkit.audit_host`
fixture removes the rules and restores the audit state, also on failure.
"""

from __future__ import annotations

import os

from tests.auditkit import AuditHost, audit_host, auditctl_rules
from tests.netns import NetNS
from tests.test_watch import lines, start_watch

__all__ = ["audit_host"]  # the fixture, imported to be found by pytest


def test_watch_failures_reports_an_eaddrnotavail_connect_in_another_namespace_and_exits_1(
        netns: NetNS, audit_host: AuditHost) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40009")
    watch = start_watch(["--failures", "-A", "--format", "json", "--duration", "8"], None, outside=netns)
    client, info = netns.actor("exhaust", "--to", "127.0.0.1:5001", "--count", "11", "--allow-exhaustion")
    assert info["exhausted"] == [{"to": ["127.0.0.1", 5001], "after": 10, "error": "EADDRNOTAVAIL"}]
    status, out, err = watch.finish()
    docs = [d for d in lines(out) if d["finding"]["kind"] == "connect_failed"]
    ours = [d for d in docs if client.pid in [p["pid"] for p in d["finding"]["processes"]]]
    assert ours, f"no connect_failed of pid {client.pid}: {out}\n{err}"
    doc = ours[0]
    finding = doc["finding"]
    inode = os.stat(f"/run/netns/{netns.name}").st_ino
    assert doc["event"] == "found" and finding["severity"] == "critical"
    assert finding["namespace"]["id"] == inode and finding["key"].endswith(f"@{netns.name}")
    assert "127.0.0.1:5001" in finding["summary"] and "EADDRNOTAVAIL" in finding["summary"]
    assert finding["details"]["exhaustion"].startswith("ephemeral_exhaustion:")  # linked: the scan saw it
    assert status == 1, err
    assert not any("key=portwatch" in rule for rule in auditctl_rules(audit_host.auditctl))  # removed at the end


def test_watch_failures_without_the_capabilities_says_so_once_and_goes_on(netns: NetNS) -> None:
    watch = start_watch(["--failures", "--format", "json", "--duration", "2"], netns)  # not the host namespace
    status, _out, err = watch.finish()
    notes = [line for line in (watch.head + err).splitlines() if "failure capture is off" in line]
    assert len(notes) == 1, watch.head + err
    assert status in (0, 1) and "portwatch watch:" in err  # the summary: the watch ran to its end
