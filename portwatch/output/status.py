"""The daemon's short status texts: systemd's ``STATUS=`` line and the HTML index page.

Job: the one place these are worded: :func:`status_line` (after a successful
scan), :func:`pass_status_line` (after a pass over one or more namespaces),
:func:`failed_status_line` (after a failed one),
:func:`findings_html` (the status, the pass's notes and the active findings,
escaped) and :func:`index_page` (the page ``/`` serves). Pure functions; may import the
standard library and :mod:`portwatch.model` only.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Sequence

from portwatch.model import Finding, NamespaceKind, ScanResult, Severity
from portwatch.model.results import NamespacesResult

__all__ = ["INDEX_FINDINGS", "failed_status_line", "findings_html", "index_page", "one_line", "pass_status_line",
           "status_line"]

#: At most this many findings on the index page.
INDEX_FINDINGS = 50


def status_line(result: ScanResult) -> str:
    """systemd's ``STATUS=`` for a successful scan: ``42 sockets, 1 critical, 2 warning; last scan 12 ms``."""
    critical = sum(1 for f in result.findings if f.severity is Severity.CRITICAL)
    warning = sum(1 for f in result.findings if f.severity is Severity.WARNING)
    ms = max(result.duration, 0.0) * 1000
    return (f"{result.snapshot.socket_total} sockets, {critical} critical, {warning} warning; "
            f"last scan {ms:.0f} ms")


def pass_status_line(result: NamespacesResult, own_only: bool = False) -> str:
    """systemd's ``STATUS=`` after a successful pass.

    A pass of one namespace reads as :func:`status_line` (the pass's
    duration); several: ``420 sockets in 12 namespaces, 1 critical, 2
    warning; last scan 80 ms``. ``own_only`` (the namespaces could not be
    entered) adds ``; own network namespace only (no CAP_SYS_ADMIN)``;
    namespaces found but not read add ``; N not readable``.
    """
    if len(result.results) == 1:
        text = status_line(dataclasses.replace(result.results[0], duration=result.duration))
    else:
        critical = sum(1 for f in result.findings if f.severity is Severity.CRITICAL)
        warning = sum(1 for f in result.findings if f.severity is Severity.WARNING)
        sockets = sum(r.snapshot.socket_total for r in result.results)
        ms = max(result.duration, 0.0) * 1000
        text = (f"{sockets} sockets in {len(result.results)} namespaces, {critical} critical, {warning} warning;"
                f" last scan {ms:.0f} ms")
    if own_only:
        text += "; own network namespace only (no CAP_SYS_ADMIN)"
    if result.skipped:
        text += f"; {len(result.skipped)} not readable"
    return text


def failed_status_line(reason: str, figures_age: float | None) -> str:
    """systemd's ``STATUS=`` after a failed pass: the reason, and the age (s) of the figures kept, if any."""
    text = f"scan failed: {one_line(reason, 120)}"
    return text if figures_age is None else f"{text}; figures from {figures_age:.0f} s ago"


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _where(f: Finding) -> str:
    """``[netns] `` for a finding outside the host namespace, else nothing."""
    ns = f.namespace
    return "" if ns is None or ns.kind is NamespaceKind.HOST else f"[{ns.key}] "


def findings_html(status: str, active: Sequence[Finding], notes: Sequence[str] = ()) -> str:
    """The status line, the notes and the active findings (at most :data:`INDEX_FINDINGS`) as HTML, escaped.

    A finding outside the host namespace is prefixed with its namespace's key in brackets.
    """
    items = "".join(
        f"<li>{html.escape(f.severity.value)}: {html.escape(_where(f) + f.summary)}</li>\n"
        for f in active[:INDEX_FINDINGS])
    more = f"<li>and {len(active) - INDEX_FINDINGS} more</li>\n" if len(active) > INDEX_FINDINGS else ""
    listing = f"<ul>\n{items}{more}</ul>" if active else "<p>No active findings.</p>"
    noted = "".join(f"<p>Note: {html.escape(note)}</p>\n" for note in notes)
    return f"<p>Status: {html.escape(status)}</p>\n{noted}{listing}"


def index_page(version: str, extra: str = "") -> str:
    """The HTML of ``/``: name, ``version`` (escaped), links to the endpoints, then ``extra`` (trusted HTML)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>portwatch</title></head>\n"
        "<body>\n<h1>portwatch</h1>\n"
        "<p>Catches the failures caused by the ephemeral port range.</p>\n"
        f"<p>Version {html.escape(version)}</p>\n"
        "<ul>\n<li><a href=\"metrics\">Metrics</a></li>\n"
        "<li><a href=\"-/healthy\">Health</a></li>\n<li><a href=\"-/ready\">Readiness</a></li>\n</ul>\n"
        f"{extra}\n</body>\n</html>\n"
    )
