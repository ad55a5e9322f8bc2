"""The ``self_connect`` finding: a socket whose local endpoint equals its remote one.

Imports :mod:`portwatch.detect.base` and :mod:`portwatch.model` only (pure).
"""

from __future__ import annotations

from portwatch.detect.base import (
    ORPHAN_STATES,
    DetectionInput,
    Detector,
    SocketIndex,
    index,
    protocol_upper,
    reserve_hint,
    who,
)
from portwatch.model import Finding, Kind, ProcessInfo, Severity, Snapshot


def find_self_connects(snapshot: Snapshot, idx: SocketIndex | None = None) -> list[Finding]:
    """Sockets whose local endpoint equals their remote endpoint (one finding each)."""
    out = []
    for s in (idx or index(snapshot)).self_connected:
        if s.state not in ORPHAN_STATES:
            key = f"self_connect:{s.protocol.value}:{s.local}"
            in_range = snapshot.settings.is_ephemeral(s.local.port)
            hint = (
                f"close the socket (restart its process). The client connected to local port "
                f"{s.local.port} while nothing listened there; start the server before its clients"
            )
            if in_range:
                hint += f", and keep connect() from picking the port: {reserve_hint(snapshot.settings, [s.local.port])}"
            out.append(
                DETECTOR.make(key, snapshot, (s,), {"endpoint": str(s.local)},
                              port=s.local.port, protocol=s.protocol, remediation=hint)
            )
    return out


def summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """``TCP socket 127.0.0.1:40002 is connected to itself (self-connect): ...; held by ...``."""
    return (
        f"{protocol_upper(finding)} socket {finding.details['endpoint']} is connected to itself (self-connect): "
        f"its client talks to itself and no server can bind port {finding.port}; held by {who(processes)}"
    )


def _find(inp: DetectionInput) -> list[Finding]:
    return find_self_connects(inp.snapshot, inp.index)


DETECTOR = Detector(
    kind=Kind.SELF_CONNECT,
    severity=Severity.CRITICAL,
    alertname="PortwatchSelfConnect",
    find=_find,
    summarize=summarize,
)
