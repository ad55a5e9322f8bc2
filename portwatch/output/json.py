"""The JSON document of a scan (``portwatch scan --format json``), ``schema`` 1.

Job: :func:`to_json_document`, and the per-protocol/state and per-severity
counts the terminal report shares. The shape is stable and documented in the
README: additions are possible, removals or renames bump ``schema``. Pure;
may import the standard library and :mod:`portwatch.model` only.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from portwatch import __version__
from portwatch.model import Finding, ScanResult, Severity, Snapshot, format_port_set
from portwatch.model.text import iso_time

__all__ = ["JSON_SCHEMA_VERSION", "severity_counts", "socket_counts", "to_json_document"]

JSON_SCHEMA_VERSION = 1


def socket_counts(snapshot: Snapshot) -> dict[str, dict[str, int]]:
    """Sockets per protocol and state: ``{"tcp": {"ESTABLISHED": 3, ...}, "udp": {...}}``."""
    counts: Counter[tuple[str, str]] = Counter((s.protocol.value, s.state.value) for s in snapshot.sockets)
    out: dict[str, dict[str, int]] = {}
    for (proto, state), n in sorted(counts.items()):
        out.setdefault(proto, {})[state] = n
    return out


def severity_counts(findings: tuple[Finding, ...]) -> dict[str, int]:
    """Findings per severity, every severity present (0 when none)."""
    c = Counter(f.severity.value for f in findings)
    return {sev.value: c.get(sev.value, 0) for sev in Severity}


def to_json_document(result: ScanResult, host: str) -> dict[str, Any]:
    """The ``portwatch scan --format json`` document for ``result`` on ``host``."""
    snap = result.snapshot
    st = snap.settings
    return {
        "schema": JSON_SCHEMA_VERSION,
        "portwatch_version": __version__,
        "host": host,
        "taken_at": iso_time(snap.taken_at),
        "source": snap.source,
        "duration_seconds": round(result.duration, 6),
        "kernel": {
            "ip_local_port_range": [st.port_range.low, st.port_range.high],
            "ip_local_reserved_ports": format_port_set(st.reserved),
            "reserved_ports_in_range": st.port_range.size - st.usable_ports,
            "usable_ephemeral_ports": st.usable_ports,
            "ip_unprivileged_port_start": st.unprivileged_port_start,
        },
        "sockets": {"total": len(snap.sockets), "by_protocol_state": socket_counts(snap)},
        "counts": {**severity_counts(result.findings), "ignored": len(result.ignored)},
        "findings": [f.to_dict() for f in result.findings],
        "notes": list(snap.notes),
    }
