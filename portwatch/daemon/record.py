"""What the daemon does with a pass's result (and with findings found between passes).

Job: turn a successful pass (a :class:`~portwatch.model.results.NamespacesResult`
over one or more network namespaces) or a batch of event findings into the
daemon's new memory and its log lines: which findings are active
(:func:`active_findings`), the new state (:func:`pass_state`, listeners per
namespace, one finding history for all), the finding events logged once
each (:func:`log_changes`) and the pass's notes logged once while they last
(:func:`log_new_notes`). The loop (:mod:`portwatch.daemon.loop`) calls these
and hands the results to the metrics, the state file and alerting.

May import the standard library, :mod:`portwatch.model`, :mod:`portwatch.collect` (its errors), :mod:`portwatch.detect`
(listening ports), :mod:`portwatch.output` and :mod:`portwatch.daemon.records`
and ``.logs``.
"""

from __future__ import annotations

import logging
from typing import Iterable, Mapping, Sequence

from portwatch.daemon.logs import SEVERITY_LEVEL, finding_fields
from portwatch.daemon.records import (
    REMEMBER_AFTER,
    FindingRecord,
    FindingsUpdate,
    State,
    update_findings,
    update_namespace_listeners,
)
from portwatch.detect import listening_ports
from portwatch.collect import CollectError
from portwatch.model import Finding, SourceUnavailable
from portwatch.model.text import os_error_text
from portwatch.model.results import NamespacesResult
from portwatch.model.snapshot import listener_identities
from portwatch.output.metrics import netns_label

__all__ = ["active_findings", "log_changes", "log_new_notes", "log_scan_failure", "merge_findings", "pass_state"]

#: Errors a scan is expected to raise (logged without a traceback).
EXPECTED_SCAN_ERRORS = (CollectError, SourceUnavailable, OSError, ValueError)

log = logging.getLogger("portwatch.daemon")
findings_log = logging.getLogger("portwatch.findings")


def merge_findings(found: Iterable[Finding], events: Iterable[Finding]) -> tuple[Finding, ...]:
    """``found`` then the ``events`` findings whose key ``found`` does not have (a pass's finding wins)."""
    out = {f.key: f for f in found}
    for f in events:
        out.setdefault(f.key, f)
    return tuple(out.values())


def active_findings(result: NamespacesResult, previous: Mapping[str, Finding]) -> tuple[Finding, ...]:
    """The findings a pass leaves active (before event findings join them).

    The pass's findings, then those of ``previous`` (the active findings
    before the pass) that belong to a namespace the pass could not read
    (``result.skipped``): a namespace that could not be read resolves
    nothing, as a failed scan does. A namespace that vanished resolves its
    findings. Pure.
    """
    unread = {ns.key for ns in result.skipped}
    carried = (f for f in previous.values() if f.namespace is not None and f.namespace.key in unread)
    return merge_findings(result.findings, carried)


def pass_state(state: State, result: NamespacesResult, active: Sequence[Finding], now: float,
               remember_after: float = REMEMBER_AFTER) -> tuple[State, FindingsUpdate]:
    """The state after a successful pass at ``now`` whose active findings are ``active``, and what changed.

    Each namespace scanned updates its own remembered listeners (keyed as
    its ``netns`` label: :func:`~portwatch.output.metrics.netns_label`);
    those that could not be read keep theirs. Pure.
    """
    seen = {netns_label(r): (listening_ports(r.listening), listener_identities(r.snapshot, r.listening))
            for r in result.results}
    host, others = update_namespace_listeners(state, seen, now, keep=[ns.key for ns in result.skipped],
                                              remember_after=remember_after)
    upd = update_findings(state.findings, active, now)
    return State(host, upd.records, others), upd


def log_changes(upd: FindingsUpdate, previous: Mapping[str, Finding]) -> None:
    """Log every new finding of ``upd`` and every resolved one (``previous``: the active findings before)."""
    for f in upd.new:
        pid = f.processes[0].pid if f.processes else None
        findings_log.log(SEVERITY_LEVEL[f.severity], "new %s finding [%s]: %s", f.severity.value, f.key,
                         f.summary, extra=finding_fields(f.kind, f.key, f.severity, f.port, pid))
    for rec in upd.resolved:
        _log_resolved(rec, previous.get(rec.key))


def _log_resolved(rec: FindingRecord, last: Finding | None) -> None:
    port = last.port if last is not None else None
    pid = last.processes[0].pid if last is not None and last.processes else None
    findings_log.info("resolved [%s]: %s", rec.key, rec.summary,
                      extra=finding_fields(rec.kind, rec.key, rec.severity, port, pid))


def log_new_notes(notes: Sequence[str], before: Sequence[str]) -> None:
    """Log (warning) each of a pass's ``notes`` that the pass before did not have: once while it lasts."""
    for note in notes:
        if note not in before:
            log.warning("%s", note)


def log_scan_failure(exc: Exception, last_reason: str | None) -> str:
    """Log a failed pass (an expected error once per distinct reason, a bug with its traceback); its reason."""
    if isinstance(exc, EXPECTED_SCAN_ERRORS):
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:
            reason = os_error_text(exc, with_filename=True)
        if reason != last_reason:
            log.error("scan failed: %s (keeping the previous figures)", reason)
        else:
            log.debug("scan failed again: %s", reason)
        return reason
    log.error("scan failed with an unexpected error (keeping the previous figures)", exc_info=exc)
    return f"{type(exc).__name__}: {exc}"
