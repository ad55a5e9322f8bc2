"""The ``close_wait_buildup`` finding: a process holding more CLOSE_WAIT sockets than the threshold.

The only kind that needs owners before detection (it groups sockets by
process). Imports :mod:`portwatch.detect.base` and :mod:`portwatch.model`
only (pure).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from portwatch.model.records import replace

from portwatch.detect.base import (
    MAX_EXAMPLE_SOCKETS,
    Config,
    DetectionInput,
    Detector,
    SocketIndex,
    index,
    who,
)
from portwatch.model import Finding, Kind, ProcessInfo, Severity, Snapshot, Socket


def owners_needed(snapshot: Snapshot, config: Config, idx: SocketIndex) -> set[int]:
    """The CLOSE_WAIT sockets, when there are more of them in total than one process may hold.

    Else no process can cross the threshold, and no owner is needed.
    """
    waiting = idx.close_wait
    if len(waiting) <= config.thresholds.close_wait:
        return set()
    return {s.inode for s in waiting}


def find_close_wait(snapshot: Snapshot, config: Config, idx: SocketIndex | None = None) -> list[Finding]:
    """Processes holding more CLOSE_WAIT sockets than the threshold.

    Sockets whose owner is unknown are grouped by uid (or as one unknown
    group) so that a build-up is reported even without attribution. A
    finding about a process has that process as its only one.
    """
    threshold = config.thresholds.close_wait
    groups: dict[str, list[Socket]] = defaultdict(list)
    waiting = (idx or index(snapshot)).close_wait
    if len(waiting) <= threshold:
        return []
    for s in waiting:
        pids = snapshot.owners.get(s.inode, ())
        if pids:
            for pid in pids:
                groups[f"pid:{pid}"].append(s)
        else:
            groups[f"uid:{s.uid}" if s.uid is not None else "unknown"].append(s)
    out = []
    for owner, socks in sorted(groups.items()):
        if len(socks) <= threshold:
            continue
        if owner.startswith("pid:"):
            pid = int(owner[4:])
            procs: tuple[ProcessInfo, ...] = (snapshot.processes.get(pid, ProcessInfo(pid=pid)),)
            label = procs[0].label()
        else:
            procs = ()
            label = f"user id {owner[4:]} (process unknown)" if owner.startswith("uid:") else "an unknown process"
        finding = Finding(
            kind=DETECTOR.kind, severity=DETECTOR.severity,
            key=f"close_wait_buildup:{owner}", summary="",
            addresses=tuple(sorted({s.local.ip for s in socks})),
            sockets=tuple(heapq.nsmallest(MAX_EXAMPLE_SOCKETS, socks, key=lambda s: (s.local, s.remote or s.local))),
            processes=procs,
            remediation="the process does not close() sockets after their peer closed: fix the leak "
                        "(a missing close on error/EOF paths) or restart it to release them",
            details={"count": len(socks), "threshold": threshold, "owner": label, "sockets_total": len(socks)},
        )
        out.append(replace(finding, summary=summarize(finding, procs)))
    return out


def involves(finding: Finding, snapshot: Snapshot) -> tuple[ProcessInfo, ...]:
    """The process the finding is about (its one process at detection), as ``snapshot`` knows it.

    Empty for a build-up grouped by user id: its sockets' owners were unknown.
    """
    return tuple(snapshot.processes.get(p.pid, ProcessInfo(pid=p.pid)) for p in finding.processes)


def summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """``leaky[10] holds 4 CLOSE_WAIT sockets (threshold 3): ...``."""
    d = finding.details
    holder = who(processes) if processes else str(d.get("owner", "owner unknown"))
    return (
        f"{holder} holds {d['count']} CLOSE_WAIT sockets (threshold {d['threshold']}): "
        f"peers closed these connections and the process never closed its end"
    )


def _find(inp: DetectionInput) -> list[Finding]:
    return find_close_wait(inp.snapshot, inp.config, inp.index)


DETECTOR = Detector(
    kind=Kind.CLOSE_WAIT_BUILDUP,
    severity=Severity.WARNING,
    alertname="PortwatchCloseWaitBuildup",
    find=_find,
    summarize=summarize,
    involves=involves,
    owners_needed=owners_needed,
)
