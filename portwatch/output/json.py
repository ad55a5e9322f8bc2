"""The JSON document of a scan (``portwatch scan --format json``), ``schema`` 1.

Job: :func:`to_json_document` (of one namespace's :class:`ScanResult` or of
a pass over several, :class:`~portwatch.model.results.NamespacesResult`),
and the per-protocol/state and per-severity counts the terminal report
shares. The shape is stable and documented in the
README: additions are possible, removals or renames bump ``schema``. Pure;
may import the standard library and :mod:`portwatch.model` only.
"""

from __future__ import annotations

from collections import Counter

from portwatch import __version__
from portwatch.model import Finding, KernelSettings, NamespaceInfo, ScanResult, Severity, Snapshot, format_port_set
from portwatch.model.results import NamespacesResult
from portwatch.model.text import iso_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["JSON_SCHEMA_VERSION", "finding_documents", "kernel_document", "namespace_document", "namespace_ref",
           "severity_counts", "socket_counts", "sockets_document", "to_json_document"]

JSON_SCHEMA_VERSION = 1


def socket_counts(snapshot: Snapshot) -> dict[str, dict[str, int]]:
    """Sockets per protocol and state: ``{"tcp": {"ESTABLISHED": 3, ...}, "udp": {...}}``."""
    counts = snapshot.state_counts()
    out: dict[str, dict[str, int]] = {}
    for (proto, state), n in sorted(counts.items()):
        out.setdefault(proto, {})[state] = n
    return out


def severity_counts(findings: tuple[Finding, ...]) -> dict[str, int]:
    """Findings per severity, every severity present (0 when none)."""
    c = Counter(f.severity.value for f in findings)
    return {sev.value: c.get(sev.value, 0) for sev in Severity}


def kernel_document(settings: KernelSettings) -> dict[str, Any]:
    """The ``kernel`` object: range, reserved ports, usable ports, unprivileged port start."""
    return {
        "ip_local_port_range": [settings.port_range.low, settings.port_range.high],
        "ip_local_reserved_ports": format_port_set(settings.reserved),
        "reserved_ports_in_range": settings.port_range.size - settings.usable_ports,
        "usable_ephemeral_ports": settings.usable_ports,
        "ip_unprivileged_port_start": settings.unprivileged_port_start,
    }


def sockets_document(snapshot: Snapshot) -> dict[str, Any]:
    """The ``sockets`` object: the total and the counts per protocol and state."""
    return {"total": snapshot.socket_total, "by_protocol_state": socket_counts(snapshot)}


def namespace_ref(namespace: NamespaceInfo) -> dict[str, Any]:
    """The ``namespace`` object of a finding: ``id`` (the nsfs inode) and ``name``; for a pod whose
    bundle was readable also ``pod_namespace`` and ``pod_name`` (its Kubernetes namespace and name)."""
    ref: dict[str, Any] = {"id": namespace.inode, "name": namespace.name}
    if namespace.pod_ref is not None:
        ref.update(pod_namespace=namespace.pod_namespace, pod_name=namespace.pod_name)
    return ref


def namespace_document(result: ScanResult) -> dict[str, Any] | None:
    """One entry of the top-level ``namespaces`` list for ``result`` (None when it has no namespace).

    ``id`` (inode), ``name``, ``pod_namespace``/``pod_name`` (as
    :func:`namespace_ref`), ``key`` (what finding keys and metrics use),
    ``kind``, ``container``/``container_name``/``runtime``/``pod`` (uid)/``unit``/``netns`` when known,
    ``pids``, ``kernel``, ``sockets`` and ``counts``.
    """
    ns = result.snapshot.namespace
    if ns is None:
        return None
    doc: dict[str, Any] = {**namespace_ref(ns), "key": ns.key, "kind": ns.kind.value}
    known = {"netns": ns.netns_name, "container": ns.container, "container_name": ns.container_name,
             "runtime": ns.runtime, "pod": ns.pod_uid, "unit": ns.unit}
    doc.update({k: v for k, v in known.items() if v is not None})
    doc["pids"] = list(ns.pids)
    doc["kernel"] = kernel_document(result.snapshot.settings)
    doc["sockets"] = sockets_document(result.snapshot)
    doc["counts"] = {**severity_counts(result.findings), "ignored": len(result.ignored)}
    return doc


def finding_documents(result: ScanResult) -> list[dict[str, Any]]:
    """``result``'s findings as JSON objects, each with its ``namespace`` when known."""
    ns = result.snapshot.namespace
    if ns is None:
        return [f.to_dict() for f in result.findings]
    ref = namespace_ref(ns)
    return [{**f.to_dict(), "namespace": dict(ref)} for f in result.findings]


def to_json_document(result: ScanResult | NamespacesResult, host: str) -> dict[str, Any]:
    """The ``portwatch scan --format json`` document for ``result`` on ``host``.

    For a scan of several namespaces the top-level ``kernel``, ``sockets``
    and ``taken_at`` describe the first one scanned (the host namespace when
    it was), ``findings``, ``counts`` and ``notes`` cover all of them, and
    ``namespaces`` lists each; a finding's ``namespace`` says where it is.
    """
    if isinstance(result, NamespacesResult):
        parts, notes, duration = result.results, result.notes, result.duration
    else:
        parts, notes, duration = (result,), (), result.duration
    if not parts:
        raise ValueError("no namespace was scanned")
    first = parts[0].snapshot
    findings = tuple(f for r in parts for f in r.findings)
    ignored = sum(len(r.ignored) for r in parts)
    all_notes = tuple(dict.fromkeys((*(n for r in parts for n in r.snapshot.notes), *notes)))
    return {
        "schema": JSON_SCHEMA_VERSION,
        "portwatch_version": __version__,
        "host": host,
        "taken_at": iso_time(first.taken_at),
        "source": first.source,
        "duration_seconds": round(duration, 6),
        "kernel": kernel_document(first.settings),
        "sockets": sockets_document(first),
        "counts": {**severity_counts(findings), "ignored": ignored},
        "findings": [doc for r in parts for doc in finding_documents(r)],
        "notes": list(all_notes),
        "namespaces": [doc for doc in map(namespace_document, parts) if doc is not None],
    }
