"""Tests of portwatch.collect: sysctl parsing, the psutil source, /proc walks, process details.

Fixture /proc trees are built under tmp_path (symlinks ``PID/fd/N -> socket:[INODE]``);
the socket tests use real sockets in a network namespace; permission denials use a
real unprivileged process (uid 65534), since root reads everything.
"""

from __future__ import annotations

import collections
import json
import os
import pwd
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import psutil
import pytest

from portwatch.collect import (
    DEFAULT_UNPRIVILEGED_PORT_START,
    PARTIAL_ATTRIBUTION_NOTE,
    CollectError,
    Collector,
    OwnerScan,
    PsutilSource,
    SourceReadError,
    describe_processes,
    find_socket_owners,
    parse_port_range,
    parse_reserved_ports,
    read_kernel_settings,
    systemd_unit_from_cgroup,
)
from portwatch.collect.owners import OwnerWalk
from portwatch.model import Endpoint, Family, KernelSettings, PortRange, ProcessInfo, Protocol
from portwatch.model import Snapshot, Socket, SocketState, SocketTable
from tests.conftest import require
from tests.netns import REPO, NetNS

NOBODY = 65534

# --------------------------------------------------------------------------- helpers


def write_sysctls(proc_root: Path, files: Mapping[str, str | None]) -> Path:
    """Create ``proc_root/sys/net/ipv4/NAME`` with the given text (None: leave out)."""
    base = proc_root / "sys" / "net" / "ipv4"
    base.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if text is not None:
            (base / name).write_text(text)
    return base


DEFAULT_SYSCTLS: dict[str, str | None] = {
    "ip_local_port_range": "32768\t60999\n",
    "ip_local_reserved_ports": "\n",
    "ip_unprivileged_port_start": "1024\n",
}


def make_fds(proc_root: Path, pid: int, links: Mapping[int, str]) -> Path:
    """Create ``proc_root/PID/fd/N -> TARGET`` symlinks (as /proc shows them)."""
    fd_dir = proc_root / str(pid) / "fd"
    fd_dir.mkdir(parents=True, exist_ok=True)
    for fd, target in links.items():
        os.symlink(target, fd_dir / str(fd))
    return fd_dir


def build_proc_tree(root: Path) -> Path:
    """A fixture /proc with sockets 555 (pids 10 and 20), 777 (10), 888 (50) and oddities."""
    make_fds(root, 10, {0: "/dev/null", 3: "socket:[555]", 4: "pipe:[9]", 5: "socket:[777]",
                        6: "socket:[notanumber]", 7: "anon_inode:[eventfd]"})
    make_fds(root, 20, {0: "socket:[555]", 1: "socket:[555]"})  # shared and dup'ed
    (root / "30").mkdir()
    (root / "30" / "fd").write_text("not a directory\n")  # odd entry: skipped
    (root / "40").mkdir()  # no fd directory: the process vanished mid-walk
    make_fds(root, 50, {7: "socket:[888]"})
    (make_fds(root, 60, {}) / "9").write_text("a regular file, not a link\n")
    (root / "self").symlink_to("10")  # non-numeric names are not processes
    (root / "sys").mkdir()
    return root


class StaticSource:
    """A SocketSource returning a fixed table (for fixture-tree collectors)."""

    name = "static"

    def __init__(self, table: SocketTable) -> None:
        self.table = table

    def read(self) -> SocketTable:
        return self.table


def tcp(port: int, inode: int, state: SocketState = SocketState.ESTABLISHED) -> Socket:
    """A loopback TCP socket with the given local port and inode."""
    remote = None if state is SocketState.LISTEN else Endpoint("127.0.0.1", 9)
    return Socket(Protocol.TCP, Family.IPV4, state, Endpoint("127.0.0.1", port), remote, inode)


class FakeProcess:
    """Stand-in for psutil.Process where no real process exists (fixture pids).

    ``fail`` maps a method name to the psutil exception it raises.
    """

    def __init__(self, pid: int, fail: Mapping[str, Exception] | None = None) -> None:
        self.pid = pid
        self.fail = dict(fail or {})

    def _get(self, field: str, value: Any) -> Any:
        if field in self.fail:
            raise self.fail[field]
        return value

    def name(self) -> str:
        return str(self._get("name", f"proc{self.pid}"))

    def cmdline(self) -> list[str]:
        return list(self._get("cmdline", [f"/usr/bin/proc{self.pid}", "--serve"]))

    def username(self) -> str:
        return str(self._get("username", "www-data"))


def fake_factory(calls: list[int] | None = None,
                 fail: Mapping[str, Exception] | None = None) -> Callable[[int], psutil.Process]:
    """A process factory building FakeProcess objects, recording the pids asked for."""
    def factory(pid: int) -> psutil.Process:
        if calls is not None:
            calls.append(pid)
        return FakeProcess(pid, fail)  # type: ignore[return-value]
    return factory


def run_as_nobody(code: str, *args: str) -> Any:
    """Run python ``code`` as uid/gid 65534 and return the JSON it prints."""
    require(os.geteuid() == 0, "needs root to start a process as another user")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code, *args], user=NOBODY, group=NOBODY,
                          extra_groups=[], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temporary directory an unprivileged process can traverse (pytest's tmp_path is 0700)."""
    with tempfile.TemporaryDirectory(prefix="pwcollect-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


# --------------------------------------------------------------------------- parsers


@pytest.mark.parametrize("text, expected", [
    ("32768\t60999\n", PortRange(32768, 60999)),
    ("1 65535", PortRange(1, 65535)),
    ("40000 40000\n", PortRange(40000, 40000)),
    ("  1024 \t  2048  \n", PortRange(1024, 2048)),
])
def test_parse_port_range_accepts_two_ports_in_order(text: str, expected: PortRange) -> None:
    assert parse_port_range(text, "SRC") == expected


@pytest.mark.parametrize("text, cause", [
    ("", "expected two port numbers"),
    ("\n", "expected two port numbers"),
    ("32768", "expected two port numbers"),
    ("1 2 3", "expected two port numbers"),
    ("abc def", "expected two port numbers"),
    ("-1 5", "expected two port numbers"),
    ("1.5 2", "expected two port numbers"),
    ("0x10 100", "expected two port numbers"),
    ("0 100", "port 0 is outside 1..65535"),
    ("100 70000", "port 70000 is outside 1..65535"),
    ("60999 32768", "range start 60999 is above its end 32768"),
])
def test_parse_port_range_rejects_garbage_naming_the_cause(text: str, cause: str) -> None:
    with pytest.raises(CollectError) as err:
        parse_port_range(text, "/x/ip_local_port_range")
    assert str(err.value).startswith("/x/ip_local_port_range: ")
    assert cause in str(err.value)


@pytest.mark.parametrize("text, expected", [
    ("", set()),
    ("\n", set()),
    ("   \n", set()),
    ("8080", {8080}),
    ("8080\n", {8080}),
    ("0", {0}),
    ("65535\n", {65535}),
    ("5-5", {5}),
    ("1-3,8080,9000-9002\n", {1, 2, 3, 8080, 9000, 9001, 9002}),
    (" 1 - 3 , 8080 ,\t9000-9001 \n", {1, 2, 3, 8080, 9000, 9001}),
    ("8080,8080,8079-8081", {8079, 8080, 8081}),
])
def test_parse_reserved_ports_accepts_the_kernels_list_syntax(text: str, expected: set[int]) -> None:
    assert parse_reserved_ports(text, "SRC") == frozenset(expected)


@pytest.mark.parametrize("text", [
    "abc", "1,,2", "1,2,", ",1", "1-", "-3", "1-2-3", "3-1", "70000", "1-70000",
    "8080 9090", "0x10", "+5", "1;2", "8080\n9090\n",
])
def test_parse_reserved_ports_rejects_garbage(text: str) -> None:
    with pytest.raises(CollectError) as err:
        parse_reserved_ports(text, "/x/ip_local_reserved_ports")
    assert str(err.value).startswith("/x/ip_local_reserved_ports: ")


def test_parse_reserved_ports_expands_a_large_range() -> None:
    assert len(parse_reserved_ports("0-65535\n", "SRC")) == 65536


# --------------------------------------------------------------------------- read_kernel_settings


def test_read_kernel_settings_reads_all_three_files(tmp_path: Path) -> None:
    write_sysctls(tmp_path, {"ip_local_port_range": "40000\t50000\n",
                             "ip_local_reserved_ports": "8080,40000-40002\n",
                             "ip_unprivileged_port_start": "0\n"})
    assert read_kernel_settings(tmp_path) == KernelSettings(
        PortRange(40000, 50000), frozenset({8080, 40000, 40001, 40002}), 0)


def test_read_kernel_settings_fallbacks_for_missing_optional_files(tmp_path: Path) -> None:
    write_sysctls(tmp_path, {"ip_local_port_range": "32768 60999\n"})
    settings = read_kernel_settings(tmp_path)
    assert settings.reserved == frozenset()
    assert settings.unprivileged_port_start == DEFAULT_UNPRIVILEGED_PORT_START == 1024


@pytest.mark.parametrize("broken, how, cause", [
    ("ip_local_port_range", "missing", "no such file"),
    ("ip_local_port_range", "directory", "is a directory"),
    ("ip_local_port_range", "garbage", "expected two port numbers"),
    ("ip_local_reserved_ports", "directory", "is a directory"),
    ("ip_local_reserved_ports", "garbage", "is not a port"),
    ("ip_unprivileged_port_start", "directory", "is a directory"),
    ("ip_unprivileged_port_start", "garbage", "expected a port number"),
])
def test_read_kernel_settings_errors_name_the_file(tmp_path: Path, broken: str, how: str,
                                                   cause: str) -> None:
    files = dict(DEFAULT_SYSCTLS)
    files[broken] = "no way\n" if how == "garbage" else None
    base = write_sysctls(tmp_path, files)
    if how == "directory":
        (base / broken).mkdir()
    with pytest.raises(CollectError) as err:
        read_kernel_settings(tmp_path)
    assert str(err.value).startswith(f"{base / broken}: ")
    assert cause in str(err.value)


def test_read_kernel_settings_of_a_missing_proc_root_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CollectError) as err:
        read_kernel_settings(tmp_path / "nowhere")
    assert "nowhere/sys/net/ipv4/ip_local_port_range: no such file" in str(err.value)


def test_read_kernel_settings_of_this_host_are_valid() -> None:
    settings = read_kernel_settings()
    text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    assert settings.port_range == PortRange(int(text[0]), int(text[1]))


# --------------------------------------------------------------------------- find_socket_owners


def test_find_socket_owners_with_all_holders_lists_every_holder(tmp_path: Path) -> None:
    root = build_proc_tree(tmp_path)
    scan = find_socket_owners([555, 777, 888, 999], root, all_holders=True)
    assert scan == OwnerScan(owners={555: (10, 20), 777: (10,), 888: (50,)}, denied=0)


def test_find_socket_owners_stops_after_the_process_completing_the_set(tmp_path: Path) -> None:
    root = build_proc_tree(tmp_path)
    # 555 is complete after pid 10: the shared holder 20 is not read (documented trade-off).
    assert find_socket_owners([555], root).owners == {555: (10,)}
    # Looking for 888 walks on to pid 50, so pid 20's share of 555 is seen on the way.
    assert find_socket_owners([555, 888], root).owners == {555: (10, 20), 888: (50,)}


def test_find_socket_owners_ignores_non_positive_inodes(tmp_path: Path) -> None:
    missing_root = tmp_path / "no-proc"
    assert find_socket_owners([0, -1, -2], missing_root) == OwnerScan(owners={}, denied=0)
    with pytest.raises(CollectError) as err:
        find_socket_owners([5], missing_root)
    assert str(err.value) == f"{missing_root}: no such file"


def test_find_socket_owners_counts_unreadable_fd_tables(world_tmp: Path) -> None:
    root = world_tmp / "proc"
    make_fds(root, 10, {3: "socket:[555]"})
    make_fds(root, 20, {3: "socket:[777]"}).chmod(0o000)
    make_fds(root, 30, {3: "socket:[888]"})
    (root / "30").chmod(0o700)  # even the pid directory is closed to others
    code = (
        "import json, sys\n"
        "from portwatch.collect import find_socket_owners\n"
        "scan = find_socket_owners([555, 777, 888], sys.argv[1])\n"
        "print(json.dumps({'owners': {str(k): v for k, v in scan.owners.items()},"
        " 'denied': scan.denied}))\n"
    )
    assert run_as_nobody(code, str(root)) == {"owners": {"555": [10]}, "denied": 2}
    # The same tree, read by root, has every owner: the denial came from permissions.
    assert find_socket_owners([555, 777, 888], root).owners == {555: (10,), 777: (20,), 888: (30,)}


# --------------------------------------------------------------------------- cgroups and processes


@pytest.mark.parametrize("text, unit", [
    ("0::/system.slice/nginx.service\n", "nginx.service"),
    ("0::/system.slice/nginx.service/worker\n", "nginx.service"),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service\n", "foo.service"),
    ("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", "user@1000.service"),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"),
    ("0::/init.scope\n", "init.scope"),
    ("0::/system.slice/docker-0123abcd.scope\n", "docker-0123abcd.scope"),
    ("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab12.scope\n",
     "cri-containerd-ab12.scope"),
    ("12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/sshd.service\n0::/\n",
     "sshd.service"),
    ("1:name=systemd:/system.slice/a.service\n0::/system.slice/b.service\n", "b.service"),
    ("9:name=systemd:/\n4:memory:/system.slice/mem.service\n0::/\n", None),
    ("0::/\n", None),
    ("0::/user.slice/user-1000.slice\n", None),
    ("", None),
    ("garbage without colons\n", None),
    ("0::/system.slice/.service\n", None),
])
def test_systemd_unit_from_cgroup_names_the_innermost_unit(text: str, unit: str | None) -> None:
    assert systemd_unit_from_cgroup(text) == unit


def test_describe_processes_of_live_and_vanished_processes() -> None:
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "marker-arg"],
                            stdin=subprocess.PIPE)
    dead = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        dead.kill()
        dead.wait(timeout=10)  # reaped: the pid no longer exists
        infos = describe_processes([live.pid, dead.pid, live.pid])
    finally:
        assert live.stdin is not None and dead.stdin is not None
        live.stdin.close()
        dead.stdin.close()
        live.wait(timeout=10)
    assert set(infos) == {live.pid, dead.pid}
    info = infos[live.pid]
    assert info.gone is False
    assert info.cmdline == (sys.executable, "-c", "import sys; sys.stdin.read()", "marker-arg")
    assert info.name == Path(sys.executable).name  # the kernel's comm: the exec'd file's name
    assert info.user == pwd.getpwuid(os.getuid()).pw_name
    cgroup = Path(f"/proc/{os.getpid()}/cgroup").read_text()  # the child shares our cgroup
    assert info.unit == systemd_unit_from_cgroup(cgroup)
    assert infos[dead.pid] == ProcessInfo(pid=dead.pid, gone=True)


def test_describe_processes_reads_the_unit_from_proc_root(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("0::/system.slice/web.service\n")
    infos = describe_processes([42, 43], tmp_path, fake_factory())
    assert infos[42] == ProcessInfo(42, "proc42", ("/usr/bin/proc42", "--serve"), "www-data",
                                    "web.service")
    assert infos[43].unit is None and infos[43].name == "proc43"  # no cgroup file


@pytest.mark.parametrize("fail, expected", [
    ({"name": psutil.AccessDenied(7)},
     ProcessInfo(7, None, ("/usr/bin/proc7", "--serve"), "www-data")),
    ({"cmdline": psutil.AccessDenied(7), "username": psutil.AccessDenied(7)},
     ProcessInfo(7, "proc7")),
    ({"cmdline": psutil.NoSuchProcess(7)}, ProcessInfo(7, "proc7", gone=True)),
    ({"cmdline": psutil.ZombieProcess(7)}, ProcessInfo(7, "proc7", gone=True)),
])
def test_describe_processes_leaves_unreadable_fields_unknown(tmp_path: Path, fail: Mapping[str, Exception],
                                           expected: ProcessInfo) -> None:
    assert describe_processes([7], tmp_path, fake_factory(fail=fail)) == {7: expected}


def test_describe_processes_survives_a_failing_factory(tmp_path: Path) -> None:
    def gone(pid: int) -> psutil.Process:
        raise psutil.NoSuchProcess(pid)

    def denied(pid: int) -> psutil.Process:
        raise psutil.AccessDenied(pid)

    assert describe_processes([5], tmp_path, gone) == {5: ProcessInfo(5, gone=True)}
    assert describe_processes([5], tmp_path, denied) == {5: ProcessInfo(5)}


# --------------------------------------------------------------------------- PsutilSource (unit)


Addr = collections.namedtuple("Addr", "ip port")
Conn = collections.namedtuple("Conn", "fd family type laddr raddr status pid")


def sconn(family: int, type_: int, laddr: tuple[Any, ...], raddr: tuple[Any, ...], status: str,
          pid: int | None) -> Any:
    """A record shaped like psutil.net_connections' ``sconn`` (its fields, by name)."""
    return Conn(3, family, type_, Addr(*laddr) if laddr else (), Addr(*raddr) if raddr else (),
                status, pid)


def test_psutil_source_skips_other_families_and_maps_states_and_addresses() -> None:
    rows = [
        sconn(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 80), (), "NONE", 5),
        sconn(socket.AF_UNIX, socket.SOCK_STREAM, ("/run/x", 0), (), "NONE", 5),
        sconn(socket.AF_INET6, socket.SOCK_RAW, ("::", 0), (), "NONE", None),
        sconn(socket.AF_INET6, socket.SOCK_DGRAM, (), (), "NONE", None),
        sconn(socket.AF_INET6, socket.SOCK_STREAM, ("fe80::1%lo", 22),
              ("::ffff:10.0.0.1", 4000), "TIME_WAIT", None),
    ]
    table = PsutilSource(lambda kind="inet": rows).read()
    assert table.sockets == (
        Socket(Protocol.TCP, Family.IPV4, SocketState.CLOSE, Endpoint("127.0.0.1", 80), None, -1),
        Socket(Protocol.UDP, Family.IPV6, SocketState.UNCONN, Endpoint("::", 0), None, -2),
        Socket(Protocol.TCP, Family.IPV6, SocketState.TIME_WAIT, Endpoint("fe80::1", 22),
               Endpoint("10.0.0.1", 4000), -3),
    )
    assert table.owners == {-1: (5,)}


@pytest.mark.parametrize("exc, cause", [
    (psutil.AccessDenied(), "permission denied"),
    (PermissionError(13, "Permission denied"), "Permission denied"),
    (psutil.Error("boom"), "boom"),
])
def test_psutil_source_failures_are_clear_oserrors(exc: Exception, cause: str) -> None:
    def net_connections(kind: str = "inet") -> list[Any]:
        raise exc

    with pytest.raises(SourceReadError) as err:
        PsutilSource(net_connections).read()
    assert isinstance(err.value, OSError) and isinstance(err.value, CollectError)
    assert str(err.value).startswith("psutil.net_connections: ")
    assert cause in str(err.value)


def test_psutil_source_bad_address_is_a_clear_oserror() -> None:
    rows = [sconn(socket.AF_INET, socket.SOCK_STREAM, ("not-an-ip", 1), (), "LISTEN", None)]
    with pytest.raises(SourceReadError, match="bad address"):
        PsutilSource(lambda kind="inet": rows).read()


# --------------------------------------------------------------------------- Collector (fixture tree)


@pytest.fixture
def fixture_world(tmp_path: Path) -> Path:
    root = build_proc_tree(tmp_path)
    write_sysctls(root, {"ip_local_port_range": "40000 40999\n",
                         "ip_local_reserved_ports": "40500\n"})
    for pid, unit in ((10, "a.service"), (20, "b.service"), (50, "c.service")):
        (root / str(pid) / "cgroup").write_text(f"0::/system.slice/{unit}\n")
    return root


TABLE = SocketTable(sockets=(tcp(40001, 555, SocketState.LISTEN), tcp(40002, 777),
                             tcp(40003, 888), tcp(40004, 999), tcp(40005, 0, SocketState.TIME_WAIT)))


def test_collector_snapshot_has_settings_sockets_and_no_processes(fixture_world: Path) -> None:
    table = SocketTable(sockets=TABLE.sockets, owners={777: (3,)})
    snap = Collector(StaticSource(table), fixture_world, clock=lambda: 1234.5).snapshot()
    assert snap == Snapshot(settings=KernelSettings(PortRange(40000, 40999), frozenset({40500})),
                            sockets=TABLE.sockets, taken_at=1234.5, owners={777: (3,)},
                            processes={}, source="static", notes=())


def test_collector_attribute_finds_and_describes_the_owners_asked_for(fixture_world: Path) -> None:
    calls: list[int] = []
    collector = Collector(StaticSource(TABLE), fixture_world, process_factory=fake_factory(calls))
    snap = collector.snapshot()
    out = collector.attribute(snap, [555, 0, -4])
    assert out.owners == {555: (10,)}
    assert out.processes == {10: ProcessInfo(10, "proc10", ("/usr/bin/proc10", "--serve"),
                                             "www-data", "a.service")}
    assert out.notes == ()
    assert snap.owners == {} and snap.processes == {}  # the original is untouched
    assert out.sockets is snap.sockets and out.settings == snap.settings

    # 777 is held by the already described pid 10: found, and not described again.
    out2 = collector.attribute(out, [777])
    assert out2.owners == {555: (10,), 777: (10,)}
    assert calls == [10]


def test_collector_attribute_reads_each_fd_table_once_per_scan(fixture_world: Path) -> None:
    collector = Collector(StaticSource(TABLE), fixture_world, process_factory=fake_factory())
    snap = collector.snapshot()
    assert collector.attribute(snap, [555]).owners == {555: (10,)}  # stopped after pid 10

    # The processes change after the first walk.
    os.unlink(fixture_world / "10" / "fd" / "3")
    os.symlink("socket:[999]", fixture_world / "10" / "fd" / "8")
    os.symlink("socket:[555]", fixture_world / "50" / "fd" / "8")

    # Same scan: the first walk stopped inside pid 10's table as soon as 555 was
    # found, so pid 10 is read again (from the start: its new 999 is seen); the
    # walk goes on after it, recording the shares of 555 it meets on the way
    # (pid 20, and pid 50's new one). Fully read tables are not read again.
    again = collector.attribute(snap, [555, 888, 999])
    assert again.owners == {555: (10, 20, 50), 888: (50,), 999: (10,)}
    assert collector.attribute(again, [999]).owners == again.owners

    # A new scan walks afresh and sees today's processes.
    fresh = collector.attribute(collector.snapshot(), [555, 999])
    assert fresh.owners == {555: (20,), 999: (10,)}


def test_collector_attribute_keeps_known_owners_and_ignores_foreign_inodes(
        fixture_world: Path) -> None:
    table = SocketTable(sockets=TABLE.sockets, owners={555: (99,)})
    collector = Collector(StaticSource(table), fixture_world, process_factory=fake_factory())
    snap = collector.snapshot()
    out = collector.attribute(snap, [555, 12345])  # 12345 is no socket of this snapshot
    assert out.owners == {555: (99,)}
    assert set(out.processes) == {99}


def collector_script(inodes: tuple[int, ...]) -> str:
    """The start of a script making ``c``, a Collector over ``sys.argv[1]``.

    Its source holds TCP listeners with these inodes (on port 1000 + inode);
    every process it would describe has exited.
    """
    return (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from portwatch.collect import Collector\n"
        "from portwatch.model import Endpoint, Family, Protocol, Socket, SocketState, SocketTable\n"
        "class Src:\n"
        "    name = 'static'\n"
        "    def read(self):\n"
        "        return SocketTable(tuple(Socket(Protocol.TCP, Family.IPV4, SocketState.LISTEN,\n"
        f"                           Endpoint('0.0.0.0', 1000 + i), None, i) for i in {inodes!r}))\n"
        "def gone(pid):\n"
        "    import psutil\n"
        "    raise psutil.NoSuchProcess(pid)\n"
        "c = Collector(Src(), Path(sys.argv[1]), process_factory=gone)\n"
    )


def test_collector_attribute_notes_partial_attribution_when_not_root(world_tmp: Path) -> None:
    root = world_tmp
    write_sysctls(root, DEFAULT_SYSCTLS)
    make_fds(root, 10, {3: "socket:[555]"})
    make_fds(root, 20, {3: "socket:[777]"}).chmod(0o000)
    make_fds(root, 30, {3: "socket:[888]"}).chmod(0o000)
    code = collector_script((555, 777)) + (
        "s = c.attribute(c.snapshot(), [555, 777])\n"
        "s2 = c.attribute(s, [555])\n"
        "print(json.dumps({'owners': {str(k): v for k, v in s.owners.items()},\n"
        "                  'notes': s.notes, 'notes2': s2.notes}))\n"
    )
    out = run_as_nobody(code, str(root))
    note = PARTIAL_ATTRIBUTION_NOTE.format(unowned=1, denied=2)
    assert note.startswith("attribution is partial: the owners of 1 sockets are unknown and 2 processes' "
                           "file descriptors could not be read")
    assert out == {"owners": {"555": [10]}, "notes": [note], "notes2": [note]}


def test_collector_attribute_no_note_when_every_requested_owner_is_found(world_tmp: Path) -> None:
    # An unreadable fd table (here pid 5, read before pid 10) that holds none of
    # the requested sockets leaves nothing unexplained: no note.
    root = world_tmp
    write_sysctls(root, DEFAULT_SYSCTLS)
    make_fds(root, 5, {3: "socket:[999]"}).chmod(0o000)
    make_fds(root, 10, {3: "socket:[555]"})
    code = collector_script((555,)) + (
        "s = c.attribute(c.snapshot(), [555])\n"
        "print(json.dumps({'owners': {str(k): v for k, v in s.owners.items()}, 'notes': s.notes}))\n"
    )
    assert run_as_nobody(code, str(root)) == {"owners": {"555": [10]}, "notes": []}


def test_read_kernel_settings_denied_to_an_unprivileged_process_names_the_file(world_tmp: Path) -> None:
    base = write_sysctls(world_tmp, DEFAULT_SYSCTLS)
    (base / "ip_local_reserved_ports").chmod(0o000)
    code = (
        "import json, sys\n"
        "from portwatch.collect import CollectError, read_kernel_settings\n"
        "try:\n"
        "    read_kernel_settings(sys.argv[1])\n"
        "    print(json.dumps('no error'))\n"
        "except CollectError as e:\n"
        "    print(json.dumps(str(e)))\n"
    )
    assert run_as_nobody(code, str(world_tmp)) == (
        f"{base / 'ip_local_reserved_ports'}: permission denied")


# --------------------------------------------------------------------------- real sockets

ACTOR = r"""
import json, os, socket, sys
A4, A6 = socket.AF_INET, socket.AF_INET6
lst = socket.socket(A4, socket.SOCK_STREAM); lst.bind(("127.0.0.1", 0)); lst.listen()
cli = socket.create_connection(lst.getsockname()); srv, _ = lst.accept()
udp = socket.socket(A4, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))
udpc = socket.socket(A4, socket.SOCK_DGRAM); udpc.connect(udp.getsockname())
v6 = socket.socket(A6, socket.SOCK_STREAM)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); v6.bind(("::1", 0)); v6.listen()
dual = socket.socket(A6, socket.SOCK_STREAM)
dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); dual.bind(("::", 0)); dual.listen()
dcli = socket.create_connection(("127.0.0.1", dual.getsockname()[1])); dsrv, _ = dual.accept()
socks = dict(lst=lst, cli=cli, srv=srv, udp=udp, udpc=udpc, v6=v6, dual=dual, dcli=dcli, dsrv=dsrv)
r, w = os.pipe()
child = os.fork()
if child == 0:  # shares only the listener; exits when the parent's pipe end closes
    os.close(w)
    for name, s in socks.items():
        if name != "lst":
            s.close()
    os.read(r, 1)
    os._exit(0)
os.close(r)
def peer(s):
    try:
        return list(s.getpeername()[:2])
    except OSError:
        return None
print(json.dumps({"pid": os.getpid(), "child": child, "sockets": {
    n: {"inode": os.fstat(s.fileno()).st_ino, "local": list(s.getsockname()[:2]),
        "remote": peer(s), "type": s.type} for n, s in socks.items()}}), flush=True)
sys.stdin.read()
"""

PROBE = r"""
import json, os, sys
from portwatch.collect import Collector, PsutilSource, find_socket_owners
from portwatch.model import SocketTable, normalize_ip, socket_to_dict
info = json.loads(sys.argv[1])
real = {}
for s in info["sockets"].values():
    remote = (normalize_ip(s["remote"][0]), s["remote"][1]) if s["remote"] else None
    real[(normalize_ip(s["local"][0]), s["local"][1], remote, s["type"])] = s["inode"]
inodes = sorted(s["inode"] for s in info["sockets"].values())

class RealInodes:
    # The psutil table with the kernel's inodes (from the actor) and no owners.
    name = "real-inodes"
    def read(self):
        out = []
        for s in PsutilSource().read().sockets:
            remote = (s.remote.ip, s.remote.port) if s.remote else None
            key = (s.local.ip, s.local.port, remote, 1 if s.protocol.value == "tcp" else 2)
            out.append(s._replace(inode=real.get(key, s.inode)))
        return SocketTable(tuple(out))

if sys.argv[2] == "nobody":
    os.setgid(65534); os.setuid(65534)
table = PsutilSource().read()
scan = find_socket_owners(inodes)
every = find_socket_owners(inodes, all_holders=True)
collector = Collector(RealInodes())
snap = collector.snapshot()
attributed = collector.attribute(snap, inodes)
print(json.dumps({
    "psutil": [dict(socket_to_dict(s), owners=list(table.owners.get(s.inode, ())))
               for s in table.sockets],
    "find": {str(k): v for k, v in scan.owners.items()}, "denied": scan.denied,
    "every": {str(k): v for k, v in every.owners.items()},
    "settings": [snap.settings.port_range.low, snap.settings.port_range.high,
                 sorted(snap.settings.reserved), snap.settings.unprivileged_port_start],
    "owners": {str(k): v for k, v in attributed.owners.items()},
    "processes": {str(k): v.to_dict() for k, v in attributed.processes.items()},
    "notes": attributed.notes,
}))
"""


def start_actor(ns: NetNS) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = ns.popen([sys.executable, "-c", ACTOR])
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the actor prints one line, or exits (EOF)
    assert line, f"actor failed (exit {proc.wait(timeout=10)})"
    return proc, json.loads(line)


def probe(ns: NetNS, info: dict[str, Any], user: str) -> dict[str, Any]:
    done = ns.run([sys.executable, "-c", PROBE, json.dumps(info), user])
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def ep_dict(ip: str, port: int) -> dict[str, Any]:
    return {"ip": ip, "port": port}


def test_real_sockets_in_a_namespace_have_their_owners(netns: NetNS) -> None:
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40100")
    netns.sysctl("net/ipv4/ip_local_reserved_ports", "40050,40060-40061")
    netns.sysctl("net/ipv4/ip_unprivileged_port_start", "80")
    actor, info = start_actor(netns)
    assert info["pid"] == actor.pid  # `ip netns exec` execs: Popen's pid is the python process
    pid, child = info["pid"], info["child"]
    s = info["sockets"]
    out = probe(netns, info, "root")

    assert out["settings"] == [40000, 40100, [40050, 40060, 40061], 80]

    by_local: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for sock in out["psutil"]:
        key = (sock["protocol"], sock["local"]["ip"], sock["local"]["port"], sock["state"])
        by_local.setdefault(key, []).append(sock)
    assert len({sock["inode"] for sock in out["psutil"]}) == len(out["psutil"])
    assert all(sock["inode"] < 0 and sock["uid"] is None for sock in out["psutil"])

    def one(protocol: str, ip: str, port: int, state: str,
            remote: dict[str, Any] | None = None) -> dict[str, Any]:
        # connect() may give two connections to different destinations the same
        # local port: a connected socket is told apart by its remote end too.
        found = [x for x in by_local.get((protocol, ip, port, state), [])
                 if remote is None or x["remote"] == remote]
        assert len(found) == 1, (protocol, ip, port, state, remote, out["psutil"])
        return found[0]

    lport, cport = s["lst"]["local"][1], s["cli"]["local"][1]
    lst = one("tcp", "127.0.0.1", lport, "LISTEN")
    assert lst["family"] == "ipv4" and lst["remote"] is None
    assert lst["owners"] in ([pid], [child])  # psutil names one holder of a shared socket
    cli = one("tcp", "127.0.0.1", cport, "ESTABLISHED", ep_dict("127.0.0.1", lport))
    assert cli["owners"] == [pid]
    srv = [x for x in by_local[("tcp", "127.0.0.1", lport, "ESTABLISHED")]]
    assert [x["remote"] for x in srv] == [ep_dict("127.0.0.1", cport)]
    udp = one("udp", "127.0.0.1", s["udp"]["local"][1], "UNCONN")
    assert udp["remote"] is None and udp["owners"] == [pid]
    udpc = one("udp", "127.0.0.1", s["udpc"]["local"][1], "ESTABLISHED",
               ep_dict("127.0.0.1", s["udp"]["local"][1]))
    v6 = one("tcp", "::1", s["v6"]["local"][1], "LISTEN")
    assert v6["family"] == "ipv6" and v6["owners"] == [pid]
    dport = s["dual"]["local"][1]
    dual = one("tcp", "::", dport, "LISTEN")
    assert dual["family"] == "ipv6"
    dsrv = one("tcp", "127.0.0.1", dport, "ESTABLISHED",  # ::ffff:127.0.0.1 normalised
               ep_dict("127.0.0.1", s["dcli"]["local"][1]))
    assert dsrv["family"] == "ipv6"
    dcli = one("tcp", "127.0.0.1", s["dcli"]["local"][1], "ESTABLISHED", ep_dict("127.0.0.1", dport))
    assert dcli["family"] == "ipv4"

    # The /proc walk finds the kernel's inodes: every socket held by the actor,
    # the listener also by its forked child.
    only_parent = {str(x["inode"]): [pid] for n, x in s.items() if n != "lst"}
    holders = sorted([pid, child])
    assert out["every"] == {**only_parent, str(s["lst"]["inode"]): holders}
    assert {k: v for k, v in out["find"].items() if k != str(s["lst"]["inode"])} == only_parent
    lst_owners = out["find"][str(s["lst"]["inode"])]
    assert lst_owners in ([pid], [child], holders)  # early stop may leave out a later holder
    # Collector.attribute on a table with the kernel's inodes gives the same owners.
    assert {k: v for k, v in out["owners"].items() if k != str(s["lst"]["inode"])} == only_parent
    assert set(out["owners"][str(s["lst"]["inode"])]) <= set(holders)
    assert out["processes"][str(pid)]["cmdline"][:2] == [sys.executable, "-c"]
    assert out["processes"][str(pid)]["gone"] is False
    # Even root may be refused some fd tables (e.g. a sandbox's pid 1, under an LSM):
    # then, and only then, the one note says so.
    assert len(out["notes"]) <= 1
    assert all(n.startswith("attribution is partial: ") for n in out["notes"])


def test_real_sockets_seen_by_an_unprivileged_process(netns: NetNS) -> None:
    actor, info = start_actor(netns)
    out = probe(netns, info, "nobody")
    # It still sees the sockets, but not who holds them (the actor runs as root).
    assert out["find"] == {} and out["owners"] == {}
    assert out["denied"] >= 1
    assert len(out["notes"]) == 1
    assert out["notes"][0].startswith("attribution is partial: ")
    ports = {x["local"]["port"] for x in out["psutil"]}
    assert info["sockets"]["lst"]["local"][1] in ports


def test_collector_attribute_reads_processes_of_the_sockets_uid_first(fixture_world: Path) -> None:
    # 555 is held by pid 10 (uid 0 here) and pid 20. The kernel says the socket
    # belongs to uid 4242, and only pid 20 runs as 4242: it is read first, and
    # the walk stops there, before pid 10.
    os.chown(fixture_world / "20", 4242, 4242)
    table = SocketTable(sockets=(tcp(40001, 555, SocketState.LISTEN)._replace(uid=4242),))
    collector = Collector(StaticSource(table), fixture_world, process_factory=fake_factory())
    assert collector.attribute(collector.snapshot(), [555]).owners == {555: (20,)}
    # Without a uid the order is plain pid order: pid 10 first.
    plain = Collector(StaticSource(SocketTable(sockets=(tcp(40001, 555, SocketState.LISTEN),))),
                      fixture_world, process_factory=fake_factory())
    assert plain.attribute(plain.snapshot(), [555]).owners == {555: (10,)}


def test_walk_stops_inside_a_process_once_everything_is_found(fixture_world: Path) -> None:
    # The walk returns as soon as 555 is found in pid 10, without finishing
    # pid 10's table: pid 10 is not marked as read, and a later walk for 777
    # (also in pid 10) reads it again from the start.
    walk = OwnerWalk(fixture_world, frozenset({555, 777}))
    walk.run({555}, stop_early=True)
    assert walk.seen[555] == [10] and 10 not in walk.scanned and 20 not in walk.scanned
    walk.run({777}, stop_early=True)
    assert walk.seen[777] == [10] and walk.seen[555] == [10]


def test_collector_remembers_where_sockets_were_found_across_scans(fixture_world: Path) -> None:
    collector = Collector(StaticSource(TABLE), fixture_world, process_factory=fake_factory())
    assert collector.attribute(collector.snapshot(), [555]).owners == {555: (10,)}
    # A process with a lower pid now holds 555 too: a walk (pid order) would
    # name it first, but the next scan checks pid 10's fd 3 and takes it.
    make_fds(fixture_world, 5, {3: "socket:[555]"})
    assert collector.attribute(collector.snapshot(), [555]).owners == {555: (10,)}
    # Once pid 10 no longer holds it there, the remembered place is stale: walk again.
    os.unlink(fixture_world / "10" / "fd" / "3")
    assert collector.attribute(collector.snapshot(), [555]).owners == {555: (5,)}


def test_collector_does_not_walk_again_for_a_socket_nobody_holds(fixture_world: Path) -> None:
    # 999 is in the table but in no fd table (a kernel socket): one complete walk
    # says so, and later scans do not walk every fd table for it again.
    collector = Collector(StaticSource(TABLE), fixture_world, process_factory=fake_factory())
    assert collector.attribute(collector.snapshot(), [999]).owners == {}
    # Were a walk to happen again it would now find 999 in pid 50.
    os.symlink("socket:[999]", fixture_world / "50" / "fd" / "9")
    assert collector.attribute(collector.snapshot(), [999]).owners == {}
    # A fresh collector (a restarted daemon) walks and finds it.
    fresh = Collector(StaticSource(TABLE), fixture_world, process_factory=fake_factory())
    assert fresh.attribute(fresh.snapshot(), [999]).owners == {999: (50,)}
