"""The ``bind_failed`` finding: a process got EADDRINUSE from ``bind()``; names who held the port (audit capture).

An event finding: it comes from :class:`~portwatch.model.failures.FailureEvent`
values, not from a snapshot (the detector's ``find`` yields nothing in a
scan). :func:`find_bind_failures` takes the failures of one network
namespace (each carrying the port's holders from the targeted dump made
right after it) and the latest :class:`~portwatch.model.ScanResult` of that
namespace, and names the process, the port and address, the holder, and
links the ``port_taken`` finding of that port when the scan has one.
Imports :mod:`portwatch.detect.base` and :mod:`portwatch.model` only (pure).
"""

from __future__ import annotations

from portwatch.model.records import replace

from portwatch.detect.base import Config, configured_severity, event_detector, reserve_hint, who
from portwatch.model import (
    Finding,
    Kind,
    NamespaceInfo,
    ProcessInfo,
    ScanResult,
    Severity,
    Socket,
    SocketState,
)
from portwatch.model.failures import (
    DEFAULT_FAILURE_WINDOW,
    FailedCall,
    FailureEvent,
    Holder,
    group_failures,
    keyed_namespace,
    times_words,
    where_words,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable


def _port_taken_of(result: ScanResult | None, port: int) -> Finding | None:
    """The scan's ``port_taken`` finding of ``port`` (TCP first), if any."""
    if result is None:
        return None
    found = [f for f in result.findings if f.kind is Kind.PORT_TAKEN and f.port == port]
    return min(found, key=lambda f: (f.protocol.value if f.protocol else "", f.key), default=None)


def _holder_words(holders: tuple[Holder, ...]) -> str:
    """``kube-apiserver[77] (tcp 127.0.0.1:10254 -> 127.0.0.2:2379 ESTABLISHED)``, the first three holders."""
    parts = []
    for h in holders[:3]:
        sock = h.socket
        remote = f" -> {sock.remote}" if sock.remote is not None else ""
        parts.append(f"{who(h.processes)} ({sock.local}{remote}, {sock.protocol.value} {sock.state.value})")
    more = f" and {len(holders) - 3} more" if len(holders) > 3 else ""
    return ", ".join(parts) + more


def find_bind_failures(events: Iterable[FailureEvent], result: ScanResult | None = None, *,
                       namespace: NamespaceInfo | None = None, config: Config | None = None,
                       window: float = DEFAULT_FAILURE_WINDOW) -> list[Finding]:
    """One ``bind_failed`` finding per (port, process name) among ``events``.

    Takes the failures of one network namespace (those of other calls are
    skipped; the caller counts over its window), the latest scan of that
    namespace (``None``: no ``port_taken`` link, the kernel defaults for the
    hint), the namespace (default: the scan's), the configuration (severity
    override) and the window's length for the wording. The holders are the
    newest event's (its targeted dump); with none found, the scan's
    ``port_taken`` holders. The key is ``bind_failed:PORT:NAME`` plus ``@NS``
    for a namespace other than the host's. Ignore rules are the caller's.
    """
    ns, suffix = keyed_namespace(result, namespace)
    severity = configured_severity(Kind.BIND_FAILED, DETECTOR.severity, config)

    def key(e: FailureEvent) -> str | None:
        if e.call is not FailedCall.BIND:
            return None
        port = e.address.port if e.address is not None else "unknown"
        return f"bind_failed:{port}:{e.comm or e.pid}{suffix}"

    out: list[Finding] = []
    for k, group in group_failures(events, key).items():
        address = group.last.address
        port = address.port if address is not None else None
        holders = next((e.holders for e in reversed(group.events) if e.holders), ())
        taken = _port_taken_of(result, port) if port is not None else None
        if not holders and taken is not None:
            holders = tuple(Holder(s, taken.processes) for s in taken.sockets)
        details = group.details(window)
        details.update(address=str(address) if address is not None else None, port=port,
                       holders=[h.socket.describe() for h in holders], holder_words=_holder_words(holders),
                       port_taken=taken.key if taken is not None else None,
                       listener_holds=any(h.socket.state is SocketState.LISTEN or h.socket.remote is None
                                          for h in holders))
        sockets: tuple[Socket, ...] = tuple(h.socket for h in holders)
        held_by = tuple({p.pid: p for h in holders for p in h.processes}.values())
        callers = group.processes
        if details["listener_holds"]:
            hint = "another instance (or another service) already listens on that port: stop it or move one of them"
        elif taken is not None and taken.remediation:
            hint = taken.remediation
        elif result is not None and port is not None:
            hint = ("stop the holder or wait for its connection to close, then start the service; to keep an "
                    "outgoing connection from taking the port again, " + reserve_hint(result.snapshot.settings, [port]))
        else:
            hint = "stop the holder or wait for its connection to close, then start the service"
        finding = Finding(kind=Kind.BIND_FAILED, severity=severity, key=k, summary="", port=port,
                          protocol=sockets[0].protocol if sockets else None,
                          addresses=(address.ip,) if address is not None else (), sockets=sockets,
                          processes=callers + tuple(p for p in held_by if p.pid not in {c.pid for c in callers}),
                          remediation=hint, details=details, namespace=ns)
        out.append(replace(finding, summary=summarize(finding, callers)))
    return out


def summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """``ingress[812] could not bind 10254: held by kube-apiserver[77] (127.0.0.1:10254 -> 127.0.0.2:2379, ...)``.

    ``processes`` are the callers (a finding's ``processes`` lists them
    first, then the holders' owners).
    """
    d = finding.details
    pids = set(d.get("pids") or ())
    callers = tuple(p for p in processes if not pids or p.pid in pids)
    port = d.get("port") if d.get("port") is not None else "a port"
    head = (f"{who(callers)}{where_words(d)} could not bind {port} "
            f"(address {d.get('address') or 'unknown'}; EADDRINUSE, {times_words(d)})")
    if d.get("holder_words"):
        tail = f": held by {d['holder_words']}"
    else:
        tail = ": no holder was found right after (its socket closed, or the dump was refused)"
    if d.get("port_taken"):
        tail += f"; see {d['port_taken']}"
    return head + tail


# an event kind: nothing in a scan (find_bind_failures makes its findings)
DETECTOR = event_detector(Kind.BIND_FAILED, Severity.CRITICAL, "PortwatchBindFailed", summarize)
