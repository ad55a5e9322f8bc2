"""The ``range_misconfigured`` finding: a problem of the ephemeral port range itself.

Below the unprivileged ports, too small, or with ends of equal parity. Its
findings involve no process. Imports :mod:`portwatch.detect.base` and
:mod:`portwatch.model` only (pure).
"""

from __future__ import annotations

from portwatch.detect.base import SYSCTL_RANGE, Config, DetectionInput, Detector
from portwatch.model import Finding, KernelSettings, Kind, ProcessInfo, Severity


def find_range_problems(settings: KernelSettings, config: Config) -> list[Finding]:
    """Problems of the range itself: below unprivileged ports, too small, equal parity."""
    r = settings.port_range
    problems: list[tuple[str, str, str]] = []
    if r.low < settings.unprivileged_port_start:
        problems.append((
            "below_unprivileged",
            f"{SYSCTL_RANGE} starts at {r.low}, below ip_unprivileged_port_start "
            f"({settings.unprivileged_port_start}): outgoing connections can take privileged ports "
            f"that system services expect to bind",
            f"raise the start of {SYSCTL_RANGE} to at least {settings.unprivileged_port_start}",
        ))
    usable = settings.usable_ports
    if usable < config.thresholds.min_range_size:
        problems.append((
            "small",
            f"only {usable} usable ephemeral ports ({SYSCTL_RANGE} {r} minus "
            f"{r.size - usable} reserved): each destination can have at most {usable} connections",
            f"widen {SYSCTL_RANGE} (the default is 32768 60999) or reserve fewer ports inside it",
        ))
    if r.size > 1 and r.low % 2 == r.high % 2:
        problems.append((
            "same_parity",
            f"{SYSCTL_RANGE} {r.low} {r.high} has ends of equal parity: connect() prefers ports of the "
            f"low end's parity and bind(0) the other, so the two halves are unequal",
            f"make one end odd and the other even, e.g. {r.low} {r.high + 1 if r.high < 65535 else r.high - 1}",
        ))
    out = []
    for name, message, hint in problems:
        finding = Finding(kind=DETECTOR.kind, severity=DETECTOR.severity,
                          key=f"range_misconfigured:{name}", summary=message, remediation=hint,
                          details={"problem": name, "message": message, "range": str(r),
                                   "usable": usable})
        out.append(finding)
    return out


def summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """The problem's message (worded when it was found; no process is named)."""
    return str(finding.details["message"])


def _find(inp: DetectionInput) -> list[Finding]:
    return find_range_problems(inp.snapshot.settings, inp.config)


DETECTOR = Detector(
    kind=Kind.RANGE_MISCONFIGURED,
    severity=Severity.INFO,
    alertname="PortwatchRangeMisconfigured",
    find=_find,
    summarize=summarize,
    involves=None,
)
