"""HTTP endpoint benchmark: real scrapes of ``portwatch run`` while the endpoint is attacked.

Usage (as root; it creates and removes its own network namespace)::

    .venv/bin/python benchmarks/http.py                 # every scenario, about 3 minutes
    .venv/bin/python benchmarks/http.py --quick         # shorter load phase and fewer probes

It creates a private network namespace (``ip netns add``), starts two
daemons in it (``portwatch run``: one plain on 127.0.0.1:9731, one with a
basic-auth user whose bcrypt hash has cost 12, the documented recipe, on
127.0.0.1:9732) and re-runs itself inside the namespace. There it measures
"probes": real scrapes of ``/metrics`` (a new connection each, 5 s client
timeout), one every 50 ms; a probe succeeds when it gets a 200 within 1 s.
First undisturbed, then under each attack of issue 9's table, each attack
run by a separate process so that its work does not slow the probing
process down:

- ``trickle-64`` / ``trickle-1000``: connections that each send one header line every 10 s;
- ``stall-200`` / ``stall-1000``: clients that connect, send half a request
  line and stall, reconnecting as soon as the server closes them;
- ``simultaneous-10`` / ``-50``: that many scrapes started at the same instant (all must be within 1 s);
- ``load-100``: 100 clients scraping back to back for 30 s (errors, p99);
- ``guess-64``: 64 clients (64 source addresses 127.0.1.x) guessing passwords
  on the auth daemon while probes scrape it with the right password;
- ``timing``: an unknown user vs a known user with a wrong password (median
  of 21 each, alternating which goes first, from a fresh source address each so that the failure limit does not answer);
- ``garbage``: random bytes, the HTTP/2 preface, a TLS hello and an HTTP/0.9
  request: the status line received and how long until the server closed.

Each row prints success and latency beside the undisturbed figures of the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the standard library's http package: run as a
# script, its directory must not shadow it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import base64  # noqa: E402
import http.client  # noqa: E402
import multiprocessing
import os
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
PLAIN = ("127.0.0.1", 9731)
AUTH = ("127.0.0.1", 9732)
USER, PASSWORD = "prometheus", "scrape-secret"


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def scrape(address: tuple[str, int], auth: str | None = None, source: str | None = None,
           timeout: float = 5.0) -> tuple[int, float]:
    """One scrape on a new connection: (status or 0 on error, seconds)."""
    start = time.monotonic()
    try:
        conn = http.client.HTTPConnection(*address, timeout=timeout,
                                          source_address=(source, 0) if source else None)
        conn.request("GET", "/metrics", headers={"Authorization": auth} if auth else {})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response.status, time.monotonic() - start
    except OSError:
        return 0, time.monotonic() - start


def probe(address: tuple[str, int], count: int, auth: str | None = None) -> list[tuple[int, float]]:
    """``count`` scrapes, one every 50 ms."""
    results = []
    for _ in range(count):
        results.append(scrape(address, auth))
        time.sleep(0.05)
    return results


# --------------------------------------------------------------------------- attackers (child processes)


def _trickle(address: tuple[str, int], count: int, stop: "multiprocessing.synchronize.Event") -> None:
    """``count`` connections, each sending one header line every 10 s (reconnecting when closed)."""
    _raise_fd_limit()
    socks: list[socket.socket] = []
    next_line = 0.0
    while not stop.is_set():
        while len(socks) < count and not stop.is_set():
            try:
                s = socket.create_connection(address, timeout=2)
                s.sendall(b"GET /metrics HTTP/1.1\r\n")
                socks.append(s)
            except OSError:
                time.sleep(0.01)
        if time.monotonic() >= next_line:
            next_line = time.monotonic() + 10
            alive = []
            for s in socks:
                try:
                    s.sendall(b"X-Trickle: 1\r\n")
                    alive.append(s)
                except OSError:
                    s.close()
            socks = alive
        stop.wait(0.2)
    for s in socks:
        s.close()


def _stall(address: tuple[str, int], count: int, stop: "multiprocessing.synchronize.Event") -> None:
    """``count`` clients that send half a request line and stall, reconnecting when the server closes them."""
    _raise_fd_limit()
    sel = selectors.DefaultSelector()

    def connect() -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex(address)
            sel.register(s, selectors.EVENT_WRITE, "connecting")
        except OSError:
            s.close()

    for _ in range(count):
        connect()
    while not stop.is_set():
        for key, _ in sel.select(0.2):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if key.data == "connecting":
                try:
                    s.send(b"GET /metr")
                    sel.modify(s, selectors.EVENT_READ, "stalled")
                    continue
                except OSError:
                    pass
            else:
                try:
                    if s.recv(4096):
                        continue
                except OSError:
                    pass
            sel.unregister(s)
            s.close()
            connect()
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]


def _guess(address: tuple[str, int], clients: int, stop: "multiprocessing.synchronize.Event") -> None:
    """``clients`` threads, one source address each, guessing passwords back to back."""
    def one(i: int) -> None:
        n = 0
        while not stop.is_set():
            status, _ = scrape(address, _basic(USER, f"guess-{i}-{n}"), source=f"127.0.1.{i + 1}")
            n += 1
            if status == 429:
                stop.wait(0.2)
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    stop.wait()


def _load(address: tuple[str, int], clients: int, seconds: float, out: "multiprocessing.queues.Queue[list[tuple[int, float]]]") -> None:
    """``clients`` threads scraping back to back for ``seconds``; puts all results."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def one() -> None:
        mine = []
        while time.monotonic() < end:
            mine.append(scrape(address))
        with lock:
            results.extend(mine)
    _in_threads(one, clients)
    out.put(results)


def _in_threads(target: Callable[[], None], count: int) -> None:
    """Runs ``target`` in ``count`` threads at once and waits for them."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def under(attack: Callable[..., None], address: tuple[str, int], count: int, probes: int,
          probe_address: tuple[str, int] | None = None, auth: str | None = None) -> list[tuple[int, float]]:
    """Probes while ``attack(address, count, stop)`` runs in a child process (after a 3 s ramp-up)."""
    stop = multiprocessing.Event()
    child = multiprocessing.Process(target=attack, args=(address, count, stop), daemon=True)
    child.start()
    time.sleep(3)
    try:
        return probe(probe_address or address, probes, auth)
    finally:
        stop.set()
        child.join(15)
        if child.is_alive():
            child.kill()
        time.sleep(1)


def simultaneous(address: tuple[str, int], count: int) -> list[tuple[int, float]]:
    """``count`` scrapes released at the same instant (threads behind a barrier)."""
    barrier = threading.Barrier(count)
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        r = scrape(address)
        with lock:
            results.append(r)
    _in_threads(one, count)
    return results


def load(address: tuple[str, int], clients: int, seconds: float) -> list[tuple[int, float]]:
    """``clients`` scraping back to back for ``seconds``, spread over 4 processes."""
    out: multiprocessing.Queue[list[tuple[int, float]]] = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_load, args=(address, clients // 4, seconds, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [r for _ in procs for r in out.get()]
    for p in procs:
        p.join()
    return results


def timing(count: int) -> tuple[float, float]:
    """Median seconds of a 401 for an unknown user and for a wrong password (fresh source address each)."""
    unknown: list[float] = []
    wrong: list[float] = []
    for i in range(count):
        pair = [("nobody", unknown), (USER, wrong)]
        for user, times in pair if i % 2 else pair[::-1]:  # alternate which goes first
            source = f"127.0.2.{len(unknown) + len(wrong) + 1}"
            status, seconds = scrape(AUTH, _basic(user, f"wrong-{i}"), source=source)
            if status == 401:
                times.append(seconds)
    return statistics.median(unknown), statistics.median(wrong)


def garbage() -> list[tuple[str, str, float]]:
    """(case, first line received, seconds until the server closed) for each kind of garbage."""
    cases = {"random bytes": os.urandom(64).replace(b"\n", b"x"), "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
             "TLS hello": bytes.fromhex("160301002a0100002603035e"), "HTTP/0.9": b"GET /metrics\r\n"}
    out = []
    for name, data in cases.items():
        start = time.monotonic()
        received = b""
        with socket.create_connection(PLAIN, timeout=20) as s:
            s.sendall(data)
            while True:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                received += chunk
        out.append((name, received.split(b"\r\n", 1)[0].decode("latin-1") or "(nothing)", time.monotonic() - start))
    return out


# --------------------------------------------------------------------------- report


def row(name: str, results: list[tuple[int, float]], base: list[tuple[int, float]]) -> str:
    """One table row: success within 1 s, p50/p99/max, and p50/p99 as ratios of the undisturbed run."""
    ok = [s for st, s in results if st == 200 and s <= 1.0]
    errors = sum(1 for st, _ in results if st != 200)
    lat = sorted(s for st, s in results if st == 200) or [float("nan")]
    blat = sorted(s for st, s in base if st == 200)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]
    p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
    return (f"{name:<18} {len(results):>6} {100 * len(ok) / len(results):>7.1f}% {errors:>6} "
            f"{1000 * p50:>8.1f} {1000 * p99:>8.1f} {1000 * lat[-1]:>8.1f}   "
            f"x{p50 / pct(blat, 0.5):>6.2f} x{p99 / pct(blat, 0.99):>6.2f}")


def inside(quick: bool) -> None:
    """The measurements (run inside the namespace)."""
    _raise_fd_limit()
    n = 40 if quick else 100
    auth = _basic(USER, PASSWORD)
    print(f"{'scenario':<18} {'probes':>6} {'<=1s':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   "
          f"{'p50/base':>7} {'p99/base':>7}", flush=True)
    base = probe(PLAIN, n)
    print(row("undisturbed", base, base), flush=True)
    base_auth = probe(AUTH, n, auth)
    print(row("undisturbed-auth", base_auth, base_auth), flush=True)
    for count in (64, 1000):
        print(row(f"trickle-{count}", under(_trickle, PLAIN, count, n), base), flush=True)
    for count in (200, 1000):
        print(row(f"stall-{count}", under(_stall, PLAIN, count, n), base), flush=True)
    for count in (10, 50):
        print(row(f"simultaneous-{count}", simultaneous(PLAIN, count), base), flush=True)
    print(row("load-100", load(PLAIN, 100, 10 if quick else 30), base), flush=True)
    print(row("guess-64", under(_guess, AUTH, 64, n, auth=auth), base_auth), flush=True)
    time.sleep(5)  # the guessers' last checks are done
    unknown, wrong = timing(21)
    print(f"timing: unknown user {1000 * unknown:.1f} ms, wrong password {1000 * wrong:.1f} ms, "
          f"difference {100 * abs(unknown - wrong) / max(unknown, wrong):.1f}%", flush=True)
    for name, line, seconds in garbage():
        print(f"garbage {name:<15} -> {line!r}, closed after {1000 * seconds:.1f} ms", flush=True)


def outside(quick: bool) -> int:
    """Creates the namespace and the daemons, runs :func:`inside` there, cleans up."""
    import bcrypt

    if os.geteuid() != 0:
        print("benchmarks/http.py needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    name = f"pwbench-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="pwbench-"))
    portwatch = str(REPO / ".venv" / "bin" / "portwatch")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=12)).decode()
    (tmp / "plain.yaml").write_text(f"state_directory: {tmp}/plain\n")
    (tmp / "auth.yaml").write_text(f"state_directory: {tmp}/auth\nweb:\n  basic_auth_users:\n    {USER}: '{hashed}'\n")
    subprocess.run(["ip", "netns", "add", name], check=True)
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        for cfg, address in (("plain", PLAIN), ("auth", AUTH)):
            daemons.append(subprocess.Popen(
                ["ip", "netns", "exec", name, portwatch, "run", "-c", str(tmp / f"{cfg}.yaml"),
                 "--web.listen-address", f"{address[0]}:{address[1]}"],
                stdout=subprocess.DEVNULL, stderr=open(tmp / f"{cfg}.log", "wb")))
        time.sleep(3)
        args = ["ip", "netns", "exec", name, sys.executable, str(Path(__file__).resolve()), "--inside"]
        return subprocess.run(args + (["--quick"] if quick else []), check=False).returncode
    finally:
        for d in daemons:
            d.terminate()
            try:
                d.wait(10)
            except subprocess.TimeoutExpired:
                d.kill()
        subprocess.run(["ip", "netns", "delete", name], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a 10 s load phase and 40 probes per scenario")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args.quick)
        return 0
    return outside(args.quick)


if __name__ == "__main__":
    sys.exit(main())
