"""The daemon's short status texts: systemd's ``STATUS=`` line and the HTML index page.

Job: the one place these are worded: :func:`status_line` (after a successful
scan), :func:`findings_html` (the status and the active findings, escaped)
and :func:`index_page` (the page ``/`` serves). Pure functions; may import the
standard library and :mod:`portwatch.model` only.
"""

from __future__ import annotations

import html
from typing import Sequence

from portwatch.model import Finding, ScanResult, Severity

__all__ = ["INDEX_FINDINGS", "findings_html", "index_page", "one_line", "status_line"]

#: At most this many findings on the index page.
INDEX_FINDINGS = 50


def status_line(result: ScanResult) -> str:
    """systemd's ``STATUS=`` for a successful scan: ``42 sockets, 1 critical, 2 warning; last scan 12 ms``."""
    critical = sum(1 for f in result.findings if f.severity is Severity.CRITICAL)
    warning = sum(1 for f in result.findings if f.severity is Severity.WARNING)
    ms = max(result.duration, 0.0) * 1000
    return (f"{len(result.snapshot.sockets)} sockets, {critical} critical, {warning} warning; "
            f"last scan {ms:.0f} ms")


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def findings_html(status: str, active: Sequence[Finding]) -> str:
    """The status line and the active findings (at most :data:`INDEX_FINDINGS`) as HTML, escaped."""
    items = "".join(
        f"<li>{html.escape(f.severity.value)}: {html.escape(f.summary)}</li>\n"
        for f in active[:INDEX_FINDINGS])
    more = f"<li>and {len(active) - INDEX_FINDINGS} more</li>\n" if len(active) > INDEX_FINDINGS else ""
    listing = f"<ul>\n{items}{more}</ul>" if active else "<p>No active findings.</p>"
    return f"<p>Status: {html.escape(status)}</p>\n{listing}"


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
