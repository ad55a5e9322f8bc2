"""The per-namespace kernel settings that decide which ports connect() may pick."""

from __future__ import annotations

from portwatch.model.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable


@dataclass(frozen=True)
class PortRange:
    """An inclusive port range, ``low <= high``."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    @property
    def size(self) -> int:
        """Number of ports in the range."""
        return self.high - self.low + 1

    def __str__(self) -> str:
        return f"{self.low}-{self.high}" if self.low != self.high else str(self.low)


@dataclass(frozen=True)
class KernelSettings:
    """The per-network-namespace sysctls that decide which ports connect() may pick.

    ``reserved`` holds every port of ``ip_local_reserved_ports`` (not only those
    inside the range).
    """

    port_range: PortRange
    reserved: frozenset[int] = frozenset()
    unprivileged_port_start: int = 1024

    @property
    def usable_ports(self) -> int:
        """Ports connect() may pick: the range minus the reserved ports inside it."""
        low, high = self.port_range.low, self.port_range.high
        inside = sum(1 for p in self.reserved if low <= p <= high)
        return self.port_range.size - inside

    def is_ephemeral(self, port: int) -> bool:
        """True if connect() may pick ``port``: inside the range and not reserved."""
        return port in self.port_range and port not in self.reserved


def format_port_set(ports: Iterable[int]) -> str:
    """Ports in ``ip_local_reserved_ports`` syntax: sorted, runs collapsed (``80,8080-8082``).

    Takes any collection of ints; returns ``""`` for an empty one.
    """
    ordered = sorted(set(ports))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
