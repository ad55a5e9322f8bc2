"""Network namespaces on the host: discovery and naming, entering one in a thread, vanishing ones.

Real namespaces made by the tests: ``ip netns add`` ones (the ``netns``
fixture and :class:`tests.netns.NetNS`) and unnamed ones held by an
``unshare -n`` process; every one is removed after its test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from portwatch.collect import (
    OWN_NAMESPACE_NOTE,
    Collector,
    NamespaceVanished,
    discover_namespaces,
    run_in_namespace,
)
from portwatch.collect.kernel import read_kernel_settings
from portwatch.collect.namespaces import NamespaceThread
from portwatch.collect.sources.netlink import NetlinkSource
from portwatch.collect.sources.procnet import ProcNetSource, parse_proc_net
from portwatch.model import (
    Endpoint,
    Family,
    NamespaceInfo,
    NamespaceKind,
    PortRange,
    Protocol,
    Socket,
    SocketState,
    SourceUnavailable,
)
from tests.conftest import require
from tests.netns import NetNS, netns_available
from tests.test_collect import run_as_nobody


def thread_netns() -> int:
    """The inode of the calling thread's network namespace."""
    return os.stat("/proc/thread-self/ns/net").st_ino


class Unshared:
    """A ``sleep`` in a new unnamed network namespace (``unshare -n``), killed by :meth:`close`."""

    def __init__(self) -> None:
        require(shutil.which("unshare") is not None, "needs unshare (util-linux)")
        own = os.stat("/proc/self/ns/net").st_ino
        self.proc = subprocess.Popen(["unshare", "-n", "sleep", "600"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # unshare execs sleep in place once it has unshared
            try:
                if os.stat(f"/proc/{self.proc.pid}/ns/net").st_ino != own:
                    return
            except OSError:
                pass
            time.sleep(0.01)
        self.close()
        raise RuntimeError("unshare -n did not enter a new namespace")

    @property
    def inode(self) -> int:
        """The inode of its namespace."""
        return os.stat(f"/proc/{self.proc.pid}/ns/net").st_ino

    def nsenter(self, *args: str) -> None:
        """Run ``args`` inside its namespace."""
        subprocess.run(["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", *args], check=True,
                       capture_output=True)

    def close(self) -> None:
        """Kill the process (its namespace goes with it)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def unshared() -> Iterator[Unshared]:
    """An unnamed namespace held by one process."""
    ok, reason = netns_available()
    require(ok, reason)
    held = Unshared()
    try:
        yield held
    finally:
        held.close()


@pytest.fixture
def clean_netns() -> Iterator[NetNS]:
    """A second ``ip netns`` namespace, with no process in it unless the test starts one."""
    ok, reason = netns_available()
    require(ok, reason)
    ns = NetNS(prefix="pwclean")
    try:
        yield ns
    finally:
        ns.close()


def by_inode(namespaces: tuple[NamespaceInfo, ...], inode: int) -> NamespaceInfo:
    """The one namespace of ``namespaces`` with ``inode``."""
    found = [ns for ns in namespaces if ns.inode == inode]
    assert len(found) == 1, [(ns.name, ns.inode) for ns in namespaces]
    return found[0]


def ns_inode(path: str) -> int:
    """The namespace inode of an nsfs file."""
    return os.stat(path).st_ino


def test_three_namespaces_are_found_named_and_read_each_with_its_own_range(
        netns: NetNS, unshared: Unshared, clean_netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "20000 20999")
    proc, info = netns.actor("listen", "--port", "20005")
    unshared.nsenter("sysctl", "-qw", "net.ipv4.ip_local_port_range=30000 30999")
    main_before = thread_netns()

    found = discover_namespaces()

    named = by_inode(found.namespaces, ns_inode(f"/run/netns/{netns.name}"))
    assert (named.kind, named.name, named.stable) == (NamespaceKind.NAMED, netns.name, True)
    assert proc.pid in named.pids and named.paths == (f"/run/netns/{netns.name}",)
    bare = by_inode(found.namespaces, unshared.inode)
    assert (bare.kind, bare.name, bare.stable) == (NamespaceKind.PROCESS, "sleep", False)
    assert bare.pids == (unshared.proc.pid,) and bare.key == f"netns:{bare.inode}"
    clean = by_inode(found.namespaces, ns_inode(f"/run/netns/{clean_netns.name}"))
    assert (clean.kind, clean.name, clean.pids) == (NamespaceKind.NAMED, clean_netns.name, ())
    host = found.namespaces[0]
    assert host.kind is NamespaceKind.HOST and host.name == "host" and found.notes == ()

    collector = Collector(NetlinkSource())
    scans = {s.namespace.inode: s for s in collector.snapshot_namespaces(
        [host, named, bare, clean])}
    assert {s.outcome for s in scans.values()} == {"ok"}
    ranges = {inode: s.snapshot.settings.port_range for inode, s in scans.items()
              if s.snapshot is not None}
    assert ranges[named.inode] == PortRange(20000, 20999)
    assert ranges[bare.inode] == PortRange(30000, 30999)
    assert ranges[clean.inode] == ranges[host.inode] == read_kernel_settings().port_range
    listening = {inode: {s.local.port for s in scan.snapshot.sockets if s.is_listener}
                 for inode, scan in scans.items() if scan.snapshot is not None}
    assert listening[named.inode] == {20005} and info["ports"] == [20005]
    assert 20005 not in listening[host.inode] | listening[bare.inode] | listening[clean.inode]
    assert listening[clean.inode] == set() and listening[bare.inode] == set()
    assert thread_netns() == main_before == os.stat("/proc/self/ns/net").st_ino


def test_run_in_namespace_sees_the_namespace_and_leaves_the_caller_where_it_was(
        netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "20000 20999")
    target = by_inode(discover_namespaces().namespaces, ns_inode(f"/run/netns/{netns.name}"))
    before = thread_netns()

    inside = run_in_namespace(target, lambda: (
        thread_netns(), read_kernel_settings().port_range,
        Path("/proc/thread-self/net/tcp").read_text().count("\n")))

    assert inside[0] == target.inode and inside[1] == PortRange(20000, 20999)
    assert inside[2] == 1  # the header only: the namespace has no TCP socket
    assert thread_netns() == before and read_kernel_settings().port_range != inside[1]
    with pytest.raises(ZeroDivisionError):
        run_in_namespace(target, lambda: 1 // 0)  # what the callable raises reaches the caller
    assert thread_netns() == before


def test_one_thread_enters_each_namespace_in_turn_and_the_caller_never_moves(
        netns: NetNS, unshared: Unshared, clean_netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "20000 20999")
    clean_netns.sysctl("net/ipv4/ip_local_port_range", "21000 21999")
    found = discover_namespaces().namespaces
    first = by_inode(found, ns_inode(f"/run/netns/{netns.name}"))
    second = by_inode(found, ns_inode(f"/run/netns/{clean_netns.name}"))
    gone = by_inode(found, unshared.inode)
    unshared.close()
    before = thread_netns()

    def look() -> tuple[int, int, PortRange]:
        return threading.get_ident(), thread_netns(), read_kernel_settings().port_range

    with NamespaceThread() as thread:
        seen = [thread.run(first, look), thread.run(second, look)]
        with pytest.raises(NamespaceVanished):
            thread.run(gone, look)
        with pytest.raises(ZeroDivisionError):
            thread.run(first, lambda: 1 // 0)
        seen.append(thread.run(first, look))  # back into the first, after a failure
        assert thread_netns() == before
    idents = {ident for ident, _, _ in seen}
    assert len(idents) == 1 and threading.get_ident() not in idents
    assert [(inode, rng) for _, inode, rng in seen] == [
        (first.inode, PortRange(20000, 20999)), (second.inode, PortRange(21000, 21999)),
        (first.inode, PortRange(20000, 20999))]
    assert thread_netns() == before and read_kernel_settings().port_range not in {
        PortRange(20000, 20999), PortRange(21000, 21999)}


def test_a_callable_that_takes_too_long_is_a_timeout_and_the_next_namespace_gets_a_new_thread(
        netns: NetNS) -> None:
    target = by_inode(discover_namespaces().namespaces, ns_inode(f"/run/netns/{netns.name}"))
    release = threading.Event()
    stuck: list[int] = []

    def hang() -> bool:
        stuck.append(threading.get_ident())
        return release.wait(10)

    with NamespaceThread(timeout=0.2) as thread:
        with pytest.raises(TimeoutError, match="no answer after 0.2s"):
            thread.run(target, hang)
        inside = thread.run(target, lambda: (threading.get_ident(), thread_netns()))
        release.set()  # the late answer of the stuck thread goes nowhere
        late = thread.run(target, lambda: "the next answer is this one's")
    assert inside[1] == target.inode and inside[0] not in stuck and len(stuck) == 1
    assert late == "the next answer is this one's"


def test_a_namespace_whose_last_process_exits_is_reported_vanished_not_failed(
        unshared: Unshared) -> None:
    target = by_inode(discover_namespaces().namespaces, unshared.inode)
    unshared.close()

    with pytest.raises(NamespaceVanished, match="no longer exists"):
        run_in_namespace(target, thread_netns)
    scans = Collector(NetlinkSource()).snapshot_namespaces([target])
    assert [(s.outcome, s.snapshot) for s in scans] == [("vanished", None)]


def test_namespaces_ending_while_they_are_discovered_and_scanned_cause_no_error() -> None:
    ok, reason = netns_available()
    require(ok and shutil.which("unshare") is not None, reason or "needs unshare")
    stop = threading.Event()
    started: list[int] = []

    def churn() -> None:
        while not stop.is_set():
            proc = subprocess.Popen(["unshare", "-n", "sleep", "0.02"])
            started.append(proc.pid)
            proc.wait()

    thread = threading.Thread(target=churn)
    thread.start()
    outcomes: set[tuple[str, str]] = set()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            found = discover_namespaces()
            outcomes.update((s.outcome, s.message) for s in Collector(
                NetlinkSource()).snapshot_namespaces(found.namespaces))
    finally:
        stop.set()
        thread.join()
    assert len(started) > 10 and ("ok", "") in outcomes
    assert {outcome for outcome, _ in outcomes} <= {"ok", "vanished"}, outcomes


def test_without_cap_sys_admin_only_the_own_namespace_is_listed_with_one_note(
        netns: NetNS) -> None:
    code = (
        "import json\n"
        "from portwatch.collect import Collector, discover_namespaces\n"
        "from portwatch.collect.sources.netlink import NetlinkSource\n"
        "found = discover_namespaces()\n"
        "scans = Collector(NetlinkSource()).snapshot_namespaces(found.namespaces)\n"
        "print(json.dumps({'inodes': [n.inode for n in found.namespaces], 'own': found.own,\n"
        "                  'notes': list(found.notes), 'outcomes': [s.outcome for s in scans]}))\n"
    )
    out = run_as_nobody(code)
    assert out["inodes"] == [os.stat("/proc/self/ns/net").st_ino] == [out["own"]]
    assert out["notes"] == [OWN_NAMESPACE_NOTE] and out["outcomes"] == ["ok"]


def test_entering_a_namespace_without_privilege_raises_permission_error(netns: NetNS) -> None:
    code = (
        "import json, sys\n"
        "from portwatch.collect import Collector, discover_namespaces\n"
        "from portwatch.collect.sources.netlink import NetlinkSource\n"
        "found = discover_namespaces(capable=True)\n"
        "target = [n for n in found.namespaces if n.name == sys.argv[1]]\n"
        "scans = Collector(NetlinkSource()).snapshot_namespaces(target)\n"
        "print(json.dumps([s.outcome for s in scans]))\n"
    )
    assert run_as_nobody(code, netns.name) == ["denied"]


def test_a_process_killed_mid_read_does_not_change_the_callers_namespace(
        unshared: Unshared) -> None:
    target = by_inode(discover_namespaces().namespaces, unshared.inode)
    before = thread_netns()

    def inside() -> int:
        os.kill(unshared.proc.pid, signal.SIGKILL)  # the last process goes while we are inside
        unshared.proc.wait(timeout=10)
        return read_kernel_settings().port_range.size  # the open handle keeps it readable

    assert run_in_namespace(target, inside) > 0
    assert thread_netns() == before


def test_one_walk_of_the_fd_tables_serves_every_namespace_of_a_pass(
        netns: NetNS, clean_netns: NetNS) -> None:
    second, _ = clean_netns.actor("listen", "--port", "21011")  # the lower pid: read first
    first, _ = netns.actor("listen", "--port", "21010")
    found = discover_namespaces().namespaces
    targets = [by_inode(found, ns_inode(f"/run/netns/{ns.name}")) for ns in (netns, clean_netns)]
    collector = Collector(NetlinkSource())
    snap_a, snap_b = (s.snapshot for s in collector.snapshot_namespaces(targets))
    assert snap_a is not None and snap_b is not None
    sock_a = [s for s in snap_a.sockets if s.local.port == 21010][0]
    sock_b = [s for s in snap_b.sockets if s.local.port == 21011][0]

    done_a = collector.attribute(snap_a, [sock_a.inode])
    reads, walks = collector.counters.fd_tables_read, collector.counters.full_walks
    done_b = collector.attribute(snap_b, [sock_b.inode])

    assert done_a.owners[sock_a.inode] == (first.pid,) and reads > 0 and walks == 1
    assert done_b.owners[sock_b.inode] == (second.pid,)
    assert (collector.counters.fd_tables_read, collector.counters.full_walks) == (reads, walks)


# --- the /proc fallback inside a namespace (no sock_diag there) ---

PROC_TCP = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n"
    "   1: 0100007F:9C41 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1\n"
)
PROC_TCP6 = (
    "  sl  local_address                         remote_address                        st ...\n"
    "   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 77 1\n"
    "   1: 0000000000000000FFFF00000100007F:1F91 0000000000000000FFFF00000200007F:A000 06 "
    "00000000:00000000 00:00000000 00000000     0        0 0 1\n"
)


def test_proc_net_text_parses_into_sockets_like_netlinks() -> None:
    v4 = parse_proc_net(PROC_TCP, Protocol.TCP, Family.IPV4)
    v6 = parse_proc_net(PROC_TCP6, Protocol.TCP, Family.IPV6)
    udp = parse_proc_net(PROC_TCP.replace(" 0A ", " 07 "), Protocol.UDP, Family.IPV4)

    assert v4 == [
        Socket(Protocol.TCP, Family.IPV4, SocketState.LISTEN, Endpoint("127.0.0.1", 8080), None,
               4242, 0),
        Socket(Protocol.TCP, Family.IPV4, SocketState.ESTABLISHED, Endpoint("127.0.0.1", 40001),
               Endpoint("127.0.0.1", 8080), 4243, 1000)]
    assert [(s.local, s.remote, s.state) for s in v6] == [
        (Endpoint("::1", 22), None, SocketState.LISTEN),
        (Endpoint("127.0.0.1", 8081), Endpoint("127.0.0.2", 40960), SocketState.TIME_WAIT)]
    assert [s.state for s in udp] == [SocketState.UNCONN, SocketState.ESTABLISHED]
    with pytest.raises(ValueError, match="line 2"):
        parse_proc_net(PROC_TCP.replace("0100007F:1F90 0000", "zz:1F90 0000", 1), Protocol.TCP,
                       Family.IPV4)


def test_proc_net_source_in_a_namespace_reads_what_netlink_reads(netns: NetNS) -> None:
    netns.actor("listen", "--port", "21030", "--family", "6")
    netns.actor("listen", "--proto", "udp", "--port", "21031")
    netns.actor("hold-port", "--port", "21032", "--to", "127.0.0.1:21033", "--serve")
    target = by_inode(discover_namespaces().namespaces, ns_inode(f"/run/netns/{netns.name}"))

    from_proc = run_in_namespace(target, ProcNetSource().read).sockets
    from_netlink = Collector(NetlinkSource()).snapshot_namespace(target).sockets

    assert {s._replace(cgroup_id=None) for s in from_netlink} == set(from_proc)
    ports = {s.local.port for s in from_proc}
    assert {21030, 21031, 21032, 21033} <= ports


class NoSockDiag(NetlinkSource):
    """A netlink source on a kernel whose namespaces answer no sock_diag request (a stand-in: such
    a kernel cannot be made here); the sockets still come from the namespace's real /proc files."""

    def fetch(self, sock: Any) -> Any:
        sock.close()
        raise SourceUnavailable("sock_diag is not available (no inet_diag for this family)")

    def count(self, sock: Any, *args: Any) -> Any:
        return self.fetch(sock)


@pytest.mark.parametrize("counted", [False, True])
def test_a_namespace_without_sock_diag_is_read_from_its_proc_files(netns: NetNS, counted: bool) -> None:
    netns.actor("listen", "--port", "21040")
    netns.actor("hold-port", "--port", "21041", "--to", "127.0.0.1:21042", "--serve")
    target = by_inode(discover_namespaces().namespaces, ns_inode(f"/run/netns/{netns.name}"))
    collector = Collector(NetlinkSource(), namespace_source=NoSockDiag())

    snap = collector.snapshot_namespace(target, frozenset({21040}) if counted else None)

    assert snap.source == "procnet" and snap.counts is None and snap.namespace == target
    from_proc = run_in_namespace(target, ProcNetSource().read).sockets
    assert set(snap.sockets) == set(from_proc)
    assert {21040, 21041, 21042} <= {s.local.port for s in snap.sockets}


def test_a_pid_refusing_its_namespace_while_it_ends_is_a_vanished_namespace_not_a_denial() -> None:
    # An exiting or exec-ing process can refuse /proc/PID/ns/net for a moment (EACCES, even
    # to root; seen with `unshare -n sleep` churning). Reproduced without a race: as nobody, a
    # pid directory of our own whose ns/net we may not open; the retry finds it gone, or not.
    code = (
        "import json, os, shutil, tempfile\n"
        "from pathlib import Path\n"
        "from portwatch.collect.namespaces import NamespaceVanished, open_namespace\n"
        "from portwatch.model import NamespaceInfo, NamespaceKind\n"
        "root = Path(tempfile.mkdtemp())\n"
        "out = {}\n"
        "for case in ('ends', 'stays'):\n"
        "    (root / '4242' / 'ns').mkdir(parents=True, exist_ok=True)\n"
        "    (root / '4242' / 'ns' / 'net').write_text('')\n"
        "    os.chmod(root / '4242' / 'ns' / 'net', 0)\n"
        "    ns = NamespaceInfo(inode=7, dev=3, kind=NamespaceKind.PROCESS, name='x', pids=(4242,))\n"
        "    pause = (lambda: shutil.rmtree(root / '4242')) if case == 'ends' else (lambda: None)\n"
        "    try:\n"
        "        open_namespace(ns, root, retry_pause=pause)\n"
        "        out[case] = 'opened'\n"
        "    except NamespaceVanished:\n"
        "        out[case] = 'vanished'\n"
        "    except PermissionError as exc:\n"
        "        out[case] = f'denied {exc.filename}'\n"
        "shutil.rmtree(root)\n"
        "print(json.dumps(out))\n"
    )
    out = run_as_nobody(code)
    assert out["ends"] == "vanished"
    assert out["stays"].startswith("denied ") and out["stays"].endswith("/4242/ns/net")
