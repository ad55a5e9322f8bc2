"""The ``port_taken`` finding: a service port with no listener, held by non-listening sockets.

Imports :mod:`portwatch.detect.base` and :mod:`portwatch.model` only (pure).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Collection

from portwatch.detect.base import (
    ORPHAN_STATES,
    Config,
    DetectionInput,
    Detector,
    by_protocol_and_port,
    covers,
    port_slash_protocol,
    reserve_hint,
    who,
)
from portwatch.model import Finding, Kind, Listening, ProcessInfo, Protocol, RememberedPort, Severity, Snapshot, Socket


def find_ports_taken(snapshot: Snapshot, config: Config, remembered: Collection[RememberedPort],
                     listening: Listening) -> list[Finding]:
    """Service ports with no listener now, held as local port by non-listening sockets.

    Service ports are, in order of precedence: declared services (critical),
    reserved ports (critical) and ports remembered from earlier scans'
    listeners (warning: inferred, not declared). A holder conflicts with a
    service declared on a specific address only if it uses that address.
    TIME_WAIT sockets are not holders (they have no process, and servers bind
    over them with SO_REUSEADDR).
    """
    settings = snapshot.settings
    # (protocol, port) -> (reason, service name, address, severity)
    wanted: dict[tuple[Protocol, int], tuple[str, str | None, str | None, Severity]] = {}
    for svc in config.services:
        wanted.setdefault((svc.protocol, svc.port), ("declared service", svc.name, svc.address, Severity.CRITICAL))
    reserved_lookup = settings.reserved
    for r in remembered:
        wanted.setdefault((r.protocol, r.port), ("had a listener earlier", None, None, Severity.WARNING))
    if not wanted and not reserved_lookup:
        return []
    holders: dict[tuple[Protocol, int], list[Socket]] = defaultdict(list)
    for s in snapshot.sockets:
        if s.is_listener or s.state in ORPHAN_STATES or s.remote is None:
            continue
        k = (s.protocol, s.local.port)
        if k in wanted or s.local.port in reserved_lookup:
            holders[k].append(s)
    out = []
    for (protocol, port), socks in sorted(holders.items(), key=by_protocol_and_port):
        if (protocol, port) in wanted:
            reason, name, address, severity = wanted[(protocol, port)]
        else:
            reason, name, address, severity = "reserved port", None, None, Severity.CRITICAL
        if any(covers(ls.local.ip, address) for ls in listening.get((protocol, port), ())):
            continue  # the service is up: these are its own connections
        conflicting = tuple(sorted((s for s in socks if covers(s.local.ip, address)),
                                   key=lambda s: (s.local.ip, s.remote or s.local, s.inode)))
        if not conflicting:
            continue
        hint = ("stop the holder or wait for its connection to close, then start the service; "
                "to keep it from happening again, ")
        hint += (reserve_hint(settings, [port]) if port not in settings.reserved
                 else f"find why a process binds reserved port {port} explicitly")
        out.append(
            DETECTOR.make(f"port_taken:{protocol.value}:{port}", snapshot, conflicting,
                          {"reason": reason, "service": name, "holders": len(conflicting),
                           "example": conflicting[0].describe()},
                          severity=severity, port=port, protocol=protocol, remediation=hint)
        )
    return out


def summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """``service 'api' port 40100/tcp (reason) has no listener and is held by ...``."""
    d = finding.details
    service = f"service {d['service']!r} " if d.get("service") else ""
    return (
        f"{service}port {port_slash_protocol(finding)} "
        f"({d['reason']}) has no listener and is held by {d['holders']} "
        f"non-listening socket(s), e.g. {d['example']}, of {who(processes)}: an outgoing connection on "
        f"it makes the service's bind() fail with EADDRINUSE, even with SO_REUSEADDR "
        f"(the service's own draining connections would not)"
    )


def _find(inp: DetectionInput) -> list[Finding]:
    return find_ports_taken(inp.snapshot, inp.config, inp.remembered, inp.index.listening)


DETECTOR = Detector(
    kind=Kind.PORT_TAKEN,
    severity=Severity.CRITICAL,
    alertname="PortwatchPortTaken",
    find=_find,
    summarize=summarize,
)
