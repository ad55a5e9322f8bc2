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
from portwatch.model import Finding, NamespaceInfo, ScanResult, Severity, format_port_set
from portwatch.model.results import NamespacesResult
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


def _settings_lines(result: ScanResult, pad: str) -> list[str]:
    """The range, reserved ports, unprivileged start, socket and finding counts of one namespace."""
    snap = result.snapshot
    st = snap.settings
    lines = [
        f"{pad}ephemeral port range   {st.port_range} ({st.port_range.size} ports, {st.usable_ports} usable)",
        f"{pad}reserved ports         {format_port_set(st.reserved) or '(none)'}",
        f"{pad}unprivileged ports     from {st.unprivileged_port_start}",
    ]
    per_proto = socket_counts(snap)
    sock_desc = "; ".join(
        f"{proto} " + ", ".join(f"{n} {state}" for state, n in sorted(states.items(), key=lambda kv: -kv[1]))
        for proto, states in per_proto.items()
    )
    lines.append(f"{pad}sockets                {len(snap.sockets)}" + (f" ({sock_desc})" if sock_desc else ""))
    counts = severity_counts(result.findings)
    summary = ", ".join(f"{n} {sev}" for sev, n in reversed(list(counts.items())))
    if result.ignored:
        summary += f" ({len(result.ignored)} ignored by configuration)"
    lines.append(f"{pad}findings               {summary}")
    return lines


def _finding_lines(findings: tuple[Finding, ...], pad: str) -> list[str]:
    """Findings by severity, most severe first, each with its key, processes, sockets and fix."""
    lines: list[str] = []
    for sev in reversed(list(Severity)):
        group = [f for f in findings if f.severity is sev]
        if not group:
            continue
        lines.append(f"{pad}{sev.value.upper()} ({len(group)})")
        for f in group:
            lines.append(f"{pad}  [{f.kind.value}] {f.summary}")
            lines.append(f"{pad}      key:      {f.key}")
            for p in f.processes[:5]:
                lines.append(f"{pad}      process:  {_process_line(p)}")
            if len(f.processes) > 5:
                lines.append(f"{pad}      process:  ... and {len(f.processes) - 5} more")
            for s in f.sockets[:3]:
                lines.append(f"{pad}      socket:   {s.describe()}")
            if len(f.sockets) > 3:
                lines.append(f"{pad}      socket:   ... and {len(f.sockets) - 3} more")
            if f.remediation:
                lines.append(f"{pad}      fix:      {f.remediation}")
        lines.append("")
    return lines


def _namespace_title(ns: NamespaceInfo) -> str:
    """``namespace blue (named)``, with the container, pod, unit and key when they say more."""
    extra = [ns.kind.value]
    if ns.container and ns.container != ns.name:
        extra.append(f"container {ns.container[:12]}")
    if ns.pod_uid and ns.pod_uid != ns.name:
        extra.append(f"pod {ns.pod_uid}")
    if ns.unit and ns.unit != ns.name:
        extra.append(f"unit {ns.unit}")
    if ns.key != ns.name:
        extra.append(f"key {ns.key}")
    return f"network namespace {ns.name} ({', '.join(extra)})"


def render_text(result: ScanResult | NamespacesResult, host: str) -> str:
    """A readable report: the range, reserved ports, counts, then findings by severity.

    A scan of several namespaces (:class:`~portwatch.model.results.NamespacesResult`)
    says how many were scanned and gives each namespace its own section.
    """
    if isinstance(result, NamespacesResult):
        return _render_namespaces(result, host)
    snap = result.snapshot
    lines = [
        f"portwatch {__version__}: scan of {host} at {iso_time(snap.taken_at)} "
        f"({snap.source} source, {result.duration * 1000:.0f} ms)",
        "",
        *_settings_lines(result, "  "),
        "",
    ]
    if not result.findings:
        lines.append("No problems found.")
    lines += _finding_lines(result.findings, "")
    for note in snap.notes:
        lines.append(f"note: {note}")
    return "\n".join(_printable(line) for line in lines).rstrip() + "\n"


def _render_namespaces(result: NamespacesResult, host: str) -> str:
    """:func:`render_text` of a pass over several namespaces."""
    taken = result.results[0].snapshot.taken_at if result.results else 0.0
    n = len(result.results)
    counts = severity_counts(result.findings)
    summary = ", ".join(f"{c} {sev}" for sev, c in reversed(list(counts.items())))
    lines = [
        f"portwatch {__version__}: scan of {host} at {iso_time(taken)} "
        f"({n} network namespace{'s' if n != 1 else ''} scanned, {result.duration * 1000:.0f} ms)",
        f"  findings               {summary}",
        "",
    ]
    for part in result.results:
        ns = part.snapshot.namespace
        lines.append(_namespace_title(ns) if ns is not None else "network namespace (own)")
        lines += _settings_lines(part, "  ")
        lines.append("")
        lines += _finding_lines(part.findings, "  ")
    if not result.findings:
        lines.append("No problems found.")
    notes = dict.fromkeys((*(m for r in result.results for m in r.snapshot.notes), *result.notes))
    for note in notes:
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
