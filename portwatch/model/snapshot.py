"""What one scan saw of a namespace, and the tuples derived from it (destinations, remembered ports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from portwatch.model.findings import ProcessInfo
from portwatch.model.kernel import KernelSettings
from portwatch.model.namespaces import NamespaceInfo
from portwatch.model.sockets import Endpoint, Protocol, Socket


@dataclass(frozen=True)
class Snapshot:
    """Everything one scan saw.

    ``sockets`` is every inet socket of the namespace. ``owners`` maps a
    socket's ``inode`` to the pids holding it, for those sockets whose owners
    are known (all of them with the psutil source, only those that were asked
    for with lazy attribution). ``processes`` describes those pids.
    ``taken_at`` is a Unix timestamp. ``notes`` are things a reader must know
    to trust the result (e.g. "attribution is partial: not running as root").
    ``namespace`` is the network namespace it was taken in, when the
    collector was asked for one (``None``: its own, not looked up).
    """

    settings: KernelSettings
    sockets: tuple[Socket, ...]
    taken_at: float = 0.0
    owners: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    processes: Mapping[int, ProcessInfo] = field(default_factory=dict)
    source: str = "unknown"
    notes: tuple[str, ...] = ()
    namespace: NamespaceInfo | None = None

    def processes_of(self, sock: Socket) -> tuple[ProcessInfo, ...]:
        """The known owners of ``sock`` (empty when unknown)."""
        pids = self.owners.get(sock.inode, ())
        return tuple(self.processes.get(pid, ProcessInfo(pid=pid)) for pid in pids)


class Destination(NamedTuple):
    """What connect() exhausts: ports are unique per (local ip, remote ip, remote port)."""

    local_ip: str
    remote_ip: str
    remote_port: int

    def __str__(self) -> str:
        return f"{self.local_ip} -> {Endpoint(self.remote_ip, self.remote_port)}"


class RememberedPort(NamedTuple):
    """A port a listener held in an earlier scan (the daemon remembers them)."""

    protocol: Protocol
    port: int


#: Listeners (TCP LISTEN, unconnected UDP) by (protocol, port), port 0 left out.
Listening = Mapping[tuple[Protocol, int], list[Socket]]
