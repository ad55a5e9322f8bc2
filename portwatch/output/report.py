"""Rendering a scan for people (a terminal report) and for machines (a JSON document).

Pure functions of a :class:`~portwatch.model.ScanResult` plus what the caller
knows about the host; no I/O.

The JSON document's shape (``schema`` 1) is stable and documented in the
README: additions are possible, removals or renames bump ``schema``.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from typing import Any

from portwatch import __version__
from portwatch.model import Finding, Severity, Snapshot, format_port_set
from portwatch.model import ScanResult

JSON_SCHEMA_VERSION = 1


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


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
        "taken_at": _iso(snap.taken_at),
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


def _process_line(p: Any) -> str:
    parts = [p.label()]
    if p.gone:
        parts.append("(exited)")
    if p.user:
        parts.append(f"user {p.user}")
    if p.unit:
        parts.append(f"unit {p.unit}")
    line = ", ".join(parts)
    if p.cmdline:
        cmd = " ".join(p.cmdline)
        line += ": " + (cmd if len(cmd) <= 100 else cmd[:97] + "...")
    return line


def render_text(result: ScanResult, host: str) -> str:
    """A readable report: the range, reserved ports, counts, then findings by severity."""
    snap = result.snapshot
    st = snap.settings
    lines = [
        f"portwatch {__version__}: scan of {host} at {_iso(snap.taken_at)} "
        f"({snap.source} source, {result.duration * 1000:.0f} ms)",
        "",
        f"  ephemeral port range   {st.port_range} ({st.port_range.size} ports, {st.usable_ports} usable)",
        f"  reserved ports         {format_port_set(st.reserved) or '(none)'}",
        f"  unprivileged ports     from {st.unprivileged_port_start}",
    ]
    per_proto = socket_counts(snap)
    sock_desc = "; ".join(
        f"{proto} " + ", ".join(f"{n} {state}" for state, n in sorted(states.items(), key=lambda kv: -kv[1]))
        for proto, states in per_proto.items()
    )
    lines.append(f"  sockets                {len(snap.sockets)}" + (f" ({sock_desc})" if sock_desc else ""))
    counts = severity_counts(result.findings)
    summary = ", ".join(f"{n} {sev}" for sev, n in reversed(list(counts.items())))
    if result.ignored:
        summary += f" ({len(result.ignored)} ignored by configuration)"
    lines.append(f"  findings               {summary}")
    lines.append("")
    if not result.findings:
        lines.append("No problems found.")
    for sev in reversed(list(Severity)):
        group = [f for f in result.findings if f.severity is sev]
        if not group:
            continue
        lines.append(f"{sev.value.upper()} ({len(group)})")
        for f in group:
            lines.append(f"  [{f.kind.value}] {f.summary}")
            lines.append(f"      key:      {f.key}")
            for p in f.processes[:5]:
                lines.append(f"      process:  {_process_line(p)}")
            if len(f.processes) > 5:
                lines.append(f"      process:  ... and {len(f.processes) - 5} more")
            for s in f.sockets[:3]:
                lines.append(f"      socket:   {s.describe()}")
            if len(f.sockets) > 3:
                lines.append(f"      socket:   ... and {len(f.sockets) - 3} more")
            if f.remediation:
                lines.append(f"      fix:      {f.remediation}")
        lines.append("")
    for note in snap.notes:
        lines.append(f"note: {note}")
    return "\n".join(_printable(line) for line in lines).rstrip() + "\n"


def _printable(text: str) -> str:
    """``text`` with every non-printable character as ``\\xNN`` (or ``\\uNNNN``).

    Process names and command lines are chosen by whoever started the process;
    an escape sequence in one must not reach the terminal of the person reading
    the report.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   for c in text)
