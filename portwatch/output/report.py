"""The terminal report of a scan (``portwatch scan``, the default table format).

Job: :func:`render_text`, readable by a person, with every non-printable
character escaped (process names and command lines are chosen by whoever
started the process). Pure; may import the standard library and
:mod:`portwatch.model` (and :mod:`portwatch.output.json` for the shared counts).
:func:`to_json_document` is re-exported from :mod:`portwatch.output.json`.
"""

from __future__ import annotations

import re

from portwatch import __version__
from portwatch.model import Finding, NamespaceInfo, ScanResult, Severity, format_port_set
from portwatch.model.results import NamespacesResult
from portwatch.model.text import iso_time, printable
from portwatch.output.json import JSON_SCHEMA_VERSION, severity_counts, socket_counts, to_json_document

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["JSON_SCHEMA_VERSION", "render_text", "severity_counts", "socket_counts", "to_json_document",
           "wrap_lines"]


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
    lines.append(f"{pad}sockets                {snap.socket_total}" + (f" ({sock_desc})" if sock_desc else ""))
    counts = severity_counts(result.findings)
    summary = ", ".join(f"{n} {sev}" for sev, n in reversed(list(counts.items())))
    if result.ignored:
        summary += f" ({len(result.ignored)} ignored by configuration)"
    lines.append(f"{pad}findings               {summary}")
    return lines


#: Findings that share kind, protocol, processes and fix are shown as one entry from this many on.
GROUP_FROM = 2


def _port_free_fix(f: Finding) -> str | None:
    """``f``'s fix with its own port replaced by ``{ports}`` (what its group shares), or None."""
    if f.remediation is None or f.port is None:
        return f.remediation
    return re.sub(rf"(?<![0-9]){f.port}(?![0-9])", "{ports}", f.remediation)


def _group(findings: list[Finding]) -> list[list[Finding]]:
    """``findings`` in order, those sharing kind, protocol, processes and fix (but for the port) together.

    Only findings about a port are grouped; a group keeps the position of its
    first member.
    """
    groups: dict[object, list[Finding]] = {}
    order: list[list[Finding]] = []
    for f in findings:
        if f.port is None:
            order.append([f])
            continue
        key = (f.kind, f.protocol, tuple(p.label() for p in f.processes), _port_free_fix(f))
        if key in groups:
            groups[key].append(f)
        else:
            groups[key] = [f]
            order.append(groups[key])
    return order


def _entry_lines(f: Finding, pad: str, sockets: tuple[Any, ...]) -> list[str]:
    """The key-less detail lines of one entry: processes, sockets (from ``sockets``)."""
    lines = [f"{pad}      process:  {_process_line(p)}" for p in f.processes[:5]]
    if len(f.processes) > 5:
        lines.append(f"{pad}      process:  ... and {len(f.processes) - 5} more")
    lines += [f"{pad}      socket:   {s.describe()}" for s in sockets[:3]]
    if len(sockets) > 3:
        lines.append(f"{pad}      socket:   ... and {len(sockets) - 3} more")
    return lines


def _finding_lines(findings: tuple[Finding, ...], pad: str, verbose: bool = False) -> list[str]:
    """Findings by severity, most severe first, each with its key, processes, sockets and fix.

    Unless ``verbose``, findings of one kind, protocol, set of processes and fix
    (but for the port) are one entry naming their port set, e.g. 3,000
    listeners of one process are one entry with ``40000-42999``.
    """
    lines: list[str] = []
    for sev in reversed(list(Severity)):
        members = [f for f in findings if f.severity is sev]
        if not members:
            continue
        lines.append(f"{pad}{sev.value.upper()} ({len(members)})")
        for group in ([[f] for f in members] if verbose else _group(members)):
            f = group[0]
            if len(group) < GROUP_FROM:
                lines.append(f"{pad}  [{f.kind.value}] {f.summary}")
                lines.append(f"{pad}      key:      {f.key}")
                lines += _entry_lines(f, pad, f.sockets)
                if f.remediation:
                    lines.append(f"{pad}      fix:      {f.remediation}")
                continue
            ports = format_port_set(g.port for g in group if g.port is not None)
            proto = f"/{f.protocol.value}" if f.protocol else ""
            lines.append(f"{pad}  [{f.kind.value}] {len(group)} findings on ports {ports}{proto}, "
                         f"alike but for the port (--verbose lists each); the first: {f.summary}")
            lines.append(f"{pad}      keys:     {f.key} ... {group[-1].key}")
            lines += _entry_lines(f, pad, tuple(s for g in group for s in g.sockets[:1]))
            fix = _port_free_fix(f)
            if fix:
                lines.append(f"{pad}      fix:      {fix.replace('{ports}', ports)}")
        lines.append("")
    return lines


def _namespace_title(ns: NamespaceInfo) -> str:
    """``namespace blue (named)``, with the pod's ``NAMESPACE/NAME``, container, pod uid, unit and key
    when they say more."""
    extra = [ns.kind.value]
    if ns.pod_ref:
        extra.append(f"pod {ns.pod_ref}")
    if ns.container and ns.container != ns.name:
        extra.append(f"container {ns.container[:12]}")
    if ns.pod_uid and ns.pod_uid != ns.name:
        extra.append(f"pod {ns.pod_uid}")
    if ns.unit and ns.unit != ns.name:
        extra.append(f"unit {ns.unit}")
    if ns.key != ns.name:
        extra.append(f"key {ns.key}")
    return f"network namespace {ns.name} ({', '.join(extra)})"


#: The head of a line whose value continuation lines are indented under:
#: ``      key:      ``, ``  [listener_in_ephemeral_range] ``, ``  ephemeral port range   ``
#: (a pattern, compiled on first use: a report that is not wrapped never needs it).
_FIELD = r"^(\s*(?:[a-z]+:\s+|\[[^\]]*\]\s+|[a-z][a-z ]*?\s{2,}|note:\s+)?)\S"
#: Narrower than this, wrapping would make a report harder to read than long lines do.
MIN_WIDTH = 40


def wrap_lines(text: str, width: int | None) -> str:
    """``text`` with each line longer than ``width`` columns wrapped, continuations under the line's field.

    A line's field is its indented label (``key:``, ``[kind]``, ``reserved
    ports``); continuation lines start where the value after it starts (or 4
    columns in, when that is past half the width). ``width`` None or under
    :data:`MIN_WIDTH`: ``text`` unchanged. Words longer than a line are cut.
    """
    if width is None or width < MIN_WIDTH:
        return text
    import textwrap  # only a terminal's report is wrapped

    out: list[str] = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
            continue
        match = re.match(_FIELD, line)
        head = match.group(1) if match else ""
        indent = len(head) if len(head) <= width // 2 else len(head) - len(head.lstrip()) + 4
        chunks = textwrap.wrap(line[len(head):], width=width - indent, break_on_hyphens=False)
        if not chunks:
            out.append(line)
            continue
        if len(head) > indent:  # a head past half the width: its value starts on the next line
            out.append(head.rstrip())
        else:
            out.append(head + chunks.pop(0))
        out += [" " * indent + chunk for chunk in chunks]
    return "\n".join(out)


def render_text(result: ScanResult | NamespacesResult, host: str, verbose: bool = False,
                width: int | None = None) -> str:
    """A readable report: the range, reserved ports, counts, then findings by severity.

    A scan of several namespaces (:class:`~portwatch.model.results.NamespacesResult`)
    says how many were scanned and gives each namespace its own section. Findings
    alike but for their port are one entry with the port set unless ``verbose``.
    ``width``: wrap lines to this many columns (see :func:`wrap_lines`); None
    (a pipe, a file): one line per line, however long.
    """
    if isinstance(result, NamespacesResult):
        return wrap_lines(_render_namespaces(result, host, verbose), width)
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
    lines += _finding_lines(result.findings, "", verbose)
    for note in snap.notes:
        lines.append(f"note: {note}")
    return wrap_lines("\n".join(printable(line) for line in lines).rstrip() + "\n", width)


def _render_namespaces(result: NamespacesResult, host: str, verbose: bool) -> str:
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
        lines += _finding_lines(part.findings, "  ", verbose)
    if not result.findings:
        lines.append("No problems found.")
    notes = dict.fromkeys((*(m for r in result.results for m in r.snapshot.notes), *result.notes))
    for note in notes:
        lines.append(f"note: {note}")
    return "\n".join(printable(line) for line in lines).rstrip() + "\n"
