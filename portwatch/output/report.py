"""The terminal report of a scan (``portwatch scan``, the default table format).

Job: :func:`render_text`, readable by a person, with every non-printable
character escaped (process names and command lines are chosen by whoever
started the process). Pure; may import the standard library and
:mod:`portwatch.model` (and :mod:`portwatch.output.json` for the shared counts).
:func:`to_json_document` is re-exported from :mod:`portwatch.output.json`.
"""

from __future__ import annotations

from typing import Any

from portwatch import __version__
from portwatch.model import ScanResult, Severity, format_port_set
from portwatch.model.text import iso_time
from portwatch.output.json import JSON_SCHEMA_VERSION, severity_counts, socket_counts, to_json_document

__all__ = ["JSON_SCHEMA_VERSION", "render_text", "severity_counts", "socket_counts", "to_json_document"]


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
        f"portwatch {__version__}: scan of {host} at {iso_time(snap.taken_at)} "
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
