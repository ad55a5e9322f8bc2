"""The ``loop_pair`` finding: two local TCP sockets connected to each other with no listener on either port.

Imports :mod:`portwatch.detect.base` and :mod:`portwatch.model` only (pure).
"""

from __future__ import annotations

from portwatch.detect.base import ORPHAN_STATES, DetectionInput, Detector, protocol_upper, who
from portwatch.model import (
    Endpoint,
    Finding,
    Kind,
    Listening,
    ProcessInfo,
    Protocol,
    Severity,
    Snapshot,
    Socket,
    SocketState,
    is_wildcard,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Collection


class _ListenerIndex:
    """Which endpoints the listeners of one protocol serve, answered with set look-ups."""

    def __init__(self, listening: Listening, protocol: Protocol) -> None:
        self.wildcard_ports: set[int] = set()
        self.specific: set[Endpoint] = set()
        for (proto, port), sockets in listening.items():
            if proto is not protocol:
                continue
            for s in sockets:
                if is_wildcard(s.local.ip):
                    self.wildcard_ports.add(port)
                else:
                    self.specific.add(Endpoint(s.local.ip, port))

    def serves(self, endpoint: Endpoint) -> bool:
        """True if a listener accepts connections to ``endpoint``."""
        return endpoint.port in self.wildcard_ports or endpoint in self.specific


def find_loop_pairs(snapshot: Snapshot, listening: Listening,
                    service_ports: Collection[int] = ()) -> list[Finding]:
    """Pairs of local TCP sockets that mirror each other with no listener on either port.

    The socket table cannot tell a simultaneous open from an ordinary
    connection whose server closed its listener after accepting it; pairs
    with a side on ``service_ports`` (declared services and remembered
    listeners: TCP ports known to be servers') are taken for the latter.
    """
    served = _ListenerIndex(listening, Protocol.TCP)
    wild, specific = served.wildcard_ports, served.specific
    wild = wild | set(service_ports) if service_ports else wild
    by_ends: dict[tuple[Endpoint, Endpoint], Socket] = {}
    tcp = Protocol.TCP
    for s in snapshot.sockets:
        remote = s.remote
        if remote is None or s.protocol is not tcp:
            continue
        local = s.local
        # Most connections have a listener on one side (ordinary client/server):
        # rule those out first, with set look-ups only (_ListenerIndex.serves, inlined).
        if (local.port in wild or remote.port in wild or local in specific or remote in specific
                or local == remote or s.state in ORPHAN_STATES or s.state is SocketState.LISTEN):
            continue
        by_ends[(local, remote)] = s
    out = []
    for (local, remote), a in by_ends.items():
        if (local.ip, local.port) > (remote.ip, remote.port):
            continue  # each pair once, from its smaller end
        b = by_ends.get((remote, local))
        if b is None:
            continue
        key = f"loop_pair:tcp:{local}<->{remote}"
        out.append(
            DETECTOR.make(key, snapshot, (a, b), {"a": str(local), "b": str(remote)},
                          port=local.port, protocol=Protocol.TCP,
                          remediation="close one of the sockets (restart its process); the two sockets connected "
                                      "to each other's ports at the same moment, with no server on either")
        )
    return out


def summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """``TCP sockets A and B are connected to each other with no listener ...; held by ...``."""
    d = finding.details
    return (
        f"{protocol_upper(finding)} sockets {d['a']} and {d['b']} are connected to each other with no listener "
        f"on either port: a simultaneous open, or a server that stopped listening after "
        f"accepting this connection; held by {who(processes)}"
    )


def _find(inp: DetectionInput) -> list[Finding]:
    known_servers = {svc.port for svc in inp.config.services if svc.protocol is Protocol.TCP}
    known_servers |= {r.port for r in inp.remembered if r.protocol is Protocol.TCP}
    return find_loop_pairs(inp.snapshot, inp.index.listening, known_servers)


DETECTOR = Detector(
    kind=Kind.LOOP_PAIR,
    severity=Severity.WARNING,
    alertname="PortwatchLoopPair",
    find=_find,
    summarize=summarize,
)
