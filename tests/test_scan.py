"""The scan engine: source selection and fallback, lazy attribution, ignores, top destinations."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from portwatch.collect import Collector, PsutilSource
from portwatch.collect.processes import ProcessHandle
from portwatch.collect.sources import SOURCE_NAMES, SOURCES
from portwatch.collect.sources.netlink import NetlinkSource
from portwatch.config import Config, IgnoreRule
from portwatch.model import Destination, Kind, SocketTable
from portwatch.scan import FallbackSource, make_source, run_scan
from tests.builders import listen, tcp
from tests.netns import NetNS


class Table:
    """A socket source with a fixed table, counting reads."""

    name = "table"

    def __init__(self, table: SocketTable) -> None:
        self.table = table
        self.reads = 0

    def read(self) -> SocketTable:
        self.reads += 1
        return self.table


def no_sock_diag() -> socket.socket:
    """What socket() does on a kernel without NETLINK_SOCK_DIAG (the one thing we cannot make here)."""
    raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")


def test_fallback_to_psutil_is_logged_once() -> None:
    warnings: list[str] = []
    backup = Table(SocketTable((listen("0.0.0.0:45000"),)))
    source = FallbackSource(NetlinkSource(socket_factory=no_sock_diag), backup, warnings.append)
    assert source.name == "netlink"
    for _ in range(3):
        assert source.read() is backup.table
    assert source.name == "table" and backup.reads == 3
    assert len(warnings) == 1
    assert "netlink socket source unavailable" in warnings[0] and "using table from now on" in warnings[0]


def test_a_deferred_fallback_is_made_when_the_switch_names_it() -> None:
    # auto's psutil fallback is made so (a scan that never falls back does not import its module)
    from portwatch.collect.sources import _Deferred

    made: list[Table] = []
    backup = Table(SocketTable((listen("0.0.0.0:45000"),)))

    def build() -> Table:
        made.append(backup)
        return backup

    deferred = _Deferred(build)
    warnings: list[str] = []
    source = FallbackSource(NetlinkSource(socket_factory=no_sock_diag), deferred, warnings.append)
    assert source.name == "netlink" and made == []
    assert source.read() is backup.table and source.read() is backup.table
    assert made == [backup] and source.name == "table" and backup.reads == 2
    assert len(warnings) == 1 and "using table from now on" in warnings[0]


def test_fallback_passes_other_errors_through_without_switching() -> None:
    class Broken:
        name = "broken"

        def read(self) -> SocketTable:
            raise OSError(errno.EMFILE, "Too many open files")

    source = FallbackSource(Broken(), Table(SocketTable(())), lambda m: None)
    with pytest.raises(OSError):
        source.read()
    assert source.name == "broken"  # a passing failure does not switch sources


def test_make_source_builds_each_named_source_and_rejects_other_names() -> None:
    assert isinstance(make_source("psutil"), PsutilSource)
    assert isinstance(make_source("netlink"), NetlinkSource)
    auto = make_source("auto")
    assert isinstance(auto, FallbackSource) and auto.name == "netlink"
    with pytest.raises(ValueError, match="unknown socket source 'ss'"):
        make_source("ss")


def test_source_names_are_the_registrys_in_documented_order() -> None:
    assert SOURCE_NAMES == tuple(SOURCES) == ("auto", "netlink", "psutil")
    assert all(SOURCES[name].description for name in SOURCE_NAMES)


def test_naming_sources_imports_neither_psutil_nor_netlink() -> None:
    # A fresh interpreter: the registry, the collector and a psutil source that
    # has not read yet cost no psutil import and no netlink module.
    code = (
        "import sys\n"
        "from portwatch.collect import Collector, PsutilSource, SOURCE_NAMES\n"
        "from portwatch.collect.sources import make_source\n"
        "source = make_source('psutil')\n"
        "print(sorted(m for m in sys.modules if m == 'psutil' or 'netlink' in m))\n"
        "source.read()\n"
        "print('psutil' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "True"]


def test_run_scan_attributes_only_what_findings_involve(tmp_path: Path) -> None:
    # A fixture /proc: sysctls, and pid 7 holding the self-connected socket.
    sysctl = tmp_path / "sys" / "net" / "ipv4"
    sysctl.mkdir(parents=True)
    (sysctl / "ip_local_port_range").write_text("40000\t40999\n")
    (sysctl / "ip_local_reserved_ports").write_text("\n")
    (sysctl / "ip_unprivileged_port_start").write_text("1024\n")
    fd = tmp_path / "7" / "fd"
    fd.mkdir(parents=True)
    selfc = tcp("127.0.0.1:40002", "127.0.0.1:40002", inode=4242)
    ordinary = tcp("127.0.0.1:40500", "127.0.0.1:80", inode=4343)
    (fd / "3").symlink_to("socket:[4242]")
    (fd / "4").symlink_to("socket:[4343]")
    described: list[int] = []

    def factory(pid: int) -> ProcessHandle:  # a process that exited: describing it must not fail the scan
        import psutil
        described.append(pid)
        raise psutil.NoSuchProcess(pid)

    collector = Collector(Table(SocketTable((selfc, ordinary, listen("0.0.0.0:80")))), tmp_path,
                          clock=lambda: 1.0, process_factory=factory)
    ticks = iter([10.0, 10.25])
    result = run_scan(Config(), collector, clock=lambda: next(ticks))
    (f,) = result.findings
    assert f.kind is Kind.SELF_CONNECT and [p.pid for p in f.processes] == [7]
    assert f.processes[0].gone and "(exited)" in f.summary
    assert result.snapshot.owners == {4242: (7,)}  # the ordinary socket was never looked up
    assert described == [7]
    assert result.duration == 0.25
    # Both connected sockets use a port of the range, each towards its own destination.
    assert result.usage == {Destination("127.0.0.1", "127.0.0.1", 80): 1,
                            Destination("127.0.0.1", "127.0.0.1", 40002): 1}


def test_run_scan_applies_ignores_and_ranks_top_destinations(tmp_path: Path) -> None:
    sysctl = tmp_path / "sys" / "net" / "ipv4"
    sysctl.mkdir(parents=True)
    (sysctl / "ip_local_port_range").write_text("40000 40009\n")
    socks = [tcp(f"127.0.0.1:{40000 + i}", "127.0.0.1:8080") for i in range(9)]
    socks += [tcp(f"127.0.0.1:{40000 + i}", "127.0.0.1:8081") for i in range(2)]
    collector = Collector(Table(SocketTable(tuple(socks))), tmp_path)
    config = Config(ignore=(IgnoreRule(kind=Kind.RANGE_MISCONFIGURED),))
    result = run_scan(config, collector)
    assert [f.kind for f in result.findings] == [Kind.EPHEMERAL_EXHAUSTION]
    assert [f.kind for f in result.ignored] == [Kind.RANGE_MISCONFIGURED]
    top = result.top_destinations(5)
    assert [(str(d), n, r) for d, n, r in top] == [
        ("127.0.0.1 -> 127.0.0.1:8080", 9, 0.9), ("127.0.0.1 -> 127.0.0.1:8081", 2, 0.2)]
    assert result.top_destinations(1)[0][1] == 9 and result.top_destinations(0) == []


def test_ipv6_disabled_namespace_still_scans(netns: NetNS) -> None:
    netns.sysctl("net/ipv6/conf/all/disable_ipv6", "1")
    netns.sysctl("net/ipv6/conf/lo/disable_ipv6", "1")
    _proc, info = netns.actor("listen", "--port", "45000")
    out = netns.run([sys.executable, "-m", "portwatch", "scan", "--format", "json"])
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["source"] == "netlink"
    assert [f["key"] for f in doc["findings"]] == ["listener_in_ephemeral_range:tcp:45000"]
    assert doc["findings"][0]["processes"][0]["pid"] == info["pid"]
