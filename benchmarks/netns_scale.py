"""The many-namespaces row of the benchmark: portwatch's namespace layer against ``nsenter ... ss -tan``.

Run through ``benchmarks/run.py --namespaces 100`` (opt-in). It creates N
network namespaces (``ip netns add``, loopback up), and fills each with
``--ns-sockets`` sockets (ESTABLISHED loopback pairs and 8 listeners, as the
main benchmark's holders build them): a few holder processes in the root
namespace each enter 20 of the namespaces in turn, in a thread, through
:func:`portwatch.collect.run_in_namespace`, and create the sockets there (a
socket stays in the namespace it was made in). Then, over ``--repeat``
rounds, interleaved, it times for the first 10 namespaces and for all N:

- ``portwatch``: in a fresh process, what ``portwatch scan -A --format json``
  does after start-up, for the benchmark's namespaces:
  :func:`portwatch.collect.discover_namespaces` (every ``/proc/*/ns/net`` and
  nsfs mount of the host), :func:`portwatch.scan.run_namespaces_scan` with the
  default configuration (each namespace: its sysctls and netlink socket made
  by the one thread that enters the namespaces in turn, its counted dump,
  detection) and the JSON document;
- ``scan --netns``: the whole command, start-up included, ``portwatch scan
  --format json --netns NAME ...`` naming the same namespaces;
- ``nsenter + ss``: a loop of ``nsenter --net=/run/netns/NAME ss -tan``
  (output to /dev/null) over the same namespaces, wall time of the whole loop
  and the CPU time of its children (``wait4``). The namespaces hold no
  process, so the loop enters them by their mount rather than by
  ``/proc/PID/ns/net``: the same ``setns`` either way.

It reports the medians, the ratio portwatch / loop (goal: at most 0.5) and
the cost per namespace at 10 and at N, and the marginal cost of a namespace
between the two counts (what one more namespace adds: the growth is linear
when it stays put from run to run while the fixed cost of a pass, discovery
and the first entry, weighs on the small count only). This
module is imported by ``run.py`` (as the ``run`` module) and uses its helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import run as base

#: Namespaces one holder process fills at most (fewer when RLIMIT_NOFILE is low).
NAMESPACES_PER_HOLDER = 20
#: The smaller count timed to show how the cost grows.
SMALL = 10


def ns_holder(pairs: int, names: Sequence[str]) -> int:
    """Fill each of the named namespaces with :func:`run.build_population` (``pairs`` pairs), then hold."""
    sys.path.insert(0, str(base.REPO))
    from portwatch.collect import run_in_namespace
    from portwatch.model import NamespaceInfo, NamespaceKind

    base.raise_nofile(len(names) * (2 * pairs + 16) + 64)  # what bench() planned for
    keep: list[Any] = []
    for name in names:
        path = f"/run/netns/{name}"
        st = os.stat(path)
        info = NamespaceInfo(inode=st.st_ino, dev=st.st_dev, kind=NamespaceKind.NAMED, name=name,
                             paths=(path,))
        try:
            keep += run_in_namespace(info, lambda: base.build_population("127.0.0.1", pairs, 0))
        except base.BenchError as exc:
            print(f"ERROR {name}: {exc}", flush=True)
            return 1
    base.hold(len(keep))
    return 0


def probe(names: Sequence[str]) -> int:
    """Time ``scan -A`` of the named namespaces in this fresh process, as the CLI runs it; print JSON.

    Discovery of every namespace of the host, then
    :func:`portwatch.scan.run_namespaces_scan` (the default configuration) of
    the benchmark's namespaces with the garbage collector paused, then the
    JSON document of the result: what ``portwatch scan -A --format json``
    does after its start-up, limited to the namespaces the loop of ``ss``
    reads too.
    """
    import gc

    sys.path.insert(0, str(base.REPO))
    from portwatch.collect import Collector, discover_namespaces
    from portwatch.config.types import Config
    from portwatch.output.json import to_json_document
    from portwatch.scan import make_source, run_namespaces_scan

    wanted = set(names)
    config = Config()
    collector = Collector(make_source(config.source))  # part of start-up: not timed
    wall0, cpu0 = time.perf_counter(), time.process_time()
    gc.disable()
    found = discover_namespaces()
    chosen = [ns for ns in found.namespaces if ns.name in wanted]
    result = run_namespaces_scan(config, collector, found, chosen)
    gc.enable()
    document = json.dumps(to_json_document(result, "bench"), indent=2)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    scanned = {scan.snapshot.namespace.name for scan in result.results
               if scan.snapshot.namespace is not None}
    print(json.dumps({"wall": wall, "cpu": cpu, "namespaces": len(scanned),
                      "sockets": sum(scan.snapshot.socket_total for scan in result.results),
                      "outcomes": ["ok"] if scanned == wanted and not result.notes else
                                  sorted(result.notes) or ["missing"],
                      "findings": sum(len(scan.findings) for scan in result.results),
                      "document_bytes": len(document), "discovered": len(found.namespaces)}))
    return 0


def run_probe(names: Sequence[str]) -> dict[str, Any]:
    """:func:`probe` in a child process; raises BenchError when it fails."""
    proc = subprocess.run([sys.executable, str(base.HERE), "--_ns_probe", ",".join(names)],
                          capture_output=True, text=True, timeout=600, cwd=base.REPO, env=base.cached_env())
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise base.BenchError(f"namespace probe failed: {tail}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def ss_loop(names: Sequence[str]) -> dict[str, float]:
    """Wall time of a loop of ``nsenter --net=... ss -tan`` over ``names``, and its children's CPU."""
    ss = shutil.which("ss") or "/usr/bin/ss"
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    start = time.perf_counter()
    cpu = 0.0
    for name in names:
        cpu += base.run_command([nsenter, f"--net=/run/netns/{name}", ss, "-tan"]).cpu
    return {"wall": time.perf_counter() - start, "cpu": cpu}


def bench(count: int, sockets: int, repeat: int, fd_limit: int,
          log: Callable[[str], None]) -> dict[str, Any]:
    """Build ``count`` namespaces of ``sockets`` sockets, measure, tear down; returns the results.

    ``fd_limit`` is the RLIMIT_NOFILE a holder gets; it decides how many
    namespaces one holder fills.
    """
    if shutil.which("nsenter") is None:
        raise base.BenchError("the namespace row needs nsenter (util-linux)")
    pairs = max(1, (sockets - len(base.LISTEN_PORTS)) // 2)
    per_holder = max(1, min(NAMESPACES_PER_HOLDER, (fd_limit - 64) // (2 * pairs + 16)))
    namespaces: list[base.Namespace] = []
    holders: list[subprocess.Popen[str]] = []
    try:
        log(f"namespaces: creating {count} with {2 * pairs + len(base.LISTEN_PORTS)} sockets each")
        t0 = time.monotonic()
        namespaces = [base.Namespace() for _ in range(count)]
        names = [ns.name for ns in namespaces]
        for i in range(0, count, per_holder):
            group = names[i:i + per_holder]
            holders.append(subprocess.Popen(
                [sys.executable, str(base.HERE), "--_ns_holder", str(pairs), ",".join(group)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=base.REPO))
        held = base.wait_ready(holders, timeout=600)
        log(f"namespaces: built {held:,} sockets in {time.monotonic() - t0:.1f}s; "
            f"measuring ({repeat} rounds)")
        counts = sorted({min(SMALL, count), count})
        runs: dict[int, dict[str, list[float]]] = {
            k: {"portwatch": [], "portwatch_cpu": [], "ss": [], "ss_cpu": [], "command": [], "command_cpu": []}
            for k in counts}
        seen: dict[int, dict[str, Any]] = {}
        run_probe(names[:1])  # warm-up: the bytecode cache, the page cache
        base.run_command([*base.portwatch_command(), "scan", "--format", "json", f"--netns={names[0]}"],
                         env=base.cached_env(), ok=(0, 1))
        for _ in range(repeat):
            for k in counts:
                doc = run_probe(names[:k])
                if doc["namespaces"] != k or doc["outcomes"] != ["ok"]:
                    raise base.BenchError(f"portwatch scanned {doc['namespaces']} of {k} "
                                          f"namespaces ({', '.join(doc['outcomes'])})")
                loop = ss_loop(names[:k])
                # the whole command, start-up included, naming the same namespaces
                command = base.run_command([*base.portwatch_command(), "scan", "--format", "json",
                                            *(f"--netns={n}" for n in names[:k])], env=base.cached_env(), ok=(0, 1))
                runs[k]["command"].append(command.wall)
                runs[k]["command_cpu"].append(command.cpu)
                runs[k]["portwatch"].append(doc["wall"])
                runs[k]["portwatch_cpu"].append(doc["cpu"])
                runs[k]["ss"].append(loop["wall"])
                runs[k]["ss_cpu"].append(loop["cpu"])
                seen[k] = doc
        result: dict[str, Any] = {"namespaces": count, "sockets_per_namespace": sockets,
                                  "held": held, "rows": []}
        if len(counts) == 2:
            small, large = ({key: base.median(values) for key, values in runs[k].items()} for k in counts)
            span = counts[1] - counts[0]
            result["marginal"] = {
                "from": counts[0], "to": counts[1],
                "ms_per_namespace": 1000 * (large["portwatch"] - small["portwatch"]) / span,
                "ss_ms_per_namespace": 1000 * (large["ss"] - small["ss"]) / span}
        for k in counts:
            med = {key: base.median(values) for key, values in runs[k].items()}
            result["rows"].append({
                "count": k, **med, "sockets_seen": seen[k]["sockets"],
                "discovered": seen[k]["discovered"],
                "ratio_wall": med["portwatch"] / med["ss"],
                "command_ratio": med["command_cpu"] / med["ss_cpu"],
                "ms_per_namespace": 1000 * med["portwatch"] / k,
                "ss_ms_per_namespace": 1000 * med["ss"] / k})
        return result
    finally:
        for proc in holders:
            base.stop(proc, grace=5)
        for ns in namespaces:
            ns.close()


def render(doc: dict[str, Any]) -> list[str]:
    """The lines of the namespace row in the benchmark's table."""
    lines = [f"{doc['namespaces']} namespaces x {doc['sockets_per_namespace']:,} sockets "
             f"({doc['held']:,} held): discovery + every namespace's sysctls and socket table",
             f"  {'namespaces':>10} {'portwatch s':>12} {'CPU s':>7} {'nsenter+ss s':>13} "
             f"{'CPU s':>7} {'ratio':>6} {'CPU ratio':>9} {'ms/ns':>7} {'ss ms/ns':>9} "
             f"{'scan --netns... CPU s':>21} {'CPU ratio':>9}"]
    for row in doc["rows"]:
        lines.append(
            f"  {row['count']:>10} {row['portwatch']:12.3f} {row['portwatch_cpu']:7.3f} "
            f"{row['ss']:13.3f} {row['ss_cpu']:7.3f} {row['ratio_wall']:5.2f}x "
            f"{row['portwatch_cpu'] / row['ss_cpu']:8.2f}x "
            f"{row['ms_per_namespace']:7.2f} {row['ss_ms_per_namespace']:9.2f} "
            f"{row.get('command_cpu', float('nan')):21.3f} {row.get('command_ratio', float('nan')):8.2f}x")
    marginal = doc.get("marginal")
    if marginal and marginal["ss_ms_per_namespace"] > 0:
        lines.append(f"  one more namespace (from {marginal['from']} to {marginal['to']}): portwatch "
                     f"{marginal['ms_per_namespace']:.2f} ms, nsenter+ss {marginal['ss_ms_per_namespace']:.2f} ms "
                     f"({marginal['ms_per_namespace'] / marginal['ss_ms_per_namespace']:.2f}x)")
    return lines
