"""The ``connect_failed`` finding: a process got EADDRNOTAVAIL from ``connect()`` (audit capture).

An event finding: it comes from :class:`~portwatch.model.failures.FailureEvent`
values, not from a snapshot (the detector's ``find`` yields nothing in a
scan). :func:`find_connect_failures` takes the failures of one network
namespace and the latest :class:`~portwatch.model.ScanResult` of that
namespace, and names the process, the destination, how often it failed in
the window, and the cause: the ``ephemeral_exhaustion`` finding of that
destination when the scan has one, else what the kernel was short of (the
usable range, the reserved ports, the ports in use towards every
destination). Imports :mod:`portwatch.detect.base` and
:mod:`portwatch.model` only (pure).
"""

from __future__ import annotations

from portwatch.model.records import replace

from portwatch.detect.base import SYSCTL_RANGE, Config, configured_severity, event_detector, who
from portwatch.model import Finding, Kind, NamespaceInfo, ProcessInfo, Protocol, ScanResult, Severity
from portwatch.model.failures import (
    DEFAULT_FAILURE_WINDOW,
    FailedCall,
    FailureEvent,
    group_failures,
    keyed_namespace,
    times_words,
    where_words,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable


def _exhaustion_of(result: ScanResult | None, ip: str, port: int) -> Finding | None:
    """The scan's exhaustion finding towards ``ip:port`` with the highest ratio, if any."""
    if result is None:
        return None
    found = [f for f in result.findings if f.kind is Kind.EPHEMERAL_EXHAUSTION
             and f.details.get("remote_ip") == ip and f.details.get("remote_port") == port]
    return max(found, key=lambda f: float(f.details.get("ratio", 0)), default=None)


def _shortage(result: ScanResult | None, ip: str, port: int) -> dict[str, object]:
    """What the kernel had to give: usable ports, reserved ones inside the range, ports in use."""
    if result is None:
        return {}
    settings = result.snapshot.settings
    rng = settings.port_range
    in_use = {port for port in result.snapshot.connected_local_ports() if settings.is_ephemeral(port)}
    towards = sum(n for d, n in result.usage.items() if (d.remote_ip, d.remote_port) == (ip, port))
    return {"range": str(rng), "usable": settings.usable_ports,
            "reserved_in_range": sum(1 for p in settings.reserved if rng.low <= p <= rng.high),
            "ports_in_use": len(in_use), "used_towards_destination": towards}


def find_connect_failures(events: Iterable[FailureEvent], result: ScanResult | None = None, *,
                          namespace: NamespaceInfo | None = None, config: Config | None = None,
                          window: float = DEFAULT_FAILURE_WINDOW) -> list[Finding]:
    """One ``connect_failed`` finding per (destination, process name) among ``events``.

    Takes the failures of one network namespace (those of other calls are
    skipped; the caller counts over its window, see
    :class:`~portwatch.model.failures.FailureWindow`), the latest scan of that
    namespace (``None``: no cause can be named), the namespace (default: the
    scan's), the configuration (severity override) and the window's length
    for the wording. The key is ``connect_failed:DEST:NAME`` plus ``@NS`` for
    a namespace other than the host's. Ignore rules are the caller's.
    """
    ns, suffix = keyed_namespace(result, namespace)
    severity = configured_severity(Kind.CONNECT_FAILED, DETECTOR.severity, config)

    def key(e: FailureEvent) -> str | None:
        if e.call is not FailedCall.CONNECT:
            return None
        dest = str(e.address) if e.address is not None else "unknown"
        return f"connect_failed:{dest}:{e.comm or e.pid}{suffix}"

    out: list[Finding] = []
    for k, group in group_failures(events, key).items():
        address = group.last.address
        details = group.details(window)
        details["destination"] = str(address) if address is not None else None
        exhaustion = _exhaustion_of(result, address.ip, address.port) if address is not None else None
        hint = (f"reuse connections (pooling, keep-alive) instead of opening new ones, spread them over more "
                f"source addresses or destination ports, or widen {SYSCTL_RANGE}")
        if exhaustion is not None:
            d = exhaustion.details
            details.update(exhaustion=exhaustion.key, used=d.get("used"), usable=d.get("usable"),
                           holders=who(exhaustion.processes))
            if exhaustion.remediation:
                hint = exhaustion.remediation
        elif address is not None:
            details.update(exhaustion=None, **_shortage(result, address.ip, address.port))
        finding = Finding(kind=Kind.CONNECT_FAILED, severity=severity, key=k, summary="",
                          port=address.port if address is not None else None,
                          protocol=Protocol.TCP if exhaustion is not None else None,
                          addresses=(address.ip,) if address is not None else (),
                          processes=group.processes, remediation=hint, details=details, namespace=ns)
        out.append(replace(finding, summary=summarize(finding, finding.processes)))
    return out


def summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """``loadgen[990] could not connect to 127.0.0.1:5001 (EADDRNOTAVAIL, 3 times in 300 s) because ...``."""
    d = finding.details
    dest = d.get("destination") or "an unknown destination"
    head = f"{who(processes)}{where_words(d)} could not connect to {dest} (EADDRNOTAVAIL, {times_words(d)})"
    if d.get("exhaustion"):
        return (f"{head} because {d['used']} of {d['usable']} usable ports to {dest} "
                f"are in use by {d['holders']}")
    if "usable" in d:
        return (f"{head}: no ephemeral port was free for it; the namespace has {d['usable']} usable ports "
                f"(range {d['range']}, {d['reserved_in_range']} reserved inside it), {d['ports_in_use']} "
                f"in use by connections ({d['used_towards_destination']} towards {dest}); if few are in use, "
                f"the socket may have narrowed its own range (IP_LOCAL_PORT_RANGE) or bound a source address")
    return f"{head}: no ephemeral port was free for it (no scan of its namespace to name the cause)"


# an event kind: nothing in a scan (find_connect_failures makes its findings)
DETECTOR = event_detector(Kind.CONNECT_FAILED, Severity.CRITICAL, "PortwatchConnectFailed", summarize)
