"""What one scan saw of a namespace, and the tuples derived from it (destinations, remembered ports, identities)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple

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
    """A port a listener held in an earlier scan (the daemon remembers them).

    ``executable`` and ``unit`` are the identity of the process that listened
    there (its executable, as its command line's first word or its name, and
    its systemd unit), when known; ``None`` when not. ``port_taken`` uses
    them to tell the service's own draining connections from a foreign
    holder. The daemon's state keys its records by ``(protocol, port)`` with
    no identity.
    """

    protocol: Protocol
    port: int
    executable: str | None = None
    unit: str | None = None


#: Listeners (TCP LISTEN, unconnected UDP) by (protocol, port), port 0 left out.
Listening = Mapping[tuple[Protocol, int], list[Socket]]

#: A process identity: (executable name or path, systemd unit), each None when unknown.
Identity = tuple[str | None, str | None]


def process_identity(processes: Iterable[ProcessInfo]) -> Identity | None:
    """The identity of the first described process of ``processes`` (command line's first word or
    name, unit); None when none is described."""
    for p in processes:
        if not p.gone and (p.cmdline or p.name or p.unit):
            return (p.cmdline[0] if p.cmdline else p.name), p.unit
    return None


def listener_identities(snapshot: Snapshot, listening: Listening) -> dict[RememberedPort, Identity]:
    """The identity of each listener port whose owner ``snapshot`` knows, keyed by (protocol, port).

    What ``portwatch.daemon.state.update_listeners`` takes as ``identities`` (a scan's
    snapshot and ``listening``). Ports whose listeners' owners are unknown
    are left out. Pure.
    """
    out: dict[RememberedPort, Identity] = {}
    for (protocol, port), socks in listening.items():
        for s in socks:
            identity = process_identity(snapshot.processes_of(s))
            if identity is not None:
                out[RememberedPort(protocol, port)] = identity
                break
    return out
