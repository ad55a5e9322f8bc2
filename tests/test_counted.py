"""A counted snapshot (only the sockets detectors look at built, the rest counted) gives what a full one gives.

Real sockets in a fresh network namespace: many connections to one
destination (an exhaustion finding), listeners inside the range, CLOSE_WAIT
sockets, a self-connect, a loop pair, a held service port. A script inside
reads the namespace three times with the netlink source, once full and
counted with each loop of the classifier (the C one, the default where it
was built, and the pure Python one), scans each with
:func:`portwatch.scan.scan_snapshot` and compares the JSON document, the
terminal report and the metrics figures.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from portwatch.collect.netlink import TCPDIAG_GETSOCK
from portwatch.collect.sources.netlink import InUse, NetlinkSource, sockstat_in_use
from portwatch.model import KernelSettings, PortRange
from tests.netns import NetNS
from tests.test_events import in_netns
from tests.test_netlink import diag, done

#: Runs inside the namespace: argv[1] is the config file. Prints one JSON line.
_COMPARE = r"""
import dataclasses, functools, json, sys
from portwatch.collect import Collector, netlink
from portwatch.collect.sources import netlink as source
from portwatch.collect.sources.netlink import NetlinkSource
from portwatch.config import load_config
from portwatch.output.json import to_json_document
from portwatch.output.metrics import scan_figures
from portwatch.output.report import render_text
from portwatch.scan import interest_ports, scan_snapshot

config = load_config(sys.argv[1])
results, sizes = [], []
c_loop = source.count_messages
python_loop = functools.partial(netlink.count_messages, accelerator=None)
for ports, loop in ((None, c_loop), (interest_ports(config), c_loop), (interest_ports(config), python_loop)):
    source.count_messages = loop
    collector = Collector(NetlinkSource())
    snap = dataclasses.replace(collector.snapshot(ports), taken_at=0.0)
    sizes.append((snap.counts is not None, len(snap.sockets), snap.socket_total))
    result = scan_snapshot(config, collector, snap, keyed=False)
    results.append(dataclasses.replace(result, duration=0.0))
full, counted, python = results
out = {
    "python_same": (to_json_document(python, "h") == to_json_document(counted, "h")
                    and render_text(python, "h", verbose=True) == render_text(counted, "h", verbose=True)
                    and scan_figures(python, 10, 100) == scan_figures(counted, 10, 100)),
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
    # the in-range listeners first: later connections could take their ports
    netns.actor("listen", "--proto", "tcp", "--port", "40058")
    netns.actor("listen", "--proto", "udp", "--port", "40057")
    netns.actor("hold-port", "--port", "40100", "--to", "127.0.0.1:2379", "--serve")
    netns.actor("loop-pair")
    netns.actor("self-connect")
    netns.actor("exhaust", "--to", "127.0.0.1:8080", "--count", "30",
                "--also", "127.0.0.1:8081", "--count-also", "3")
    netns.actor("close-wait", "--count", "4", "--port", "8082")
    res = netns.run([sys.executable, "-c", _COMPARE, str(cfg)], timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    (full_counted, full_kept, full_total), (counted, kept, total), python_sizes = out["sizes"]
    assert python_sizes == [counted, kept, total] and out["python_same"]
    assert not full_counted and counted
    assert full_kept == full_total == total
    assert kept < total  # the exhaust actor's connections were only counted
    assert out["json_same"] and out["text_same"] and out["figures_same"] and out["usage_same"]
    for kind in ("ephemeral_exhaustion", "close_wait_buildup", "self_connect", "loop_pair",
                 "listener_in_ephemeral_range", "port_taken"):
        assert kind in out["kinds"], out["kinds"]
    (exhausted,) = [f for f in out["doc"]["findings"] if f["kind"] == "ephemeral_exhaustion"]
    assert exhausted["details"]["used"] == 30 and exhausted["processes"]


class ScriptedDiag:
    """A NETLINK_SOCK_DIAG socket stand-in: every TCP dump answers ESTABLISHED sockets from the
    given local ports to 127.0.0.2:8080 (those its state mask asks for), every UDP dump nothing.
    Non-blocking (``settimeout(0)``) with nothing left it raises ``BlockingIOError``, as a socket does."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.answers: list[bytes] = []
        self.timeout: float | None = None

    def sendto(self, data: bytes, address: tuple[int, int]) -> int:
        msg_type, _flags, seq = struct.unpack_from("=HHI", data, 4)
        if msg_type == TCPDIAG_GETSOCK:
            (states,) = struct.unpack_from("=I", data, 16 + 4 + 48)  # after inet_diag_req's sockid
            msgs = [self._tcp(port, seq) for port in self.ports] if states & (1 << 1) else []
        else:
            msgs = []
        self.answers = [b"".join(msgs[i:i + 300]) for i in range(0, len(msgs), 300)]
        self.answers.append(done(seq=seq))
        return len(data)

    @staticmethod
    def _tcp(port: int, seq: int) -> bytes:
        msg = bytearray(diag(state=1, sport=port, dport=8080, inode=port, seq=seq))
        struct.pack_into("=H", msg, 4, TCPDIAG_GETSOCK)  # the answer type of the two-family request
        return bytes(msg)

    def recvfrom_into(self, view: memoryview, size: int, flags: int) -> tuple[int, tuple[int, int]]:
        if not self.answers and self.timeout == 0:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")  # non-blocking, nothing left
        answer = self.answers.pop(0)
        view[:len(answer)] = answer
        return len(answer), (0, 0)

    def settimeout(self, value: float) -> None:
        self.timeout = value

    def close(self) -> None:
        pass


@pytest.mark.parametrize("count", [40, 9000])  # few connected local ports, and many
def test_a_counted_read_knows_the_connected_local_ports_a_full_read_sees(count: int) -> None:
    # 258 and 513 are each other's bytes swapped (0x0102, 0x0201): the raw order must not mix them
    ports = [258, 513, 65535, *range(20000, 20000 + count)]
    settings = KernelSettings(port_range=PortRange(20000, 29999), reserved=frozenset(),
                              unprivileged_port_start=1024)

    def factory() -> Any:
        return ScriptedDiag(ports)

    full = NetlinkSource(socket_factory=factory).read()
    table, counts = NetlinkSource(socket_factory=factory).read_counted(settings)

    assert {s.local.port for s in full.sockets if s.remote is not None} == set(ports)
    assert counts.local_ports == set(ports) and counts.total == len(ports) == len(full.sockets)


class Refusing:
    """A netlink socket that fails the test if anything is asked of the kernel."""

    def sendto(self, data: bytes, address: Any) -> int:
        raise AssertionError("a dump was requested although sockstat said nothing is in use")

    def settimeout(self, value: float) -> None:
        pass

    def close(self) -> None:
        pass


SETTINGS = KernelSettings(port_range=PortRange(20000, 29999), reserved=frozenset(), unprivileged_port_start=1024)


def refusing() -> Any:
    return Refusing()


def test_a_namespace_with_no_socket_in_use_is_read_without_a_dump() -> None:
    table, counts = NetlinkSource(socket_factory=refusing, in_use=lambda: InUse(0, 0)).read_counted(SETTINGS)
    assert table.sockets == () and counts.total == 0


def test_only_the_protocol_with_sockets_in_use_is_dumped() -> None:
    ports = [20001, 20002]
    def scripted() -> Any:
        return ScriptedDiag(ports)

    table, counts = NetlinkSource(socket_factory=scripted, in_use=lambda: InUse(tcp=2, udp=0)).read_counted(SETTINGS)
    assert counts.total == 2 and counts.local_ports == set(ports)
    with pytest.raises(AssertionError, match="a dump was requested"):
        NetlinkSource(socket_factory=refusing, in_use=lambda: InUse(tcp=0, udp=1)).read_counted(SETTINGS)


def test_sockstat_counts_what_a_real_namespace_holds(netns: NetNS) -> None:
    def tally() -> InUse | None:
        return sockstat_in_use()

    assert in_netns(netns, tally) == InUse(0, 0)  # a new namespace: nothing

    def with_sockets() -> tuple[InUse | None, InUse | None, InUse | None]:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        listening = sockstat_in_use()
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        client.close()  # the active closer goes to TIME_WAIT
        accepted.close()
        server.close()
        udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        udp.bind(("::1", 0))
        with_udp = sockstat_in_use()
        udp.close()
        return listening, with_udp, sockstat_in_use()

    listening, with_udp, after = in_netns(netns, with_sockets)
    assert listening is not None and listening.tcp >= 1 and listening.udp == 0
    assert with_udp is not None and with_udp.udp == 1
    assert after is not None and after.tcp >= 1 and after.udp == 0  # the TIME_WAIT socket still counts


def test_unreadable_sockstat_means_nothing_is_skipped(tmp_path: Path) -> None:
    assert sockstat_in_use(str(tmp_path)) is None  # no such files
    (tmp_path / "sockstat").write_text("TCP: inuse many\n")
    (tmp_path / "sockstat6").write_text("TCP6: inuse 0\n")
    assert sockstat_in_use(str(tmp_path)) is None
