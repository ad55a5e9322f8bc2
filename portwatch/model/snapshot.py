"""What one scan saw of a namespace, and the tuples derived from it (destinations, remembered ports, identities)."""

from __future__ import annotations

from collections.abc import Mapping
from portwatch.model.records import NamedTuple, dataclass, field, replace

from portwatch.model.findings import ProcessInfo
from portwatch.model.kernel import KernelSettings
from portwatch.model.namespaces import NamespaceInfo
from portwatch.model.sockets import Endpoint, Protocol, Socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Collection, Iterable


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

    ``counts`` is ``None`` for a full snapshot. A *counted* snapshot (what
    a source that classifies while it reads returns, see
    :class:`SocketCounts`) keeps in ``sockets`` only the sockets some
    detector looks at, and in ``counts`` the totals of all of them; read
    totals through :attr:`socket_total`, :meth:`state_counts` and
    :meth:`connected_local_ports`, which answer alike for both kinds.
    """

    settings: KernelSettings
    sockets: tuple[Socket, ...]
    taken_at: float = 0.0
    owners: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    processes: Mapping[int, ProcessInfo] = field(default_factory=dict)
    source: str = "unknown"
    notes: tuple[str, ...] = ()
    namespace: NamespaceInfo | None = None
    counts: SocketCounts | None = None

    @property
    def socket_total(self) -> int:
        """How many inet sockets the namespace had (kept or only counted)."""
        return len(self.sockets) if self.counts is None else self.counts.total

    def state_counts(self) -> dict[tuple[str, str], int]:
        """Sockets per (protocol value, state value), e.g. ``("tcp", "ESTABLISHED")``: all of them."""
        if self.counts is not None:
            return dict(self.counts.by_state)
        return count_states(self.sockets)

    def connected_local_ports(self) -> frozenset[int]:
        """The local ports of every socket with a remote end (any protocol, any state)."""
        if self.counts is not None:
            return self.counts.local_ports
        return frozenset(s.local.port for s in self.sockets if s.remote is not None)

    def with_destination_sockets(self, destinations: Collection[Destination]) -> Snapshot:
        """This snapshot, with every TCP socket connected towards ``destinations`` among ``sockets``.

        A full snapshot has them already and is returned as it is; a counted
        one gets the ones it did not keep appended (from
        :attr:`SocketCounts.members`), in dump order. Pure.
        """
        if self.counts is None or not destinations:
            return self
        kept = set(self.sockets)
        extra = tuple(s for s in self.counts.members(destinations) if s not in kept)
        if not extra:
            return self
        return replace(self, sockets=self.sockets + extra)

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


def count_states(sockets: Iterable[Socket]) -> dict[tuple[str, str], int]:
    """Sockets per (protocol value, state value)."""
    counts: dict[tuple[str, str], int] = {}
    for s in sockets:
        key = (s.protocol.value, s.state.value)
        counts[key] = counts.get(key, 0) + 1
    return counts


@dataclass(frozen=True)
class SocketCounts:
    """The totals of a counted read: what every socket added up to, kept or not.

    ``total``: how many sockets; ``by_state``: how many per (protocol
    value, state value); ``usage``: TCP sockets holding a usable ephemeral
    port per destination, exactly as
    :func:`portwatch.detect.destination_usage` counts a full table;
    ``connected_ports``: takes nothing and returns the local port of every
    socket with a remote end (:attr:`local_ports` asks it once, the first
    time it is read: only the detector of failed connects needs them, and
    finding them in a large dump is not free);
    ``members``: takes destinations and returns every TCP socket connected
    towards one of them (kept or not) in dump order, pure (it re-reads what
    the source kept of the dump).
    """

    total: int
    by_state: Mapping[tuple[str, str], int]
    usage: Mapping[Destination, int]
    connected_ports: Callable[[], frozenset[int]]
    members: Callable[[Collection[Destination]], tuple[Socket, ...]]

    @property
    def local_ports(self) -> frozenset[int]:
        """The local port of every socket with a remote end (any protocol, any state), found once."""
        found: frozenset[int] | None = self.__dict__.get("_local_ports")
        if found is None:
            found = frozenset(self.connected_ports())
            object.__setattr__(self, "_local_ports", found)  # a cache, not a field: frozen all the same
        return found


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
