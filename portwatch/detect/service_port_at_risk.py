"""The ``service_port_at_risk`` finding: a declared service's port inside the ephemeral range, not reserved.

Imports :mod:`portwatch.detect.base` and :mod:`portwatch.model` only (pure).
"""

from __future__ import annotations

from portwatch.detect.base import (
    Config,
    Detector,
    covers,
    move_or_reserve_hint,
    on_listening,
    port_slash_protocol,
    who,
)
from portwatch.model import Finding, Kind, Listening, ProcessInfo, Protocol, Severity, Snapshot


def find_services_at_risk(snapshot: Snapshot, config: Config,
                          listening: Listening) -> list[Finding]:
    """Declared services whose port is inside the range and not reserved."""
    settings = snapshot.settings
    out = []
    seen: set[tuple[Protocol, int]] = set()
    for svc in config.services:
        if not settings.is_ephemeral(svc.port) or (svc.protocol, svc.port) in seen:
            continue
        seen.add((svc.protocol, svc.port))
        socks = tuple(s for s in listening.get((svc.protocol, svc.port), ()) if covers(s.local.ip, svc.address))
        out.append(
            DETECTOR.make(f"service_port_at_risk:{svc.protocol.value}:{svc.port}",
                          snapshot, socks,
                          {"service": svc.name, "range": str(settings.port_range), "listening": bool(socks)},
                          port=svc.port, protocol=svc.protocol,
                          remediation=move_or_reserve_hint(settings, svc.port, repr(svc.name)))
        )
    return out


def summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """``service 'api' port 40100/tcp is inside the ephemeral port range ... and not reserved, ...``."""
    d = finding.details
    listening = f", now served by {who(processes)}" if d.get("listening") else ", not listening now"
    return (
        f"service {d['service']!r} port {port_slash_protocol(finding)} "
        f"is inside the ephemeral port range {d['range']} and not reserved{listening}"
    )


DETECTOR = Detector(
    kind=Kind.SERVICE_PORT_AT_RISK,
    severity=Severity.WARNING,
    alertname="PortwatchServicePortAtRisk",
    find=on_listening(find_services_at_risk),
    summarize=summarize,
)
