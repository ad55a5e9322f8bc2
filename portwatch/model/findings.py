"""Findings: their kinds, severities, the processes they involve."""

from __future__ import annotations

import enum
from portwatch.model.records import dataclass, field

from portwatch.model.namespaces import NamespaceInfo
from portwatch.model.sockets import Protocol, Socket, socket_to_dict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping


class Severity(str, enum.Enum):
    """How bad a finding is. Ordered: ``info < warning < critical``."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for info, 1 for warning, 2 for critical."""
        return _SEVERITY_RANK[self]

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank >= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank > other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank <= other.rank

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank < other.rank


_SEVERITY_RANK: Mapping[Severity, int] = {
    Severity.INFO: 0,
    Severity.WARNING: 1,
    Severity.CRITICAL: 2,
}


class Kind(str, enum.Enum):
    """The kinds of finding (see DESIGN.md)."""

    SELF_CONNECT = "self_connect"
    LOOP_PAIR = "loop_pair"
    LISTENER_IN_EPHEMERAL_RANGE = "listener_in_ephemeral_range"
    PORT_TAKEN = "port_taken"
    SERVICE_PORT_AT_RISK = "service_port_at_risk"
    EPHEMERAL_EXHAUSTION = "ephemeral_exhaustion"
    CLOSE_WAIT_BUILDUP = "close_wait_buildup"
    RANGE_MISCONFIGURED = "range_misconfigured"
    CONNECT_FAILED = "connect_failed"
    BIND_FAILED = "bind_failed"


@dataclass(frozen=True)
class ProcessInfo:
    """A process that owns a socket.

    ``gone`` is True when the process exited between finding its socket and
    describing it; then only ``pid`` (and whatever was read before) is known.
    Fields the privileges did not allow reading are ``None`` (or empty).
    """

    pid: int
    name: str | None = None
    cmdline: tuple[str, ...] = ()
    user: str | None = None
    unit: str | None = None
    gone: bool = False

    def label(self) -> str:
        """``name[pid]``, or ``pid N`` when the name is unknown."""
        return f"{self.name}[{self.pid}]" if self.name else f"pid {self.pid}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape documented in the README)."""
        return {
            "pid": self.pid,
            "name": self.name,
            "cmdline": list(self.cmdline),
            "user": self.user,
            "unit": self.unit,
            "gone": self.gone,
        }


@dataclass(frozen=True)
class Finding:
    """One problem, explained.

    ``key`` is stable across scans for the same problem (kind plus the tuple it
    is about) and is what history and alerting track. ``port`` is the port the
    finding is about, where there is one. ``details`` holds kind-specific
    figures (e.g. ``ratio``, ``count``, ``threshold``), JSON-ready.
    ``namespace`` is the network namespace the finding is in, when the scan
    (or event) that made it knew one; :func:`~portwatch.scan.scan_snapshot`
    sets it. It is not part of :meth:`to_dict` (the JSON document adds its
    own ``namespace`` object) and alerts take their ``netns``, ``container``
    and ``pod`` labels from it.
    """

    kind: Kind
    severity: Severity
    key: str
    summary: str
    port: int | None = None
    protocol: Protocol | None = None
    addresses: tuple[str, ...] = ()
    sockets: tuple[Socket, ...] = ()
    processes: tuple[ProcessInfo, ...] = ()
    remediation: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    namespace: NamespaceInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape documented in the README)."""
        return {
            "kind": self.kind.value,
            "severity": self.severity.value,
            "key": self.key,
            "summary": self.summary,
            "port": self.port,
            "protocol": self.protocol.value if self.protocol else None,
            "addresses": list(self.addresses),
            "sockets": [socket_to_dict(s) for s in self.sockets],
            "processes": [p.to_dict() for p in self.processes],
            "remediation": self.remediation,
            "details": dict(self.details),
        }
