"""The ``listener_in_ephemeral_range`` finding: a listener on an unreserved port inside the ephemeral range.

Imports :mod:`portwatch.detect.base` and :mod:`portwatch.model` only (pure).
"""

from __future__ import annotations

from portwatch.detect.base import (
    Config,
    Detector,
    by_protocol_and_port,
    move_or_reserve_hint,
    on_listening,
    protocol_upper,
    who,
)
from portwatch.model import Finding, Kind, Listening, ProcessInfo, Severity, Snapshot


def find_listeners_in_range(snapshot: Snapshot, config: Config,
                            listening: Listening) -> list[Finding]:
    """Listeners (TCP LISTEN, bound UDP) on unreserved ports inside the range, one finding per port.

    Ports of declared services are left to ``service_port_at_risk``.
    """
    settings = snapshot.settings
    declared = {(svc.protocol, svc.port) for svc in config.services}
    out = []
    for (protocol, port), sockets in sorted(listening.items(), key=by_protocol_and_port):
        if not settings.is_ephemeral(port) or (protocol, port) in declared:
            continue
        socks = tuple(sorted(sockets, key=lambda s: (s.local.ip, s.inode)))
        endpoints = sorted({str(s.local) for s in socks})
        out.append(
            DETECTOR.make(f"listener_in_ephemeral_range:{protocol.value}:{port}",
                          snapshot, socks, {"endpoints": endpoints, "range": str(settings.port_range)},
                          port=port, protocol=protocol,
                          remediation=move_or_reserve_hint(settings, port))
        )
    return out


def summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """``TCP port 40005 (endpoints, holders) listens inside the ephemeral port range ...``."""
    d = finding.details
    endpoints = ", ".join(d["endpoints"])
    return (
        f"{protocol_upper(finding)} port {finding.port} ({endpoints}, {who(processes)}) listens inside the "
        f"ephemeral port range {d['range']}: while it is down, an outgoing connection can take it"
    )


DETECTOR = Detector(
    kind=Kind.LISTENER_IN_EPHEMERAL_RANGE,
    severity=Severity.WARNING,
    alertname="PortwatchListenerInEphemeralRange",
    find=on_listening(find_listeners_in_range),
    summarize=summarize,
)
