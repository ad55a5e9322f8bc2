"""Destroy-event listener benchmark: CPU per 10,000 events, sustained events/s before drops.

Run through ``benchmarks/run.py --events`` (as root; it creates and removes
its own network namespace), or directly: ``.venv/bin/python
benchmarks/events_bench.py [--rates 10000,30000,60000] [--seconds 3] [--json]``.

In a private namespace it starts a *listener* process (an
:class:`portwatch.collect.eventwatch.EventWatcher` on its own namespace, each
batch fed to :class:`portwatch.detect.transient.NamespaceTransients`, as the
daemon's event thread and ``portwatch watch`` do) and *generator* processes that make destroy events:

- ``tcp``: loopback connections to a listener on port 8080 (8081, ... for more generators), connected,
  accepted and closed (two events each, with ``tcp_info``), the ordinary
  traffic of a busy host;
- ``udp``: UDP sockets created and closed (one small event each), the
  cheapest way to make many events.

Rows, for each kind, with CAP_NET_ADMIN (``SO_RCVBUFFORCE`` 16 MiB) and
without it (the listener run under ``setpriv`` without CAP_NET_ADMIN:
``SO_RCVBUF``, capped by ``net.core.rmem_max``):

- ``burst``: 30,000 events made as fast as the generators go: events
  received, ENOBUFS counted, the listener's CPU seconds (user+system) per
  10,000 events and its CPU share per 1,000 events/s;
- ``sustained``: the generators paced at each of ``--rates`` events/s for
  ``--seconds``: the highest achieved rate with no drop.

The generators share the machine's cores with the listener, so the highest
rate they reach is a bound of the measurement too; it is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()
SERVER_PORT = 8080
#: The generators' server ports (one per generator): the listener's "known listening ports".
SERVER_PORTS = frozenset(range(SERVER_PORT, SERVER_PORT + 8))
DROP_CAP = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"]


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- roles (inside the namespace)


def listen_role(buffer_bytes: int) -> int:
    """Listener asking for ``buffer_bytes``: a first JSON line, events until stdin says stop, a JSON line."""
    sys.path.insert(0, str(REPO))
    from portwatch.collect import discover_namespaces
    from portwatch.collect.eventwatch import EventWatcher
    from portwatch.detect.transient import NamespaceTransients

    own = next(ns for ns in discover_namespaces(capable=False).namespaces if ns.own)
    watcher = EventWatcher(buffer_bytes, can_enter=False)
    watcher.sync([own])
    listener = watcher.listener(own)
    assert listener is not None, "no event listener"
    transients = NamespaceTransients(keyed=False)
    print(json.dumps({"forced": listener.forced, "buffer_bytes": listener.buffer_bytes}), flush=True)
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    findings = 0
    detect_cpu = 0.0
    start = cpu_seconds()
    stopping_at: float | None = None
    quiet_since = time.monotonic()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if stopping_at is None and sel.select(0):
            sys.stdin.readline()
            stopping_at = time.monotonic()
        for got in watcher.poll(0.05):
            if got.events:
                quiet_since = time.monotonic()
                t0 = time.process_time()
                findings += len(transients.observe(own, got.events, lambda: SERVER_PORTS))
                findings += len(transients.flush(time.time(), lambda ns: SERVER_PORTS))
                detect_cpu += time.process_time() - t0
        if stopping_at is not None and time.monotonic() - quiet_since > 0.5:
            break
    cpu = cpu_seconds() - start
    print(json.dumps({"events": listener.events_total, "dropped": listener.dropped_total,
                      "cpu": cpu, "detect_cpu": detect_cpu, "findings": findings}), flush=True)
    watcher.close()
    return 0


def generate_role(kind: str, count: int, rate: float, port: int) -> int:
    """Make ``count`` destroy events of ``kind`` (tcp: to a server on ``port``), paced at ``rate``/s (0: flat out)."""
    per_event = 2 if kind == "tcp" else 1
    server = None
    if kind == "tcp":
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(512)
    start = time.monotonic()
    made = 0
    slice_events = max(per_event, int(rate / 100)) if rate else 1000
    while made < count:
        for _ in range(0, min(slice_events, count - made), per_event):
            if server is not None:
                cli = socket.create_connection(("127.0.0.1", port))
                srv, _ = server.accept()
                cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                cli.close()
                srv.close()
            else:
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
            made += per_event
        if rate:
            ahead = start + made / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    wall = time.monotonic() - start
    if server is not None:
        server.close()
    print(json.dumps({"made": made, "wall": wall}), flush=True)
    return 0


# ---------------------------------------------------------------- the driver (outside)


#: (name, with CAP_NET_ADMIN, buffer asked for): 16 MiB forced; 16 MiB asked without the
#: capability (capped by net.core.rmem_max); the kernel's default buffer (212,992 bytes, what an
#: unprivileged listener gets where rmem_max has its default), forced so that it is exact here.
VARIANTS: tuple[tuple[str, bool, int], ...] = (
    ("CAP_NET_ADMIN", True, 16 << 20),
    ("no cap", False, 16 << 20),
    ("default buf", True, 212_992 // 2),
)


def run_phase(ns: str, kind: str, cap: bool, buffer_bytes: int, count: int, rate: float,
              generators: int) -> dict[str, Any]:
    """One listener and ``generators`` generators in ``ns``; the listener's and generators' figures."""
    wrap = ["ip", "netns", "exec", ns]
    listener = subprocess.Popen(wrap + ([] if cap else DROP_CAP)
                                + [sys.executable, str(HERE), "--_listen", str(buffer_bytes)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert listener.stdout is not None and listener.stdin is not None
        head = json.loads(listener.stdout.readline())
        gens = [subprocess.Popen(wrap + [sys.executable, str(HERE), "--_generate", kind,
                                         str(count // generators), str(rate / generators), str(SERVER_PORT + i)],
                                 stdout=subprocess.PIPE, text=True, cwd=REPO) for i in range(generators)]
        made, walls = 0, []
        for gen in gens:
            out, _ = gen.communicate(timeout=600)
            doc = json.loads(out)
            made += doc["made"]
            walls.append(doc["wall"])
        listener.stdin.write("stop\n")
        listener.stdin.flush()
        tail = json.loads(listener.stdout.readline())
    finally:
        if listener.poll() is None:
            listener.kill()
        listener.wait(timeout=10)
    wall = max(walls)
    events = tail["events"]
    return {**head, **tail, "made": made, "achieved_rate": made / wall if wall else 0.0,
            "cpu_per_10k": tail["cpu"] / events * 10_000 if events else None,
            "core_share_per_1k_per_s": tail["cpu"] / events * 1_000 if events else None}


def bench(rates: Sequence[int], seconds: float, burst: int) -> dict[str, Any]:
    """Every row, in one private namespace (removed at the end)."""
    ns = f"pwbench-ev-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    rows: list[dict[str, Any]] = []
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for kind in ("tcp", "udp"):
            for variant, cap, buffer_bytes in VARIANTS:
                plan = [(0, burst)] + [(rate, int(rate * seconds)) for rate in rates]
                for rate, count in plan:
                    row = {"kind": kind, "variant": variant, "mode": "sustained" if rate else "burst",
                           "rate": rate, **run_phase(ns, kind, cap, buffer_bytes, count, rate, 2)}
                    rows.append(row)
                    print(f"[bench] {render_row(row)}", file=sys.stderr, flush=True)
                    if rate and row["dropped"]:
                        break
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return {"rows": rows, "rates": list(rates), "seconds": seconds, "burst": burst}


def render_row(r: dict[str, Any]) -> str:
    """One line of the table."""
    cpu = f"{r['cpu_per_10k']:.3f}" if r["cpu_per_10k"] is not None else "-"
    share = f"{100 * r['core_share_per_1k_per_s']:.2f}%" if r["core_share_per_1k_per_s"] is not None else "-"
    what = "burst" if r["mode"] == "burst" else f"paced {r['rate']}/s"
    return (f"{r['kind']:<4} {r['variant']:<13} "
            f"{r['buffer_bytes'] // 1024:>6} KiB  {what:<15} made {r['made']:>7} "
            f"({r['achieved_rate']:>8.0f}/s) got {r['events']:>7} ENOBUFS {r['dropped']:>3}  "
            f"CPU/10k {cpu:>6} s  per 1k/s {share:>6}  findings {r['findings']}")


def render(doc: dict[str, Any]) -> str:
    """The table: burst rows, then the best sustained rate with no drop for each kind and privilege."""
    lines = ["Destroy-event listener (+ transient detection): burst of "
             f"{doc['burst']} events, then rates {doc['rates']} for {doc['seconds']} s each",
             *(render_row(r) for r in doc["rows"]), "", "Sustained, highest achieved rate with no drop:"]
    for kind in ("tcp", "udp"):
        for variant, _cap, _buf in VARIANTS:
            paced = [r for r in doc["rows"] if r["kind"] == kind and r["variant"] == variant and r["rate"]]
            ok = [r["achieved_rate"] for r in paced if not r["dropped"]]
            bad = [r["achieved_rate"] for r in paced if r["dropped"]]
            lines.append(f"  {kind} {variant:<13} {max(ok) if ok else 0:>8.0f}/s"
                         + (f"  (drops at {min(bad):.0f}/s)" if bad else "  (no drop at any rate tried)"))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (also the children's roles); returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--_listen"] and len(args_list) == 2:
        return listen_role(int(args_list[1]))
    if args_list[:1] == ["--_generate"] and len(args_list) == 5:
        return generate_role(args_list[1], int(args_list[2]), float(args_list[3]), int(args_list[4]))
    parser = argparse.ArgumentParser(prog="benchmarks/events_bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="10000,20000,30000,45000,60000,90000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--burst", type=int, default=30_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(args_list)
    if os.geteuid() != 0:
        print("benchmarks/events_bench.py: needs root (it creates a network namespace)", file=sys.stderr)
        return 2
    doc = bench([int(r) for r in args.rates.split(",")], args.seconds, args.burst)
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
