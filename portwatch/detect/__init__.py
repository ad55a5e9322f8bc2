"""Detectors: pure functions from a snapshot (and config, and remembered state) to findings.

No I/O, no clock, no logging here. The scan engine (``portwatch.scan``) calls,
in order:

1. :func:`owners_needed` — the sockets whose owners detection itself needs
   (CLOSE_WAIT sockets, only when there are enough of them to matter);
2. :func:`destination_usage` and :func:`detect` — the findings, with the
   processes the snapshot already knows;
3. :func:`involved_inodes` then :func:`explain` — after attributing the
   sockets the findings involve, fill in their processes and summaries;
4. :func:`apply_ignores` — drop what the configuration ignores (process
   names and units are known by then).

Every finding's ``key`` is stable across scans: the kind plus the tuple it is
about (never a pid for socket-level findings, so a restarted client that hits
the same self-connect keeps the same key).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Callable, Collection, Iterable, Mapping, NamedTuple

from portwatch.config import Config, IgnoreRule, Service, ignore_matches
from portwatch.model import (
    Destination,
    Listening,
    RememberedPort,
    Endpoint,
    Finding,
    KernelSettings,
    Kind,
    ProcessInfo,
    Protocol,
    Severity,
    Snapshot,
    Socket,
    SocketState,
    format_port_set,
    is_wildcard,
)

#: Severity of each kind before configuration overrides.
DEFAULT_SEVERITY: Mapping[Kind, Severity] = {
    Kind.SELF_CONNECT: Severity.CRITICAL,
    Kind.LOOP_PAIR: Severity.WARNING,
    Kind.LISTENER_IN_EPHEMERAL_RANGE: Severity.WARNING,
    Kind.PORT_TAKEN: Severity.CRITICAL,
    Kind.SERVICE_PORT_AT_RISK: Severity.WARNING,
    Kind.EPHEMERAL_EXHAUSTION: Severity.WARNING,
    Kind.CLOSE_WAIT_BUILDUP: Severity.WARNING,
    Kind.RANGE_MISCONFIGURED: Severity.INFO,
}

#: States in which a socket no longer belongs to any process (kernel mini
#: sockets): never a holder, never a self-connect worth reporting.
_ORPHAN_STATES = frozenset({SocketState.TIME_WAIT, SocketState.NEW_SYN_RECV})

#: At most this many sockets are kept as examples in one finding (exhaustion
#: and CLOSE_WAIT findings can involve thousands); ``details["sockets_total"]``
#: has the full count. Processes are attributed from these examples.
MAX_EXAMPLE_SOCKETS = 32

SYSCTL_RESERVED = "net.ipv4.ip_local_reserved_ports"
SYSCTL_RANGE = "net.ipv4.ip_local_port_range"


# --------------------------------------------------------------------------- helpers



@dataclass(frozen=True)
class SocketIndex:
    """What several detectors look for in the socket table, gathered in one pass.

    ``listening``: listeners (TCP LISTEN, unconnected UDP) by (protocol,
    port), port 0 left out; ``close_wait``: the CLOSE_WAIT sockets;
    ``self_connected``: the sockets whose local endpoint equals their remote
    one. Valid for every snapshot with the same ``sockets``.
    """

    listening: dict[tuple[Protocol, int], list[Socket]]
    close_wait: list[Socket]
    self_connected: list[Socket]


def index(snapshot: Snapshot) -> SocketIndex:
    """The :class:`SocketIndex` of ``snapshot``'s sockets (one pass over them)."""
    listening: dict[tuple[Protocol, int], list[Socket]] = defaultdict(list)
    close_wait: list[Socket] = []
    self_connected: list[Socket] = []
    listen, udp, cw = SocketState.LISTEN, Protocol.UDP, SocketState.CLOSE_WAIT
    for s in snapshot.sockets:
        state = s.state
        remote = s.remote
        if remote is None:
            # Socket.is_listener, inlined: this runs over every socket.
            if (state is listen or s.protocol is udp) and s.local.port:
                listening[(s.protocol, s.local.port)].append(s)
        elif state is cw:
            close_wait.append(s)
        elif remote == s.local:
            self_connected.append(s)
    # (a CLOSE_WAIT self-connect is left to the CLOSE_WAIT count: it is closing)
    return SocketIndex(dict(listening), close_wait, self_connected)


def listeners(snapshot: Snapshot) -> dict[tuple[Protocol, int], list[Socket]]:
    """Listeners (TCP LISTEN, unconnected UDP) by (protocol, port); port 0 left out."""
    return index(snapshot).listening


def _covers(listener_ip: str, ip: str | None) -> bool:
    """True if a listener bound to ``listener_ip`` serves address ``ip`` (None = any)."""
    return ip is None or is_wildcard(listener_ip) or listener_ip == ip


def _who(processes: tuple[ProcessInfo, ...]) -> str:
    """``a[1], b[2]`` or ``owner unknown``."""
    if not processes:
        return "owner unknown"
    labels = [p.label() + (" (exited)" if p.gone else "") for p in processes[:5]]
    more = f" and {len(processes) - 5} more" if len(processes) > 5 else ""
    return ", ".join(labels) + more


def _processes(snapshot: Snapshot, sockets: Iterable[Socket]) -> tuple[ProcessInfo, ...]:
    """The distinct known owners of ``sockets``, ordered by pid."""
    found: dict[int, ProcessInfo] = {}
    for s in sockets:
        for p in snapshot.processes_of(s):
            found.setdefault(p.pid, p)
    return tuple(found[pid] for pid in sorted(found))


def _reserve_hint(settings: KernelSettings, ports: Iterable[int]) -> str:
    """The sysctl line that reserves ``ports`` on top of what is reserved already."""
    merged = format_port_set(set(settings.reserved) | set(ports))
    return (
        f"reserve it: `sysctl -w {SYSCTL_RESERVED}={merged}` and persist "
        f"`{SYSCTL_RESERVED} = {merged}` in /etc/sysctl.d/ (or `portwatch reserve`)"
    )


def _summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """The one-line summary of ``finding`` naming ``processes``; from its kind and details."""
    d = finding.details
    who = _who(processes)
    proto = finding.protocol.value.upper() if finding.protocol else ""
    kind = finding.kind
    if kind is Kind.SELF_CONNECT:
        return (
            f"{proto} socket {d['endpoint']} is connected to itself (self-connect): "
            f"its client talks to itself and no server can bind port {finding.port}; held by {who}"
        )
    if kind is Kind.LOOP_PAIR:
        return (
            f"{proto} sockets {d['a']} and {d['b']} are connected to each other with no listener "
            f"on either port: a simultaneous open, or a server that stopped listening after "
            f"accepting this connection; held by {who}"
        )
    if kind is Kind.LISTENER_IN_EPHEMERAL_RANGE:
        return (
            f"{proto} port {finding.port} ({', '.join(d['endpoints'])}, {who}) listens inside the "
            f"ephemeral port range {d['range']}: while it is down, an outgoing connection can take it"
        )
    if kind is Kind.PORT_TAKEN:
        service = f"service {d['service']!r} " if d.get("service") else ""
        return (
            f"{service}port {finding.port}/{finding.protocol.value if finding.protocol else ''} "
            f"({d['reason']}) has no listener and is held by {d['holders']} "
            f"non-listening socket(s), e.g. {d['example']}, of {who}: an outgoing connection on "
            f"it makes the service's bind() fail with EADDRINUSE, even with SO_REUSEADDR "
            f"(the service's own draining connections would not)"
        )
    if kind is Kind.SERVICE_PORT_AT_RISK:
        listening = f", now served by {who}" if d.get("listening") else ", not listening now"
        return (
            f"service {d['service']!r} port {finding.port}/{finding.protocol.value if finding.protocol else ''} "
            f"is inside the ephemeral port range {d['range']} and not reserved{listening}"
        )
    if kind is Kind.EPHEMERAL_EXHAUSTION:
        return (
            f"{d['destination']} uses {d['used']} of {d['usable']} usable ephemeral ports "
            f"({d['ratio']:.0%}); new connections to it fail with EADDRNOTAVAIL when none is left; "
            f"top holders: {who}"
        )
    if kind is Kind.CLOSE_WAIT_BUILDUP:
        holder = who if processes else str(d.get("owner", "owner unknown"))
        return (
            f"{holder} holds {d['count']} CLOSE_WAIT sockets (threshold {d['threshold']}): "
            f"peers closed these connections and the process never closed its end"
        )
    return str(d["message"])


def _make(
    kind: Kind,
    key: str,
    snapshot: Snapshot,
    sockets: tuple[Socket, ...],
    details: dict[str, object],
    *,
    severity: Severity | None = None,
    port: int | None = None,
    protocol: Protocol | None = None,
    remediation: str | None = None,
) -> Finding:
    """Build one finding with its processes and summary filled from ``snapshot``."""
    addresses = tuple(sorted({s.local.ip for s in sockets} | {s.remote.ip for s in sockets if s.remote}))
    finding = Finding(
        kind=kind,
        severity=severity or DEFAULT_SEVERITY[kind],
        key=key,
        summary="",
        port=port,
        protocol=protocol,
        addresses=addresses,
        sockets=sockets,
        remediation=remediation,
        details=details,
    )
    return explain_one(finding, snapshot)


# --------------------------------------------------------------------------- detectors


def find_self_connects(snapshot: Snapshot, idx: SocketIndex | None = None) -> list[Finding]:
    """Sockets whose local endpoint equals their remote endpoint (one finding each)."""
    out = []
    for s in (idx or index(snapshot)).self_connected:
        if s.state not in _ORPHAN_STATES:
            key = f"self_connect:{s.protocol.value}:{s.local}"
            in_range = snapshot.settings.is_ephemeral(s.local.port)
            hint = (
                f"close the socket (restart its process). The client connected to local port "
                f"{s.local.port} while nothing listened there; start the server before its clients"
            )
            if in_range:
                hint += f", and keep connect() from picking the port: {_reserve_hint(snapshot.settings, [s.local.port])}"
            out.append(
                _make(Kind.SELF_CONNECT, key, snapshot, (s,), {"endpoint": str(s.local)},
                      port=s.local.port, protocol=s.protocol, remediation=hint)
            )
    return out


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
                or local == remote or s.state in _ORPHAN_STATES or s.state is SocketState.LISTEN):
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
            _make(Kind.LOOP_PAIR, key, snapshot, (a, b), {"a": str(local), "b": str(remote)},
                  port=local.port, protocol=Protocol.TCP,
                  remediation="close one of the sockets (restart its process); the two sockets connected "
                              "to each other's ports at the same moment, with no server on either")
        )
    return out


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


def find_listeners_in_range(snapshot: Snapshot, config: Config,
                            listening: Listening) -> list[Finding]:
    """Listeners (TCP LISTEN, bound UDP) on unreserved ports inside the range, one finding per port.

    Ports of declared services are left to :func:`find_services_at_risk`.
    """
    settings = snapshot.settings
    declared = {(svc.protocol, svc.port) for svc in config.services}
    out = []
    for (protocol, port), sockets in sorted(listening.items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
        if not settings.is_ephemeral(port) or (protocol, port) in declared:
            continue
        socks = tuple(sorted(sockets, key=lambda s: (s.local.ip, s.inode)))
        endpoints = sorted({str(s.local) for s in socks})
        out.append(
            _make(Kind.LISTENER_IN_EPHEMERAL_RANGE, f"listener_in_ephemeral_range:{protocol.value}:{port}",
                  snapshot, socks, {"endpoints": endpoints, "range": str(settings.port_range)},
                  port=port, protocol=protocol,
                  remediation=f"move the service to a port outside {settings.port_range}, or "
                              + _reserve_hint(settings, [port]))
        )
    return out


def find_services_at_risk(snapshot: Snapshot, config: Config,
                          listening: Listening) -> list[Finding]:
    """Declared services whose port is inside the range and not reserved."""
    settings = snapshot.settings
    out = []
    seen: set[tuple[Protocol, int]] = set()
    for svc in config.services:
        if not settings.is_ephemeral(svc.port) or (svc.protocol, svc.port) in seen:
            continue
        seen.add((svc.protocol, svc.port))
        socks = tuple(s for s in listening.get((svc.protocol, svc.port), ()) if _covers(s.local.ip, svc.address))
        out.append(
            _make(Kind.SERVICE_PORT_AT_RISK, f"service_port_at_risk:{svc.protocol.value}:{svc.port}",
                  snapshot, socks,
                  {"service": svc.name, "range": str(settings.port_range), "listening": bool(socks)},
                  port=svc.port, protocol=svc.protocol,
                  remediation=f"move {svc.name!r} to a port outside {settings.port_range}, or "
                              + _reserve_hint(settings, [svc.port]))
        )
    return out


def find_ports_taken(snapshot: Snapshot, config: Config, remembered: Collection[RememberedPort],
                     listening: Listening) -> list[Finding]:
    """Service ports with no listener now, held as local port by non-listening sockets.

    Service ports are, in order of precedence: declared services (critical),
    reserved ports (critical) and ports remembered from earlier scans'
    listeners (warning: inferred, not declared). A holder conflicts with a
    service declared on a specific address only if it uses that address.
    TIME_WAIT sockets are not holders (they have no process, and servers bind
    over them with SO_REUSEADDR).
    """
    settings = snapshot.settings
    # (protocol, port) -> (reason, service name, address, severity)
    wanted: dict[tuple[Protocol, int], tuple[str, str | None, str | None, Severity]] = {}
    for svc in config.services:
        wanted.setdefault((svc.protocol, svc.port), ("declared service", svc.name, svc.address, Severity.CRITICAL))
    reserved_lookup = settings.reserved
    for r in remembered:
        wanted.setdefault((r.protocol, r.port), ("had a listener earlier", None, None, Severity.WARNING))
    if not wanted and not reserved_lookup:
        return []
    holders: dict[tuple[Protocol, int], list[Socket]] = defaultdict(list)
    for s in snapshot.sockets:
        if s.is_listener or s.state in _ORPHAN_STATES or s.remote is None:
            continue
        k = (s.protocol, s.local.port)
        if k in wanted or s.local.port in reserved_lookup:
            holders[k].append(s)
    out = []
    for (protocol, port), socks in sorted(holders.items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
        if (protocol, port) in wanted:
            reason, name, address, severity = wanted[(protocol, port)]
        else:
            reason, name, address, severity = "reserved port", None, None, Severity.CRITICAL
        if any(_covers(ls.local.ip, address) for ls in listening.get((protocol, port), ())):
            continue  # the service is up: these are its own connections
        conflicting = tuple(sorted((s for s in socks if _covers(s.local.ip, address)),
                                   key=lambda s: (s.local.ip, s.remote or s.local, s.inode)))
        if not conflicting:
            continue
        hint = (f"stop the holder or wait for its connection to close, then start the service; "
                f"to keep it from happening again, ")
        hint += (_reserve_hint(settings, [port]) if port not in settings.reserved
                 else f"find why a process binds reserved port {port} explicitly")
        out.append(
            _make(Kind.PORT_TAKEN, f"port_taken:{protocol.value}:{port}", snapshot, conflicting,
                  {"reason": reason, "service": name, "holders": len(conflicting),
                   "example": conflicting[0].describe()},
                  severity=severity, port=port, protocol=protocol, remediation=hint)
        )
    return out


def _tcp_listen_ports(listening: Listening) -> set[int]:
    """Ports with a TCP listener: their accepted connections take no ephemeral port."""
    return {port for (proto, port) in listening if proto is Protocol.TCP}


def destination_usage(snapshot: Snapshot, listening: Listening | None = None) -> dict[Destination, int]:
    """Sockets using a usable ephemeral port, per (local ip, remote ip, remote port).

    Counts TCP sockets in every non-listening state (TIME_WAIT included: the
    port stays taken for that 4-tuple) whose local port is inside the range,
    not reserved, and not a listener's port (accepted connections share their
    listener's port and take no ephemeral port). ``listening`` is
    :func:`listeners` of the snapshot, if the caller has it already.
    """
    settings = snapshot.settings
    low, high = settings.port_range.low, settings.port_range.high
    reserved = settings.reserved
    if listening is None:
        listening = listeners(snapshot)
    tcp = Protocol.TCP
    listen_ports = _tcp_listen_ports(listening)
    # Plain tuples as keys in the loop (a NamedTuple costs a Python-level
    # __new__ per socket); Destination only for the result.
    counts: dict[tuple[str, str, int], int] = {}
    get = counts.get
    for s in snapshot.sockets:
        remote = s.remote
        if remote is None or s.protocol is not tcp:
            continue  # listeners have no remote
        local = s.local
        port = local.port
        if low <= port <= high and port not in reserved and port not in listen_ports:
            key = (local.ip, remote.ip, remote.port)
            counts[key] = get(key, 0) + 1
    return {Destination(*key): n for key, n in counts.items()}


def find_exhaustion(snapshot: Snapshot, config: Config, usage: Mapping[Destination, int],
                    listening: Listening) -> list[Finding]:
    """Destinations whose share of the usable range reaches the warning threshold."""
    usable = snapshot.settings.usable_ports
    if usable <= 0:
        return []
    t = config.thresholds
    flagged = sorted(((n / usable, dest) for dest, n in usage.items() if n / usable >= t.exhaustion_warning),
                     key=lambda x: (-x[0], x[1]))
    if not flagged:
        return []
    members: dict[Destination, list[Socket]] = {dest: [] for _ratio, dest in flagged}
    is_ephemeral = snapshot.settings.is_ephemeral
    listen_ports = _tcp_listen_ports(listening)
    for s in snapshot.sockets:
        remote = s.remote
        if remote is None or s.protocol is not Protocol.TCP:
            continue
        group = members.get(Destination(s.local.ip, remote.ip, remote.port))
        # the condition of destination_usage, so that examples and counts agree
        if group is not None and is_ephemeral(s.local.port) and s.local.port not in listen_ports:
            group.append(s)
    out = []
    for ratio, dest in flagged:
        group = members[dest]
        socks = tuple(heapq.nsmallest(MAX_EXAMPLE_SOCKETS, group, key=lambda s: s.local.port))
        states = Counter(s.state.value for s in group)
        severity = Severity.CRITICAL if ratio >= t.exhaustion_critical else Severity.WARNING
        out.append(
            _make(Kind.EPHEMERAL_EXHAUSTION,
                  f"ephemeral_exhaustion:{dest.local_ip}->{Endpoint(dest.remote_ip, dest.remote_port)}",
                  snapshot, socks,
                  {"destination": str(dest), "used": usage[dest], "usable": usable, "ratio": round(ratio, 4),
                   "states": dict(sorted(states.items())), "local_ip": dest.local_ip,
                   "remote_ip": dest.remote_ip, "remote_port": dest.remote_port,
                   "sockets_total": len(group)},
                  severity=severity, port=dest.remote_port, protocol=Protocol.TCP,
                  remediation=(f"reuse connections (pooling, keep-alive) instead of opening new ones; "
                               f"spread over more source addresses or destination ports; widen "
                               f"{SYSCTL_RANGE} (now {snapshot.settings.port_range}); if most are TIME_WAIT "
                               f"({states.get('TIME_WAIT', 0)} now), set net.ipv4.tcp_tw_reuse=1 on this client"))
        )
    return out


def owners_needed(snapshot: Snapshot, config: Config, idx: SocketIndex | None = None) -> set[int]:
    """Inodes whose owners :func:`detect` needs before it runs.

    Only CLOSE_WAIT sockets, and only when there are more of them in total
    than one process may hold (else no process can cross the threshold).
    """
    waiting = (idx or index(snapshot)).close_wait
    if len(waiting) <= config.thresholds.close_wait:
        return set()
    return {s.inode for s in waiting}


def find_close_wait(snapshot: Snapshot, config: Config, idx: SocketIndex | None = None) -> list[Finding]:
    """Processes holding more CLOSE_WAIT sockets than the threshold.

    Sockets whose owner is unknown are grouped by uid (or as one unknown
    group) so that a build-up is reported even without attribution.
    """
    threshold = config.thresholds.close_wait
    groups: dict[str, list[Socket]] = defaultdict(list)
    waiting = (idx or index(snapshot)).close_wait
    if len(waiting) <= threshold:
        return []
    for s in waiting:
        pids = snapshot.owners.get(s.inode, ())
        if pids:
            for pid in pids:
                groups[f"pid:{pid}"].append(s)
        else:
            groups[f"uid:{s.uid}" if s.uid is not None else "unknown"].append(s)
    out = []
    for owner, socks in sorted(groups.items()):
        if len(socks) <= threshold:
            continue
        if owner.startswith("pid:"):
            pid = int(owner[4:])
            procs: tuple[ProcessInfo, ...] = (snapshot.processes.get(pid, ProcessInfo(pid=pid)),)
            label = procs[0].label()
        else:
            procs = ()
            label = f"user id {owner[4:]} (process unknown)" if owner.startswith("uid:") else "an unknown process"
        finding = Finding(
            kind=Kind.CLOSE_WAIT_BUILDUP, severity=DEFAULT_SEVERITY[Kind.CLOSE_WAIT_BUILDUP],
            key=f"close_wait_buildup:{owner}", summary="",
            addresses=tuple(sorted({s.local.ip for s in socks})),
            sockets=tuple(heapq.nsmallest(MAX_EXAMPLE_SOCKETS, socks, key=lambda s: (s.local, s.remote or s.local))),
            processes=procs,
            remediation="the process does not close() sockets after their peer closed: fix the leak "
                        "(a missing close on error/EOF paths) or restart it to release them",
            details={"count": len(socks), "threshold": threshold, "owner": label, "sockets_total": len(socks)},
        )
        out.append(replace(finding, summary=_summarize(finding, procs)))
    return out


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
        finding = Finding(kind=Kind.RANGE_MISCONFIGURED, severity=DEFAULT_SEVERITY[Kind.RANGE_MISCONFIGURED],
                          key=f"range_misconfigured:{name}", summary=message, remediation=hint,
                          details={"problem": name, "message": message, "range": str(r),
                                   "usable": usable})
        out.append(finding)
    return out


# --------------------------------------------------------------------------- pipeline


def detect(
    snapshot: Snapshot,
    config: Config,
    remembered: Collection[RememberedPort] = (),
    usage: Mapping[Destination, int] | None = None,
    idx: SocketIndex | None = None,
) -> list[Finding]:
    """Every finding of ``snapshot``, before ignore rules, sorted by severity then key.

    Takes the snapshot, the configuration (services, thresholds, severity
    overrides), the ports remembered from earlier scans' listeners, and the
    per-destination usage and the socket index if the caller computed them
    already (:func:`destination_usage`, :func:`index`). Processes are filled from what the
    snapshot's owners already cover; see :func:`explain`.
    """
    if idx is None:
        idx = index(snapshot)
    listening = idx.listening
    if usage is None:
        usage = destination_usage(snapshot, listening)
    findings: list[Finding] = []
    findings += find_self_connects(snapshot, idx)
    known_servers = {svc.port for svc in config.services if svc.protocol is Protocol.TCP}
    known_servers |= {r.port for r in remembered if r.protocol is Protocol.TCP}
    findings += find_loop_pairs(snapshot, listening, known_servers)
    findings += find_listeners_in_range(snapshot, config, listening)
    findings += find_services_at_risk(snapshot, config, listening)
    findings += find_ports_taken(snapshot, config, remembered, listening)
    findings += find_exhaustion(snapshot, config, usage, listening)
    findings += find_close_wait(snapshot, config, idx)
    findings += find_range_problems(snapshot.settings, config)
    if config.severities:
        findings = [replace(f, severity=config.severities.get(f.kind, f.severity)) for f in findings]
    return sort_findings(findings)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first, then by kind and key (a stable, readable order)."""
    return sorted(findings, key=lambda f: (-f.severity.rank, f.kind.value, f.key))


def involved_inodes(findings: Iterable[Finding]) -> set[int]:
    """Inodes of every socket the findings involve (to attribute before :func:`explain`)."""
    return {s.inode for f in findings for s in f.sockets}


def explain_one(finding: Finding, snapshot: Snapshot) -> Finding:
    """``finding`` with processes and summary from the owners ``snapshot`` knows."""
    if finding.kind is Kind.RANGE_MISCONFIGURED:
        return finding
    if finding.kind is Kind.CLOSE_WAIT_BUILDUP:
        pid_part = finding.key.split(":", 2)[1:]
        if len(pid_part) == 2 and pid_part[0] == "pid":
            pid = int(pid_part[1])
            procs: tuple[ProcessInfo, ...] = (snapshot.processes.get(pid, ProcessInfo(pid=pid)),)
        else:
            procs = ()
    else:
        procs = _processes(snapshot, finding.sockets)
    return replace(finding, processes=procs, summary=_summarize(finding, procs))


def explain(findings: Iterable[Finding], snapshot: Snapshot) -> list[Finding]:
    """Every finding re-explained with the owners ``snapshot`` knows (see :func:`explain_one`)."""
    return [explain_one(f, snapshot) for f in findings]


def apply_ignores(findings: Iterable[Finding], rules: Collection[IgnoreRule],
                  matches: Callable[[IgnoreRule, Finding], bool] = ignore_matches,
                  ) -> tuple[list[Finding], list[Finding]]:
    """Split findings into (kept, ignored) by the configuration's ignore rules."""
    kept: list[Finding] = []
    ignored: list[Finding] = []
    for f in findings:
        (ignored if any(matches(rule, f) for rule in rules) else kept).append(f)
    return kept, ignored


def listening_ports(listening: Listening) -> set[RememberedPort]:
    """The (protocol, port) of every TCP listener in ``listening`` (:attr:`SocketIndex.listening`).

    What the daemon remembers for ``port_taken``. Only TCP: an unconnected UDP
    socket is as often a client's random source port (used with sendto()) as
    a service, and remembering those would turn every later reuse of the port
    into a finding. UDP services are covered when declared.
    """
    return {RememberedPort(p, port) for (p, port) in listening if p is Protocol.TCP}
