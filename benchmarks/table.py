"""The one table of ``benchmarks/run.py``: every figure of the speed issue as a ratio to its baseline.

Takes the JSON document ``run.py`` builds (``--json`` prints it, ``--render``
reads it back) and makes the rows: each measured figure, the baseline it is
compared with (measured in the same run, interleaved round by round), their
ratio and the goal. A ratio is the median of the per-round ratios where both
sides have the same rounds (pairs), else the ratio of the medians. CPU time
(user + system) is the figure compared: on a shared machine wall time also
counts the time others had the CPU (it is shown beside it). Standard library only.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

#: Peak RSS goal of a scan at 100,000 sockets, MiB.
RSS_GOAL_MIB = 100


def paired(a: dict[str, Any], b: dict[str, Any], key: str = "cpu") -> float | None:
    """``a``'s figure over ``b``'s: the median of per-round ratios when both have every round, else of medians."""
    ra, rb = a.get(f"{key}_runs") or [], b.get(f"{key}_runs") or []
    if ra and len(ra) == len(rb) and all(rb):
        return float(statistics.median(x / y for x, y in zip(ra, rb)))
    if a.get(key) and b.get(key):
        return float(a[key] / b[key])
    return None


def _x(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}x" if value is not None else "n/a"


def _s(entry: dict[str, Any]) -> str:
    return f"{entry['cpu']:.3f} s CPU ({entry['wall']:.3f} s wall)" if "cpu" in entry else "n/a"


def scan_rows(size: dict[str, Any], interval: float) -> list[tuple[str, str, str, str, str]]:
    """The rows of one socket population: (what, measured, baseline, ratio, goal)."""
    t = size["tools"]
    ss = t.get("ss", {})
    n = f"{size['requested']:,}"
    rows: list[tuple[str, str, str, str, str]] = []

    def vs_ss(kind: str, what: str, goal: str) -> None:
        e = t.get(kind, {})
        if "cpu" not in e:
            rows.append((what, f"n/a: {e.get('error', 'not measured')}", "ss -tan", "n/a", goal))
            return
        wall = paired(e, ss, "wall")
        rows.append((what, _s(e), f"ss -tan {_s(ss)}",
                     f"{_x(paired(e, ss))} (wall {_x(wall)})", goal))

    vs_ss("scan", f"full in-process scan (run_scan), {n} sockets", "<= 0.8x")
    vs_ss("netlink", "NetlinkSource().read() alone", "-")
    vs_ss("floor", "raw sock_diag dump, Python loop over headers only (the floor)", "-")
    scan = t.get("scan", {})
    for kind, label, goal in (("psutil", "psutil.net_connections('inet')", ">= 8x faster"),
                              ("ssp", "ss -tanp", ">= 20x faster")):
        e = t.get(kind, {})
        ratio = paired(e, scan) if "cpu" in e and "cpu" in scan else None
        rows.append((f"scan vs {label}", _s(scan), f"{label} {_s(e)}",
                     f"{_x(ratio, 1)} faster" if ratio else "n/a", goal))
    cg = " (holders in their own cgroups)" if size.get("holder_cgroups") else " (holders in one cgroup)"
    vs_ss("scan-findings", f"first scan with 8 findings{cg}", "<= 1.5x")
    vs_ss("scan-steady", "  the daemon's next scan with those 8 findings", "-")
    vs_ss("cli-json", f"`portwatch scan --format json` as a process, {n} sockets", "<= 1.2x")
    if "cpu" in scan and ss.get("cpu"):
        share = scan["cpu"] / interval
        rows.append((f"daemon CPU at the {interval:g} s interval", f"{100 * share:.2f} % of a core",
                     f"ss -tan every {interval:g} s: {100 * ss['cpu'] / interval:.2f} %",
                     _x(paired(scan, ss)), "<= 2 %"))
    peak = scan.get("maxrss_kib")
    ss_peak = size.get("ss_maxrss_kib")
    if peak is not None:
        rows.append((f"peak RSS of a scan at {n}", f"{peak / 1024:.1f} MiB",
                     f"ss -tan {ss_peak / 1024:.1f} MiB" if ss_peak else "ss -tan n/a",
                     _x(peak / ss_peak, 1) if ss_peak else "n/a", f"< {RSS_GOAL_MIB} MiB"))
    return rows


def startup_row(doc: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """`portwatch scan` in an empty namespace against the interpreter's own start-up."""
    a, b = doc["portwatch"], doc["python"]
    return ("`portwatch scan` in an empty namespace",
            f"{1000 * a['cpu']:.0f} ms CPU ({1000 * a['wall']:.0f} ms wall)",
            f"`python3 -c pass` {1000 * b['cpu']:.0f} ms CPU ({1000 * b['wall']:.0f} ms wall)",
            f"{_x(paired(a, b))} (wall {_x(paired(a, b, 'wall'))})", "<= 2x")


def installed_startup_row(doc: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """The same, as an installed package starts: ``python3 -m portwatch scan`` from a ``pip install
    --target`` directory against that interpreter's own start-up (no virtual environment)."""
    a, b = doc["portwatch"], doc["python"]
    return ("  the same, installed (`python3 -m portwatch scan`)",
            f"{1000 * a['cpu']:.0f} ms CPU ({1000 * a['wall']:.0f} ms wall)",
            f"`python3 -c pass` {1000 * b['cpu']:.0f} ms CPU ({1000 * b['wall']:.0f} ms wall)",
            f"{_x(paired(a, b))} (wall {_x(paired(a, b, 'wall'))})", "-")


def namespace_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Discovery plus every namespace's table against a loop of ``nsenter ... ss -tan``."""
    rows = []
    for row in doc["rows"]:
        rows.append((f"{row['count']} namespaces x {doc['sockets_per_namespace']:,} sockets (scan -A pass)",
                     f"{row['portwatch_cpu']:.3f} s CPU ({row['portwatch']:.3f} s wall)",
                     f"nsenter+ss -tan loop {row['ss_cpu']:.3f} s CPU ({row['ss']:.3f} s wall)",
                     f"{_x(row['portwatch_cpu'] / row['ss_cpu'] if row['ss_cpu'] else None)} "
                     f"(wall {_x(row['ratio_wall'])})", "<= 0.5x"))
    return rows


def event_rows(doc: dict[str, Any], ss_cpu_per_socket: float | None) -> list[tuple[str, str, str, str, str]]:
    """The destroy-event listener: CPU per 10,000 events (baseline: ``ss -tan`` listing 10,000
    sockets, same run) and the highest paced rate with no drop (baseline: the rate the
    generators reached)."""
    rows = []
    for r in doc["rows"]:
        if r["mode"] != "burst":
            continue
        base = f"ss -tan, 10k sockets: {10_000 * ss_cpu_per_socket:.3f} s" if ss_cpu_per_socket else "n/a"
        ratio = (r["cpu_per_10k"] / (10_000 * ss_cpu_per_socket)
                 if r["cpu_per_10k"] is not None and ss_cpu_per_socket else None)
        rows.append((f"events {r['kind']} {r['variant']}: burst {r['made']:,}, got {r['events']:,}, "
                     f"ENOBUFS {r['dropped']}",
                     f"{r['cpu_per_10k']:.3f} s CPU / 10k events" if r["cpu_per_10k"] is not None else "n/a",
                     base, _x(ratio), "-"))
    kinds = sorted({(r["kind"], r["variant"]) for r in doc["rows"]})
    for kind, variant in kinds:
        paced = [r for r in doc["rows"] if r["kind"] == kind and r["variant"] == variant and r["rate"]]
        ok = [r for r in paced if not r["dropped"]]
        best = max(ok, key=lambda r: r["achieved_rate"]) if ok else None
        bad = [r["achieved_rate"] for r in paced if r["dropped"]]
        rows.append((f"events {kind} {variant}: highest rate with no drop",
                     f"{best['events'] / best['made'] * best['achieved_rate']:,.0f}/s received" if best else "none",
                     f"generators made {best['achieved_rate']:,.0f}/s" if best else "-",
                     (f"{best['events'] / best['made']:.2f}x" if best else "n/a")
                     + (f" (drops at {min(bad):,.0f}/s)" if bad else ""), "-"))
    return rows


def render_table(rows: Sequence[tuple[str, str, str, str, str]]) -> list[str]:
    """Aligned text columns: what | measured | baseline (same run) | ratio | goal."""
    head = ("what", "measured", "baseline (same run)", "ratio", "goal")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return [line.format(*head), line.format(*("-" * w for w in widths)),
            *(line.format(*r) for r in rows)]


def render(doc: dict[str, Any]) -> list[str]:
    """Every row of the run: the largest population's, start-up, namespaces, events."""
    rows: list[tuple[str, str, str, str, str]] = []
    sizes = doc.get("sizes") or []
    ss_cpu_per_socket = None
    if sizes:
        big = max(sizes, key=lambda s: s["requested"])
        rows += scan_rows(big, doc["interval"])
        ss = big["tools"].get("ss", {})
        if ss.get("cpu") and big.get("ss_tcp_sockets"):
            ss_cpu_per_socket = ss["cpu"] / big["ss_tcp_sockets"]
    if doc.get("startup"):
        rows.append(startup_row(doc["startup"]))
        if doc["startup"].get("installed"):
            rows.append(installed_startup_row(doc["startup"]["installed"]))
    if doc.get("namespaces"):
        rows += namespace_rows(doc["namespaces"])
    if doc.get("events"):
        rows += event_rows(doc["events"], ss_cpu_per_socket)
    return render_table(rows)
