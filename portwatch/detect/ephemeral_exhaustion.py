"""The ``ephemeral_exhaustion`` finding: one destination using most of the usable ephemeral ports.

Also the per-destination usage it is computed from (:func:`destination_usage`),
which the metrics and the terminal report show too. Imports
:mod:`portwatch.detect.base` and :mod:`portwatch.model` only (pure).
"""

from __future__ import annotations

import heapq
from collections import Counter

from portwatch.detect.base import (
    MAX_EXAMPLE_SOCKETS,
    SYSCTL_RANGE,
    Config,
    DetectionInput,
    Detector,
    listeners,
    tcp_listen_ports,
    who,
)
from portwatch.model import (
    Destination,
    Endpoint,
    Finding,
    Kind,
    Listening,
    ProcessInfo,
    Protocol,
    Severity,
    Snapshot,
    Socket,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping


def destination_usage(snapshot: Snapshot, listening: Listening | None = None) -> dict[Destination, int]:
    """Sockets using a usable ephemeral port, per (local ip, remote ip, remote port).

    Counts TCP sockets in every non-listening state (TIME_WAIT included: the
    port stays taken for that 4-tuple) whose local port is inside the range,
    not reserved, and not a listener's port (accepted connections share their
    listener's port and take no ephemeral port). ``listening`` is
    :func:`~portwatch.detect.base.listeners` of the snapshot, if the caller has it already.
    A counted snapshot (``snapshot.counts``) brings these counts with it, made
    by the same rule while its source read the table.
    """
    if snapshot.counts is not None:
        return dict(snapshot.counts.usage)
    settings = snapshot.settings
    low, high = settings.port_range.low, settings.port_range.high
    reserved = settings.reserved
    if listening is None:
        listening = listeners(snapshot)
    tcp = Protocol.TCP
    listen_ports = tcp_listen_ports(listening)
    # Plain tuples as keys in the loop (a NamedTuple costs a Python-level
    # __new__ per socket); Destination only for the result.
    counts: dict[tuple[str, str, int], int] = {}
    get = counts.get
    for s in snapshot.sockets:
        remote = s.remote
        if remote is None or s.protocol is not tcp:
            continue  # listeners have no remote
        local = s.local
        port = local.port
        if low <= port <= high and port not in reserved and port not in listen_ports:
            key = (local.ip, remote.ip, remote.port)
            counts[key] = get(key, 0) + 1
    return {Destination(*key): n for key, n in counts.items()}


def flagged_destinations(snapshot: Snapshot, config: Config,
                         usage: Mapping[Destination, int]) -> list[tuple[float, Destination]]:
    """(share of the usable range, destination) of each destination at or above the warning
    threshold, the highest share first."""
    usable = snapshot.settings.usable_ports
    if usable <= 0:
        return []
    warning = config.thresholds.exhaustion_warning
    return sorted(((n / usable, dest) for dest, n in usage.items() if n / usable >= warning),
                  key=lambda x: (-x[0], x[1]))


def find_exhaustion(snapshot: Snapshot, config: Config, usage: Mapping[Destination, int],
                    listening: Listening) -> list[Finding]:
    """Destinations whose share of the usable range reaches the warning threshold.

    The sockets of each such destination must be in ``snapshot.sockets``
    (a counted snapshot gets them with :meth:`~portwatch.model.Snapshot.with_destination_sockets`).
    """
    usable = snapshot.settings.usable_ports
    t = config.thresholds
    flagged = flagged_destinations(snapshot, config, usage)
    if not flagged:
        return []
    members: dict[Destination, list[Socket]] = {dest: [] for _ratio, dest in flagged}
    is_ephemeral = snapshot.settings.is_ephemeral
    listen_ports = tcp_listen_ports(listening)
    for s in snapshot.sockets:
        remote = s.remote
        if remote is None or s.protocol is not Protocol.TCP:
            continue
        group = members.get(Destination(s.local.ip, remote.ip, remote.port))
        # the condition of destination_usage, so that examples and counts agree
        if group is not None and is_ephemeral(s.local.port) and s.local.port not in listen_ports:
            group.append(s)
    out = []
    for ratio, dest in flagged:
        group = members[dest]
        socks = tuple(heapq.nsmallest(MAX_EXAMPLE_SOCKETS, group, key=lambda s: s.local.port))
        states = Counter(s.state.value for s in group)
        severity = Severity.CRITICAL if ratio >= t.exhaustion_critical else Severity.WARNING
        out.append(
            DETECTOR.make(
                f"ephemeral_exhaustion:{dest.local_ip}->{Endpoint(dest.remote_ip, dest.remote_port)}",
                snapshot, socks,
                {"destination": str(dest), "used": usage[dest], "usable": usable, "ratio": round(ratio, 4),
                 "states": dict(sorted(states.items())), "local_ip": dest.local_ip,
                 "remote_ip": dest.remote_ip, "remote_port": dest.remote_port,
                 "sockets_total": len(group)},
                severity=severity, port=dest.remote_port, protocol=Protocol.TCP,
                remediation=(f"reuse connections (pooling, keep-alive) instead of opening new ones; "
                             f"spread over more source addresses or destination ports; widen "
                             f"{SYSCTL_RANGE} (now {snapshot.settings.port_range}); if most are TIME_WAIT "
                             f"({states.get('TIME_WAIT', 0)} now), set net.ipv4.tcp_tw_reuse=1 on this client"))
        )
    return out


def summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """``DEST uses N of M usable ephemeral ports (R%); ...; top holders: ...``."""
    d = finding.details
    return (
        f"{d['destination']} uses {d['used']} of {d['usable']} usable ephemeral ports "
        f"({d['ratio']:.0%}); new connections to it fail with EADDRNOTAVAIL when none is left; "
        f"top holders: {who(processes)}"
    )


def _find(inp: DetectionInput) -> list[Finding]:
    return find_exhaustion(inp.snapshot, inp.config, inp.usage, inp.index.listening)


DETECTOR = Detector(
    kind=Kind.EPHEMERAL_EXHAUSTION,
    severity=Severity.WARNING,
    alertname="PortwatchEphemeralPortExhaustion",
    find=_find,
    summarize=summarize,
)
