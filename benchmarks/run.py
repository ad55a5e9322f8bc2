"""The speed benchmark: every figure of portwatch's speed goals, each against its baseline, in one table.

Usage (as root; it creates and removes its own network namespaces and cgroups)::

    .venv/bin/python benchmarks/run.py                      # 100,000 sockets, 100 namespaces, events
    .venv/bin/python benchmarks/run.py --quick              # CI size: 10,000 sockets, 10 namespaces
    .venv/bin/python benchmarks/run.py --json > result.json
    .venv/bin/python benchmarks/run.py --render result.json  # the table of a saved run
    .venv/bin/python benchmarks/run.py --profile            # plus a cProfile of one first scan
    .venv/bin/python benchmarks/run.py --details            # plus every tool of every size
    .venv/bin/python benchmarks/run.py --events             # the destroy-event listener only

For every size N it creates a private network namespace (``ip netns add``)
with the kernel's default ``ip_local_port_range`` (32768-60999), and starts
"holder" processes inside it that build the socket population: mostly
ESTABLISHED loopback pairs (clients on 127.0.0.1, listeners on ports
8000-8007 of 127.0.0.W, one address per holder) plus about 5 % TIME_WAIT
sockets (capped at 5,000). Each holder runs in its own cgroup (as systemd
runs each service in its own), where a cgroup2 mount allows it. Each holder
stays below its RLIMIT_NOFILE (raised to the hard limit, and the hard limit
raised when the privileges allow), so a large N uses several holders. A few
hundred idle processes with open files (``--idle``) run during the whole
benchmark so that tools that walk ``/proc/PID/fd`` pay for it. Processes
enter the namespace with ``nsenter --net`` (``ip netns exec`` would also
give them a fresh ``/sys`` without the cgroup2 mount).

Then, inside the namespace and interleaved over ``--repeat`` rounds, it
measures one call of each of:

- ``scan``: one full portwatch scan, ``run_scan(Config(), Collector(make_source("auto")))``
  (the daemon's default source: netlink, psutil as fallback) of this healthy
  host: nothing to report, so no process attribution;
- ``scan-findings``: the same scan with the namespace's range widened to
  1024-65535 for the call, which puts the 40 listeners (8 ports) inside it:
  8 findings whose sockets are attributed (first among the processes of the
  sockets' cgroups, then by walking the fd tables), in a fresh process;
- ``scan-steady``: the same, timing the second scan of one collector, as the
  daemon's every scan after its first (remembered fds are checked, no walk);
- ``netlink``: ``NetlinkSource().read()`` alone (the socket table part of the scan);
- ``floor``: the same three sock_diag dumps with a Python loop over the
  netlink headers only (no field parsed, no object built);
- ``cli-json``: ``portwatch scan --format json`` as a whole process;
- ``psutil``: ``psutil.net_connections("inet")``;
- ``ss -tan`` and ``ss -tanp`` (output to /dev/null; ``ss -tan``'s peak RSS from GNU time).

Python calls run in a fresh child process each, timed around the call only
(imports done before), wall clock and CPU time (user+system), with the
child's peak RSS (``ru_maxrss``) and its growth during the call; commands
are timed around fork/exec/wait, CPU from ``wait4``. Then, in an empty
namespace, ``portwatch scan`` against ``python3 -c pass`` as whole processes,
twice: the checkout's (its virtual environment's interpreter and console
script), and the package as installed (``pip install --target`` into a
temporary directory, removed afterwards; ``/usr/bin/python3 -m portwatch
scan`` against ``/usr/bin/python3 -c pass``, with no virtual environment);
the namespaces row (``benchmarks/netns_scale.py``: N namespaces x M sockets,
portwatch's discovery and snapshots against a loop of ``nsenter ... ss
-tan``); and the event listener's rows (``benchmarks/events_bench.py``).
The table (``benchmarks/table.py``) shows each figure, its baseline, their
ratio (CPU time; the median of the rounds' ratios) and the goal. TIME_WAIT
sockets expire after 60 s, so a long run at a large N sees their number
fall. Holders linger with SO_LINGER 0, so tearing a population down leaves
no TIME_WAIT behind; the namespace and cgroups are deleted after each size.

Exit status: 0 on success, 2 for bad arguments or a missing prerequisite
(root, ``ip``, ``ss``, ``nsenter``), 1 when building a population or a measurement fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()
LISTEN_PORTS = (8000, 8001, 8002, 8003, 8004, 8005, 8006, 8007)
#: The namespace's range while building and for the healthy-host scans (the
#: kernel default): the listeners (8000-8007) are outside it, so nothing is
#: wrong and a scan needs no process attribution.
PORT_RANGE = "32768 60999"
#: The range during the "with findings" scans: the 8 listener ports are then
#: inside it, which makes 8 listener_in_ephemeral_range findings whose
#: sockets must be attributed (a walk of the holders' fd tables).
FINDINGS_RANGE = "1024 65535"
MAX_PAIRS_PER_HOLDER = 25000
TOOLS: dict[str, str] = {
    "scan": "portwatch scan (run_scan)",
    "scan-findings": "  with 8 findings, first scan",
    "scan-steady": "  with 8 findings, daemon's next",
    "netlink": "NetlinkSource().read()",
    "floor": "raw dump, headers-only loop",
    "cli-json": "portwatch scan --format json (process)",
    "psutil": "psutil.net_connections('inet')",
    "ss": "ss -tan",
    "ssp": "ss -tanp",
}
#: The probes that run as a Python call in a fresh child; the others are whole commands.
COMMANDS = ("cli-json", "ss", "ssp")


class BenchError(Exception):
    """A population could not be built or a measurement failed; the message says which."""


# ---------------------------------------------------------------- helpers

def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (soft and hard); returns the soft limit reached.

    Raises the hard limit only where the privileges allow (CAP_SYS_RESOURCE)
    and never above ``fs.nr_open``; otherwise settles for the hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        nr_open = hard
    target = min(wanted, nr_open)
    if target > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            pass
    new_soft = min(max(target, soft), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return new_soft


def maxrss_kib() -> int:
    """This process's peak resident set size in KiB."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# ---------------------------------------------------------------- holder (inside the namespace)

def holder(address: str, pairs: int, timewait: int) -> int:
    """Build ``pairs`` ESTABLISHED loopback pairs and ``timewait`` TIME_WAIT sockets on ``address``.

    Prints ``READY {json}`` and holds the sockets until stdin closes or
    SIGTERM. Returns the exit status.
    """
    raise_nofile(2 * pairs + 64)
    try:
        keep = build_population(address, pairs, timewait)
    except BenchError as exc:
        print(f"ERROR {exc}", flush=True)
        return 1
    hold(len(keep))
    return 0


def hold(sockets: int) -> None:
    """Print ``READY {json}`` and wait until stdin closes or SIGTERM."""
    print("READY " + json.dumps({"pid": os.getpid(), "sockets": sockets}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdin.read()  # until the parent closes our stdin


def build_population(address: str, pairs: int, timewait: int) -> list[socket.socket]:
    """The sockets of :func:`holder` (listeners included), in the caller's network namespace.

    Raises BenchError when the listeners do not accept every connection.
    """
    linger0 = struct.pack("ii", 1, 0)
    listeners: list[socket.socket] = []
    for port in LISTEN_PORTS:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((address, port))
        lst.listen(4096)
        lst.setblocking(False)
        listeners.append(lst)
    keep: list[socket.socket] = []

    def drain() -> int:
        got = 0
        for lst in listeners:
            for _ in range(8192):  # bounded: a backlog never holds more
                try:
                    conn, _ = lst.accept()
                except BlockingIOError:
                    break
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
                keep.append(conn)
                got += 1
        return got

    accepted = 0
    for i in range(pairs):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
        client.connect((address, LISTEN_PORTS[i % len(LISTEN_PORTS)]))
        keep.append(client)
        if i % 1024 == 1023:
            accepted += drain()
    for _ in range(1000):
        if accepted >= pairs:
            break
        accepted += drain()
        if accepted < pairs:
            time.sleep(0.01)
    if accepted < pairs:
        raise BenchError(f"accepted only {accepted} of {pairs} connections")
    # TIME_WAIT: the client (active closer) closes first, then the server.
    lst = listeners[0]
    lst.settimeout(10)
    for _ in range(timewait):
        client = socket.create_connection((address, LISTEN_PORTS[0]), timeout=10)
        conn, _ = lst.accept()
        client.close()
        conn.close()
    return keep + listeners


# ---------------------------------------------------------------- probes (inside the namespace)

def probe(kind: str) -> int:
    """Time one call of ``kind`` (scan, netlink, psutil) in this fresh process; print JSON.

    ``scan-profile`` runs a first scan with findings under cProfile instead and prints the top
    functions by own time (the timings then carry the profiler's overhead).
    """
    sys.path.insert(0, str(REPO))
    extra: dict[str, Any] = {}
    call: Callable[[], int]
    profile = kind == "scan-profile"
    if profile:
        kind = "scan-findings"  # the range is set by the caller
    if kind in ("scan", "scan-findings", "scan-steady"):
        from portwatch.collect import Collector, make_source
        from portwatch.config import Config
        from portwatch.scan import run_scan
        config = Config()
        collector = Collector(make_source(config.source))
        if kind == "scan-steady":
            run_scan(config, collector)  # the daemon's previous scan, untimed

        def call() -> int:
            result = run_scan(config, collector)
            extra["findings"] = len(result.findings)
            extra["source"] = result.snapshot.source
            return len(result.snapshot.sockets)
    elif kind == "netlink":
        from portwatch.collect.sources.netlink import NetlinkSource
        source = NetlinkSource()

        def call() -> int:
            return len(source.read().sockets)
    elif kind == "floor":
        import portwatch.collect.netlink  # noqa: F401  (imported before the clock starts)

        def call() -> int:
            return raw_dump_headers()
    elif kind == "psutil":
        import psutil

        def call() -> int:
            return len(psutil.net_connections("inet"))
    else:
        raise SystemExit(f"unknown probe {kind!r}")
    if profile:
        import cProfile
        import io
        import pstats
        profiler = cProfile.Profile()
        profiler.runcall(call)
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
        print(text.getvalue())
        return 0
    before = maxrss_kib()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    count = call()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    after = maxrss_kib()
    print(json.dumps({"wall": wall, "cpu": cpu, "maxrss_kib": after,
                      "rss_growth_kib": after - before, "count": count, **extra}))
    return 0


def raw_dump_headers() -> int:
    """The floor of a socket table read in Python: the same three sock_diag dumps as
    ``NetlinkSource`` (TCP of both families, UDP v4, UDP v6), received into one buffer, with a
    loop over the netlink message headers only (no field parsed, no object built); returns the
    number of socket messages."""
    from portwatch.collect import netlink as nl

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, nl.NETLINK_SOCK_DIAG)
    buf = bytearray(1 << 17)
    header = struct.Struct("=IH").unpack_from
    count = 0
    requests = [nl.build_tcp_request(1, nl.TCP_STATES_MASK),
                nl.build_request(2, socket.AF_INET, socket.IPPROTO_UDP, nl.UDP_STATES_MASK),
                nl.build_request(3, socket.AF_INET6, socket.IPPROTO_UDP, nl.UDP_STATES_MASK)]
    try:
        for request in requests:
            sock.sendto(request, (0, 0))
            done = False
            while not done:
                n = sock.recv_into(buf)
                off = 0
                while off < n:
                    length, kind = header(buf, off)
                    if kind == nl.NLMSG_DONE or kind == nl.NLMSG_ERROR:
                        done = True
                        break
                    count += 1
                    off += (length + 3) & ~3
    finally:
        sock.close()
    return count


def portwatch_command() -> list[str]:
    """How the ``portwatch`` command is started: the checkout's console script, else ``python -m portwatch``."""
    script = REPO / ".venv" / "bin" / "portwatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "portwatch"]


def peak_rss_kib(args: Sequence[str]) -> int | None:
    """The peak RSS of one run of ``args`` (output discarded), from GNU time; None without it."""
    time_cmd = shutil.which("time") or "/usr/bin/time"
    if not Path(time_cmd).exists():
        return None
    proc = subprocess.run([time_cmd, "-f", "%M", *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=600)
    lines = proc.stderr.strip().splitlines()
    return int(lines[-1]) if proc.returncode == 0 and lines and lines[-1].isdigit() else None


@dataclass
class Run:
    """One timed call."""

    wall: float
    cpu: float
    maxrss_kib: int | None
    rss_growth_kib: int | None
    count: int | None
    extra: dict[str, Any]


def run_probe(kind: str) -> Run:
    """Run one Python probe in a child process; raises BenchError when it fails."""
    proc = subprocess.run([sys.executable, str(HERE), "--_probe", kind], capture_output=True,
                          text=True, timeout=600, cwd=REPO)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"probe {kind} failed: {tail}")
    doc = json.loads(proc.stdout)
    extra = {k: v for k, v in doc.items()
             if k not in ("wall", "cpu", "maxrss_kib", "rss_growth_kib", "count")}
    return Run(doc["wall"], doc["cpu"], doc["maxrss_kib"], doc["rss_growth_kib"], doc["count"],
               extra)


def run_command(args: Sequence[str], env: Mapping[str, str] | None = None, ok: Sequence[int] = (0,),
                cwd: str | Path | None = None) -> Run:
    """Time one run of a command (output discarded): wall, and CPU (user and system in ``extra``)
    from wait4. ``env``: the command's environment (default: this process's); ``ok``: the exit
    statuses that are not an error (``portwatch scan`` exits 1 when it finds something);
    ``cwd``: its working directory (default: this process's)."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in ok:
        raise BenchError(f"{' '.join(args)[:200]} exited with status {proc.returncode}")
    # (no peak RSS: wait4's ru_maxrss would count the forked Python before exec)
    return Run(wall, usage.ru_utime + usage.ru_stime, None, None, None,
               {"user": usage.ru_utime, "sys": usage.ru_stime})


#: The interpreter an installed portwatch runs on (the Debian package's); else the one the venv was made from.
INSTALLED_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else os.path.realpath(sys.executable)


def cached_env() -> dict[str, str]:
    """This process's environment without ``PYTHONDONTWRITEBYTECODE``: a timed command runs with
    the bytecode cache an installed package has (its warm-up run writes it), not compiling every module."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def startup(rounds: int, installed: str | None = None) -> int:
    """Inside an empty namespace: ``portwatch scan`` and ``python3 -c pass``, ``rounds`` pairs
    in turn after one warm-up each, as whole processes; print JSON (medians and every round).

    Both run without ``PYTHONDONTWRITEBYTECODE``, so the warm-up leaves the
    bytecode cache an installed package has (with it, every run of the
    checkout would compile portwatch's modules again). With ``installed``
    (a directory the package was installed into, see :func:`install_package`)
    the same rounds also time :data:`INSTALLED_PYTHON` ``-m portwatch scan``
    against :data:`INSTALLED_PYTHON` ``-c pass``, both with only that directory
    on ``PYTHONPATH`` and run from it: portwatch as an installed package runs,
    without the checkout's virtual environment and its editable install's
    path finder (``doc["installed"]``).
    """
    env = cached_env()
    commands: dict[str, tuple[list[str], dict[str, str], str | None]] = {
        "portwatch": ([*portwatch_command(), "scan"], env, None),
        "python": ([sys.executable, "-c", "pass"], env, None)}
    if installed is not None:
        inst_env = {**env, "PYTHONPATH": installed}
        found = subprocess.run([INSTALLED_PYTHON, "-c", "import portwatch; print(portwatch.__file__)"],
                               capture_output=True, text=True, env=inst_env, cwd=installed, check=True)
        if not found.stdout.strip().startswith(installed):
            raise BenchError(f"the installed package is not the one imported: {found.stdout.strip()}")
        commands["installed_portwatch"] = ([INSTALLED_PYTHON, "-m", "portwatch", "scan"], inst_env, installed)
        commands["installed_python"] = ([INSTALLED_PYTHON, "-c", "pass"], inst_env, installed)
    runs: dict[str, list[Run]] = {k: [] for k in commands}
    for args, cmd_env, cwd in commands.values():
        run_command(args, cmd_env, cwd=cwd)  # warm-up: the page cache, the bytecode cache
    for _ in range(rounds):
        for key, (args, cmd_env, cwd) in commands.items():
            runs[key].append(run_command(args, cmd_env, cwd=cwd))
    figures = {key: {"cpu": median([r.cpu for r in rs]), "wall": median([r.wall for r in rs]),
                     "user": median([r.extra["user"] for r in rs]),
                     "sys": median([r.extra["sys"] for r in rs]),
                     "cpu_runs": [r.cpu for r in rs], "wall_runs": [r.wall for r in rs]}
               for key, rs in runs.items()}
    doc: dict[str, Any] = {"portwatch": figures["portwatch"], "python": figures["python"]}
    if installed is not None:
        doc["installed"] = {"portwatch": figures["installed_portwatch"], "python": figures["installed_python"],
                            "interpreter": INSTALLED_PYTHON}
    print(json.dumps(doc))
    return 0


def install_package(target: Path) -> None:
    """Install the checkout's package (no dependencies) into ``target`` as pip installs it, bytecode
    compiled. The sources are copied next to it first, so the build leaves nothing in the checkout.
    Raises BenchError when pip fails."""
    source = target.parent / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):  # setup.py: the C loop, built
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "portwatch", source / "portwatch", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                           str(target), str(source)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"pip install --target {target} failed: {tail}")


def set_range(text: str) -> None:
    """Set this namespace's ``ip_local_port_range`` (we run inside it, as root)."""
    Path("/proc/sys/net/ipv4/ip_local_port_range").write_text(text + "\n")


def measure(repeat: int, profile: bool) -> int:
    """Inside the namespace: every tool ``repeat`` times, interleaved; print JSON.

    With ``profile``, one more scan runs under cProfile and its report is
    included (``scan_profile``)."""
    ss = shutil.which("ss") or "/usr/bin/ss"
    runs: dict[str, list[Run]] = {k: [] for k in TOOLS}
    errors: dict[str, str] = {}
    for _ in range(repeat):
        for kind in TOOLS:
            if kind in errors:
                continue
            try:
                if kind in ("scan-findings", "scan-steady"):
                    set_range(FINDINGS_RANGE)
                    try:
                        runs[kind].append(run_probe(kind))
                    finally:
                        set_range(PORT_RANGE)
                elif kind == "cli-json":
                    runs[kind].append(run_command(
                        [*portwatch_command(), "scan", "--format", "json", "--fail-on", "never"]))
                elif kind == "ss":
                    runs[kind].append(run_command([ss, "-tan"]))
                elif kind == "ssp":
                    runs[kind].append(run_command([ss, "-tanp"]))
                else:
                    runs[kind].append(run_probe(kind))
            except (BenchError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as exc:
                errors[kind] = str(exc)
    listed = subprocess.run([ss, "-tanH"], capture_output=True, text=True, timeout=600)
    ss_count = listed.stdout.count("\n")
    out: dict[str, Any] = {"ss_tcp_sockets": ss_count, "ss_maxrss_kib": peak_rss_kib([ss, "-tan"]),
                           "tools": {}}
    if profile:
        set_range(FINDINGS_RANGE)
        try:
            prof = subprocess.run([sys.executable, str(HERE), "--_probe", "scan-profile"],
                                  capture_output=True, text=True, timeout=600, cwd=REPO)
        finally:
            set_range(PORT_RANGE)
        out["scan_profile"] = prof.stdout if prof.returncode == 0 else prof.stderr
    for kind, label in TOOLS.items():
        rs = runs[kind]
        if not rs:
            out["tools"][kind] = {"label": label, "error": errors.get(kind, "no runs")}
            continue
        growth = [r.rss_growth_kib for r in rs if r.rss_growth_kib is not None]
        peaks = [r.maxrss_kib for r in rs if r.maxrss_kib is not None]
        counts = [r.count for r in rs if r.count is not None]
        out["tools"][kind] = {
            "label": label,
            "wall": median([r.wall for r in rs]),
            "cpu": median([r.cpu for r in rs]),
            "wall_runs": [r.wall for r in rs],
            "cpu_runs": [r.cpu for r in rs],
            "maxrss_kib": max(peaks) if peaks else None,
            "rss_growth_kib": max(growth) if growth else None,
            "count": counts[-1] if counts else None,
            "count_runs": counts,
            "extra": rs[-1].extra,
            "error": errors.get(kind),
        }
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------- orchestration (root namespace)

class Namespace:
    """A network namespace of our own, with the processes we started in it."""

    def __init__(self) -> None:
        self.name = f"pwbench-{uuid.uuid4().hex[:8]}"
        self.procs: list[subprocess.Popen[str]] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True,
                           capture_output=True)
            self.run(["sh", "-c", f"echo '{PORT_RANGE}' > /proc/sys/net/ipv4/ip_local_port_range"])
        except BaseException:
            self.close()
            raise

    def wrap(self, args: Sequence[str]) -> list[str]:
        """``args`` run inside the namespace: ``nsenter --net``, which changes the network namespace
        only (``ip netns exec`` also makes a mount namespace with a fresh ``/sys``, which hides
        the cgroup2 mount a scan narrows its owner search with, as the daemon never is)."""
        return ["nsenter", f"--net=/run/netns/{self.name}", *args]

    def env(self) -> dict[str, str]:
        """Environment with the repository importable."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        return env

    def run(self, args: Sequence[str], timeout: float = 1800) -> str:
        """Run to completion inside; returns stdout; raises BenchError on failure."""
        proc = subprocess.run(self.wrap(args), capture_output=True, text=True, timeout=timeout,
                              env=self.env(), cwd=REPO)
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(args[:3])}... failed in {self.name}: "
                             f"{proc.stderr.strip()[-500:]}")
        return proc.stdout

    def start_holder(self, address: str, pairs: int, timewait: int,
                     cgroup: Path | None = None) -> subprocess.Popen[str]:
        """Start one holder inside (not waiting for it), in ``cgroup`` when given (it joins before exec)."""
        def join() -> None:  # in the child, before exec: "0" is the writing process
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text("0")

        proc = subprocess.Popen(
            self.wrap([sys.executable, str(HERE), "--_holder", address, str(pairs), str(timewait)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self.env(), cwd=REPO,
            preexec_fn=join if cgroup is not None else None)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Stop our holders (by pid: stdin closed, then SIGTERM, then SIGKILL) and delete the namespace."""
        for proc in self.procs:
            stop(proc)
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


class HolderCgroups:
    """One cgroup per holder under the cgroup2 mount, as systemd gives each service its own
    (the first scan finds a listener's owner among its cgroup's processes); none where there
    is no writable cgroup2 mount (``base`` is then None and every holder stays in ours)."""

    def __init__(self) -> None:
        self.base: Path | None = None
        mount = next((Path(line.split()[4]) for line in Path("/proc/self/mountinfo").read_text().splitlines()
                      if " - cgroup2 " in line), None)
        if mount is None:
            return
        base = mount / f"pwbench-{uuid.uuid4().hex[:8]}"
        try:
            base.mkdir()
        except OSError:
            return
        self.base = base

    def make(self, index: int) -> Path | None:
        """The cgroup of holder ``index`` (created), or None without cgroups."""
        if self.base is None:
            return None
        path = self.base / f"holder-{index}"
        path.mkdir()
        return path

    def close(self) -> None:
        """Move what is left to the mount's root cgroup, then remove every directory, deepest first."""
        if self.base is None:
            return
        for path in sorted(self.base.glob("holder-*")) + [self.base]:
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    (self.base.parent / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # exited meanwhile
            try:
                path.rmdir()
            except OSError:
                pass


def stop(proc: subprocess.Popen[str], grace: float = 10) -> None:
    """Stop one process we started, by pid: close its stdin (a holder exits on
    EOF) and wait, then SIGTERM, then SIGKILL."""
    signals: list[signal.Signals | None] = [signal.SIGTERM, signal.SIGKILL]
    if proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass
        signals.insert(0, None)
    for sig in signals:
        if proc.poll() is not None:
            break
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    if proc.stdout is not None:
        proc.stdout.close()


def wait_ready(procs: Sequence[subprocess.Popen[str]], timeout: float) -> int:
    """Wait for every holder's READY line; returns the sockets they report. Raises BenchError."""
    total = 0
    deadline = time.monotonic() + timeout
    for proc in procs:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            raise BenchError(f"holder {proc.pid} not ready after {timeout:.0f}s")
        sel.close()
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise BenchError(f"holder {proc.pid} failed: {line.strip() or 'exited'}")
        total += int(json.loads(line[len("READY "):])["sockets"])
    return total


def start_idle(count: int) -> list[subprocess.Popen[str]]:
    """Start ``count`` idle processes (sleep) that each hold 7 open files."""
    files = [str(HERE), "/dev/null", "/dev/zero", str(HERE), str(REPO / "pyproject.toml")]
    redirs = " ".join(f"{fd}<'{files[(fd - 3) % len(files)]}'" for fd in range(3, 10))
    procs = []
    for _ in range(count):
        procs.append(subprocess.Popen(["sh", "-c", f"exec {redirs}; exec sleep 86400"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      text=True))
    return procs


@dataclass(frozen=True)
class Plan:
    """What one size's population is made of."""

    requested: int
    established: int
    timewait: int
    holders: int
    pairs_per_holder: list[int]
    timewait_per_holder: list[int]


def plan(n: int, fd_limit: int) -> Plan:
    """Split ``n`` sockets into ESTABLISHED pairs and TIME_WAIT over enough holders."""
    timewait = min(5000, n * 5 // 100)
    listeners_guess = len(LISTEN_PORTS)
    pairs = max(1, (n - timewait - listeners_guess) // 2)
    per_holder = max(1, min(MAX_PAIRS_PER_HOLDER, (fd_limit - 64 - len(LISTEN_PORTS)) // 2))
    holders = -(-pairs // per_holder)
    split = [pairs // holders + (1 if i < pairs % holders else 0) for i in range(holders)]
    tw = [timewait // holders + (1 if i < timewait % holders else 0) for i in range(holders)]
    return Plan(n, 2 * pairs, timewait, holders, split, tw)


def bench_size(n: int, repeat: int, fd_limit: int, log: Callable[[str], None],
               profile: bool = False) -> dict[str, Any]:
    """Build one population in a fresh namespace, measure, tear down; returns the results."""
    p = plan(n, fd_limit)
    ns = Namespace()
    cgroups = HolderCgroups()
    try:
        log(f"N={n:,}: building {p.established:,} ESTABLISHED + {p.timewait:,} TIME_WAIT "
            f"with {p.holders} holder(s) in {ns.name}"
            + (", each in its own cgroup" if cgroups.base is not None else ""))
        t0 = time.monotonic()
        procs = [ns.start_holder(f"127.0.0.{i + 1}", pairs, tw, cgroups.make(i))
                 for i, (pairs, tw) in enumerate(zip(p.pairs_per_holder, p.timewait_per_holder))]
        held = wait_ready(procs, timeout=600)
        log(f"N={n:,}: built in {time.monotonic() - t0:.1f}s; measuring ({repeat} rounds)")
        result: dict[str, Any] = json.loads(
            ns.run([sys.executable, str(HERE), "--_measure", str(repeat),
                    "profile" if profile else "-"]))
        result.update({"requested": n, "established": p.established, "timewait": p.timewait,
                       "listeners": p.holders * len(LISTEN_PORTS), "holders": p.holders,
                       "held_with_fds": held, "holder_cgroups": cgroups.base is not None})
        return result
    finally:
        ns.close()
        cgroups.close()


def add_ratios(size: dict[str, Any], interval: float) -> None:
    """Ratios against ``ss -tan`` and the daemon's CPU share, in place."""
    tools = size["tools"]
    base = tools.get("ss", {})
    for entry in tools.values():
        if "wall" in entry and base.get("wall"):
            entry["wall_vs_ss_tan"] = entry["wall"] / base["wall"]
            entry["cpu_vs_ss_tan"] = entry["cpu"] / base["cpu"] if base.get("cpu") else None
    scan = tools.get("scan", {})
    size["daemon_cpu_share"] = scan["cpu"] / interval if "cpu" in scan else None


def render(doc: dict[str, Any], details: bool = False) -> str:
    """The one table (every figure against its baseline), then with ``details`` each population's tools."""
    env = doc["environment"]
    load = env.get("load") or []
    lines = [f"portwatch benchmark - {env['kernel']}, {env['cpus']} CPUs, Python "
             f"{env['python']}, psutil {env['psutil']}, {env['ss']}"
             + (f", {env['classifier']} classifier" if "classifier" in env else ""),
             f"medians of {doc['repeat']} interleaved rounds; {doc['idle_processes']} idle processes with "
             f"7 open files each; RLIMIT_NOFILE per holder {doc['fd_limit']:,}"
             + (f"; load average {load[0]:.1f} at the start, {doc.get('load_end', [0])[0]:.1f} at the end"
                if load else ""), ""]
    lines += table_module().render(doc)
    lines.append("")
    for size in doc["sizes"] if details or doc.get("profile") else []:
        if not details:
            if size.get("scan_profile"):
                lines.append(f"profile of one first scan with findings, N = {size['requested']:,}:")
                lines.extend("    " + line for line in size["scan_profile"].strip().splitlines())
            continue
        seen = size["tools"].get("netlink", {}).get("count_runs") or []
        seen_text = (f"{min(seen):,}" if seen and min(seen) == max(seen)
                     else f"{min(seen):,}-{max(seen):,} over the rounds" if seen else "?")
        lines.append(
            f"N = {size['requested']:,}: {size['established']:,} ESTABLISHED + "
            f"{size['timewait']:,} TIME_WAIT + {size['listeners']} listeners in "
            f"{size['holders']} holder process(es); sockets seen: "
            f"{seen_text} (ss -tan lists {size['ss_tcp_sockets']:,})")
        lines.append(f"  {'':34} {'wall s':>8} {'CPU s':>8} {'wall/ss':>8} {'CPU/ss':>8} "
                     f"{'peak RSS':>9} {'RSS +':>8}")
        for kind, entry in size["tools"].items():
            if entry.get("error") and "wall" not in entry:
                lines.append(f"  {entry['label']:34} n/a: {entry['error']}")
                continue
            growth = entry.get("rss_growth_kib")
            peak = entry.get("maxrss_kib")
            ratio_w = entry.get("wall_vs_ss_tan")
            ratio_c = entry.get("cpu_vs_ss_tan")
            lines.append(
                f"  {entry['label']:34} {entry['wall']:8.3f} {entry['cpu']:8.3f} "
                f"{(f'{ratio_w:.2f}x' if ratio_w else '-'):>8} "
                f"{(f'{ratio_c:.2f}x' if ratio_c else '-'):>8} "
                f"{(f'{peak / 1024:.1f}MiB' if peak is not None else '-'):>9} "
                f"{(f'{growth / 1024:.1f}MiB' if growth is not None else '-'):>8}"
                + (f"  ({entry['error']})" if entry.get("error") else ""))
        scan = size["tools"].get("scan", {})
        if size.get("daemon_cpu_share") is not None:
            extra = scan.get("extra", {})
            lines.append(f"  daemon CPU share at {doc['interval']:g} s interval: "
                         f"{100 * size['daemon_cpu_share']:.2f} % of one CPU "
                         f"(scan source {extra.get('source', '?')}, "
                         f"{extra.get('findings', '?')} findings)")
        if size.get("scan_profile"):
            lines.append("  profile of one scan:")
            lines.extend("    " + line for line in size["scan_profile"].strip().splitlines())
        lines.append("")
    if details and doc.get("namespaces"):
        lines.extend(netns_scale().render(doc["namespaces"]))
        lines.append("")
    return "\n".join(lines)


def table_module() -> Any:
    """``benchmarks/table.py`` (the one table)."""
    sys.path.insert(0, str(HERE.parent))
    import table
    return table


def netns_scale() -> Any:
    """The namespace row's module (``benchmarks/netns_scale.py``), which imports this one as ``run``."""
    # As a script this module is __main__; let ``import run`` there find it, not a second copy
    # (whose BenchError the handlers here would not catch).
    sys.modules.setdefault("run", sys.modules[__name__])
    sys.path.insert(0, str(HERE.parent))
    import netns_scale as module
    return module


def environment() -> dict[str, Any]:
    """Kernel, CPUs, versions."""
    try:
        import psutil
        psutil_version = psutil.__version__
    except ImportError:
        psutil_version = "missing"
    ss = subprocess.run(["ss", "-V"], capture_output=True, text=True).stdout.strip()
    sys.path.insert(0, str(REPO))
    from portwatch.collect.netlink import ACCELERATOR  # the checkout's: what the rows measure
    return {"kernel": f"Linux {platform.release()}", "cpus": os.cpu_count(),
            "python": platform.python_version(), "psutil": psutil_version, "ss": ss,
            "classifier": "C" if ACCELERATOR is not None else "pure-Python",
            "load": list(os.getloadavg())}


def parse_sizes(text: str) -> list[int]:
    """``1000,10k,100000`` -> [1000, 10000, 100000]; ``none`` -> []; raises ValueError with a clear message."""
    if text.strip().lower() == "none":
        return []
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1000 if part.endswith("k") else 1
        digits = part[:-1] if part.endswith("k") else part
        if not digits.isdigit() or not 100 <= int(digits) * mult <= 1_000_000:
            raise ValueError(f"size {part!r} is not a whole number between 100 and 1,000,000")
        sizes.append(int(digits) * mult)
    return sizes


def bench_startup(rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The start-up rows: :func:`startup` run inside a fresh, empty namespace, the checkout's and
    the package installed into a temporary directory (removed at the end)."""
    with tempfile.TemporaryDirectory(prefix="pwbench-") as tmp:
        installed = Path(tmp) / "site"
        log(f"start-up: installing the package into {installed}")
        install_package(installed)
        ns = Namespace()
        try:
            log(f"start-up: portwatch scan and python3 -c pass in the empty {ns.name}, {rounds} rounds, "
                f"from the checkout and installed")
            doc: dict[str, Any] = json.loads(ns.run([sys.executable, str(HERE), "--_startup", str(rounds),
                                                     str(installed)]))
            return doc
        finally:
            ns.close()


def only_startup(rounds: int, as_json: bool, log: Callable[[str], None]) -> int:
    """``--only startup``: the start-up row alone, as its table line (user and system CPU too) or JSON."""
    try:
        doc = bench_startup(rounds, log)
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        print(f"benchmarks/run.py: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(doc, indent=2))
        return 0
    print(" | ".join(table_module().startup_row(doc)))
    for key, label in (("portwatch", "portwatch scan"), ("python", "python3 -c pass")):
        print(f"  {label}: {1000 * doc[key]['user']:.0f} ms user + {1000 * doc[key]['sys']:.0f} ms system (medians)")
    if "installed" in doc:
        inst = doc["installed"]
        print(" | ".join(table_module().installed_startup_row(inst)))
        for key, label in (("portwatch", f"{inst['interpreter']} -m portwatch scan"),
                           ("python", f"{inst['interpreter']} -c pass")):
            print(f"  {label}: {1000 * inst[key]['user']:.0f} ms user + {1000 * inst[key]['sys']:.0f} ms system "
                  f"(medians)")
    return 0


def events_doc(quick: bool) -> dict[str, Any]:
    """The event listener's rows (``benchmarks/events_bench.py``'s :func:`bench`): the full
    rates, or with ``quick`` one short paced rate and a small burst."""
    sys.path.insert(0, str(HERE.parent))
    import events_bench

    if quick:
        doc: dict[str, Any] = events_bench.bench([5_000], 1.0, 5_000)
    else:
        doc = events_bench.bench(TABLE_EVENT_RATES, 2.0, 30_000)
    return doc


#: The paced rates of ``--events`` (events/s), as ``events_bench.py`` uses them.
EVENT_RATES = [10_000, 20_000, 30_000, 45_000, 60_000, 90_000]
#: Those of the table's event rows: fewer, shorter (each variant stops at its first drop).
TABLE_EVENT_RATES = [10_000, 30_000, 90_000]


def bench_events(as_json: bool) -> int:
    """The ``--events`` rows: the destroy-event listener (``benchmarks/events_bench.py``); exit status.

    CPU seconds per 10,000 events and sustained events/s before drops, with
    and without CAP_NET_ADMIN, in a private namespace (see that module).
    """
    sys.path.insert(0, str(HERE.parent))
    import events_bench

    doc = events_bench.bench(EVENT_RATES, 3.0, 30_000)
    print(json.dumps(doc, indent=2) if as_json else events_bench.render(doc))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # internal roles, run in children inside a namespace
    if args_list[:1] == ["--_holder"] and len(args_list) == 4:
        return holder(args_list[1], int(args_list[2]), int(args_list[3]))
    if args_list[:1] == ["--_probe"] and len(args_list) == 2:
        return probe(args_list[1])
    if args_list[:1] == ["--_measure"] and len(args_list) == 3:
        return measure(int(args_list[1]), args_list[2] == "profile")
    if args_list[:1] == ["--_startup"] and len(args_list) in (2, 3):
        return startup(int(args_list[1]), args_list[2] if len(args_list) == 3 else None)
    if args_list[:1] == ["--_ns_holder"] and len(args_list) == 3:
        return int(netns_scale().ns_holder(int(args_list[1]), args_list[2].split(",")))
    if args_list[:1] == ["--_ns_probe"] and len(args_list) == 2:
        return int(netns_scale().probe(args_list[1].split(",")))

    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Measure one portwatch scan against psutil and ss on large socket "
                    "populations built in private network namespaces (needs root).")
    parser.add_argument("--quick", action="store_true",
                        help="a CI-size run: 10,000 sockets, 10 namespaces x 200, a short event run, "
                             "fewer idle processes (other flags given still apply)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated socket counts (default: 100000, --quick 10000; '10k' works; "
                             "the table shows the largest)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds per measurement; medians are reported (default: %(default)s)")
    parser.add_argument("--idle", type=int, default=None,
                        help="idle processes with open files (default: 300, --quick 50)")
    parser.add_argument("--details", action="store_true",
                        help="after the table, every population's tools and the namespace rows")
    parser.add_argument("--no-events", action="store_true",
                        help="leave out the event listener's rows")
    parser.add_argument("--interval", type=float, default=15.0,
                        help="daemon scan interval for the CPU share, seconds (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--render", metavar="FILE", type=Path,
                        help="print the table of an earlier --json output and exit")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one scan per size (cProfile, top 20 by own time)")
    parser.add_argument("--namespaces", type=int, default=None, metavar="N",
                        help="namespaces measured against a loop of nsenter + ss -tan (default: 100, "
                             "--quick 10; 0 leaves the row out; see benchmarks/netns_scale.py)")
    parser.add_argument("--ns-sockets", type=int, default=None, metavar="M",
                        help="sockets per namespace for --namespaces (default: 1000, --quick 200)")
    parser.add_argument("--only", choices=["startup", "namespaces"],
                        help="measure only this row: startup = `portwatch scan` in an empty namespace against "
                             "`python3 -c pass`, 4 x --repeat rounds (quick; needs root); namespaces = "
                             "--namespaces N x --ns-sockets M against the nsenter + ss loop")
    parser.add_argument("--events", action="store_true",
                        help="measure only the socket-destroy event listener "
                             "(CPU per 10,000 events, sustained events/s before drops)")
    args = parser.parse_args(args_list)
    quick = args.quick
    if args.sizes is None:
        args.sizes = "10000" if quick else "100000"
    if args.idle is None:
        args.idle = 50 if quick else 300
    if args.namespaces is None:
        args.namespaces = 10 if quick else 100
    if args.ns_sockets is None:
        args.ns_sockets = 200 if quick else 1000
    if args.events and os.geteuid() == 0:
        return bench_events(args.json)
    if args.render is not None:
        try:
            print(render(json.loads(args.render.read_text()), args.details))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"benchmarks/run.py: cannot render {args.render}: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        sizes = parse_sizes(args.sizes)
    except ValueError as exc:
        parser.error(str(exc))
    if not 1 <= args.repeat <= 100:
        parser.error("--repeat must be between 1 and 100")
    if not 0 <= args.idle <= 5000:
        parser.error("--idle must be between 0 and 5000")
    if not args.interval > 0:
        parser.error("--interval must be positive")
    if not 0 <= args.namespaces <= 1000 or not 16 <= args.ns_sockets <= 20000:
        parser.error("--namespaces must be 0..1000 and --ns-sockets 16..20000")
    if os.geteuid() != 0:
        print("benchmarks/run.py: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "ss", "nsenter"):
        if shutil.which(tool) is None:
            print(f"benchmarks/run.py: needs {tool} (iproute2)", file=sys.stderr)
            return 2

    def log(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    if args.only == "startup":
        return only_startup(args.repeat * 4, args.json, log)
    if args.only == "namespaces":
        fd_limit = raise_nofile(2 * MAX_PAIRS_PER_HOLDER + 64 + len(LISTEN_PORTS))
        ns_doc = netns_scale().bench(args.namespaces, args.ns_sockets, args.repeat, fd_limit, log)
        print(json.dumps(ns_doc, indent=2) if args.json else "\n".join(netns_scale().render(ns_doc)))
        return 0

    fd_limit = raise_nofile(2 * MAX_PAIRS_PER_HOLDER + 64 + len(LISTEN_PORTS))
    doc: dict[str, Any] = {"environment": environment(), "repeat": args.repeat,
                           "interval": args.interval, "idle_processes": args.idle,
                           "fd_limit": fd_limit, "sizes": []}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the finally blocks
    idle: list[subprocess.Popen[str]] = []
    try:
        idle = start_idle(args.idle)
        for n in sizes:
            size = bench_size(n, args.repeat, fd_limit, log, args.profile)
            add_ratios(size, args.interval)
            doc["sizes"].append(size)
        doc["startup"] = bench_startup(args.repeat * 2, log)
        if args.namespaces:
            doc["namespaces"] = netns_scale().bench(args.namespaces, args.ns_sockets,
                                                    args.repeat, fd_limit, log)
        if not args.no_events:
            log("events: the destroy-event listener's rows")
            doc["events"] = events_doc(quick)
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        print(f"benchmarks/run.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmarks/run.py: interrupted", file=sys.stderr)
        return 1
    finally:
        for proc in idle:  # SIGTERM all first, then reap each
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in idle:
            stop(proc, grace=5)
    doc["load_end"] = list(os.getloadavg())
    doc["profile"] = args.profile
    print(json.dumps(doc, indent=2) if args.json else render(doc, args.details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
