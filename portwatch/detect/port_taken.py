"""The ``port_taken`` finding: a service port with no listener, held by non-listening sockets.

Imports :mod:`portwatch.detect.base` and :mod:`portwatch.model` only (pure).
"""

from __future__ import annotations

from collections import defaultdict

from portwatch.detect.base import (
    ORPHAN_STATES,
    Config,
    DetectionInput,
    Detector,
    SocketIndex,
    by_protocol_and_port,
    covers,
    port_slash_protocol,
    reserve_hint,
    who,
)
from portwatch.model import Finding, Kind, Listening, ProcessInfo, Protocol, RememberedPort, Severity, Snapshot, Socket
from portwatch.model.snapshot import Identity

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Collection


def process_matches(process: ProcessInfo, identity: Identity) -> bool:
    """True if ``process`` is the one ``identity`` names (every part given must match).

    The executable part matches the process's name, its command line's
    first word, or that word's last path component; the unit part matches
    its systemd unit exactly. An identity with no part known matches nothing.
    """
    executable, unit = identity
    if executable is None and unit is None:
        return False
    if unit is not None and process.unit != unit:
        return False
    if executable is not None:
        first = process.cmdline[0] if process.cmdline else None
        names = {process.name, first, first.rsplit("/", 1)[-1] if first else None} - {None}
        if executable not in names:
            return False
    return True


def own_draining(snapshot: Snapshot, holders: tuple[Socket, ...], identities: tuple[Identity, ...],
                 listening: Listening) -> bool:
    """True if every holder is an accepted connection of the port's own process.

    Accepted-connection shape: a TCP socket (connected: it has a peer) whose
    peer's port has no listener here (a client's ephemeral port, not an
    outgoing connection to a local service). Identity: every known owner of
    every holder matches one of ``identities`` (a holder of unknown owner is
    not the service's). Shape alone is ambiguous (an outgoing connection that
    took the port as its source looks the same), so both must hold.
    """
    if not identities or not holders:
        return False
    for s in holders:
        if s.protocol is not Protocol.TCP or s.remote is None or (s.protocol, s.remote.port) in listening:
            return False
        owners = snapshot.processes_of(s)
        if not owners or not all(any(process_matches(p, i) for i in identities) for p in owners):
            return False
    return True


def find_ports_taken(snapshot: Snapshot, config: Config, remembered: Collection[RememberedPort],
                     listening: Listening) -> list[Finding]:
    """Service ports with no listener now, held as local port by non-listening sockets.

    Service ports are, in order of precedence: declared services (critical),
    reserved ports (critical) and ports remembered from earlier scans'
    listeners (warning: inferred, not declared). A holder conflicts with a
    service declared on a specific address only if it uses that address.
    TIME_WAIT sockets are not holders (they have no process, and servers bind
    over them with SO_REUSEADDR). When every holder is an accepted connection
    of the port's own process (see :func:`own_draining`; the identity is the
    declared service's ``process``/``unit``, or the remembered listener's),
    the finding is ``info``: a restart with SO_REUSEADDR binds over them.
    """
    settings = snapshot.settings
    # (protocol, port) -> (reason, service name, address, severity)
    wanted: dict[tuple[Protocol, int], tuple[str, str | None, str | None, Severity]] = {}
    # (protocol, port) -> the identities of the port's own process (declared, remembered)
    own: dict[tuple[Protocol, int], list[Identity]] = defaultdict(list)
    for svc in config.services:
        wanted.setdefault((svc.protocol, svc.port), ("declared service", svc.name, svc.address, Severity.CRITICAL))
        if svc.process is not None or svc.unit is not None:
            own[(svc.protocol, svc.port)].append((svc.process, svc.unit))
    reserved_lookup = settings.reserved
    for r in remembered:
        wanted.setdefault((r.protocol, r.port), ("had a listener earlier", None, None, Severity.WARNING))
        if r.executable is not None or r.unit is not None:
            own[(r.protocol, r.port)].append((r.executable, r.unit))
    if not wanted and not reserved_lookup:
        return []
    holders: dict[tuple[Protocol, int], list[Socket]] = defaultdict(list)
    for s in snapshot.sockets:
        if s.is_listener or s.state in ORPHAN_STATES or s.remote is None:
            continue
        k = (s.protocol, s.local.port)
        if k in wanted or s.local.port in reserved_lookup:
            holders[k].append(s)
    out = []
    for (protocol, port), socks in sorted(holders.items(), key=by_protocol_and_port):
        if (protocol, port) in wanted:
            reason, name, address, severity = wanted[(protocol, port)]
        else:
            reason, name, address, severity = "reserved port", None, None, Severity.CRITICAL
        if any(covers(ls.local.ip, address) for ls in listening.get((protocol, port), ())):
            continue  # the service is up: these are its own connections
        conflicting = tuple(sorted((s for s in socks if covers(s.local.ip, address)),
                                   key=lambda s: (s.local.ip, s.remote or s.local, s.inode)))
        if not conflicting:
            continue
        draining = own_draining(snapshot, conflicting, tuple(own.get((protocol, port), ())), listening)
        if draining:
            severity = Severity.INFO
            hint = ("restart the service with SO_REUSEADDR set before bind() (most servers do), "
                    "or wait for its connections to close")
        else:
            hint = ("stop the holder or wait for its connection to close, then start the service; "
                    "to keep it from happening again, ")
            hint += (reserve_hint(settings, [port]) if port not in settings.reserved
                     else f"find why a process binds reserved port {port} explicitly")
        details: dict[str, object] = {"reason": reason, "service": name, "holders": len(conflicting),
                                      "example": conflicting[0].describe()}
        if draining:
            details["draining"] = True
        out.append(
            DETECTOR.make(f"port_taken:{protocol.value}:{port}", snapshot, conflicting, details,
                          severity=severity, port=port, protocol=protocol, remediation=hint)
        )
    return out


def summarize(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    """``service 'api' port 40100/tcp (reason) has no listener and is held by ...``."""
    d = finding.details
    service = f"service {d['service']!r} " if d.get("service") else ""
    if d.get("draining"):
        return (
            f"{service}port {port_slash_protocol(finding)} ({d['reason']}) has no listener; "
            f"its own draining connections hold it ({d['holders']} socket(s), e.g. {d['example']}, "
            f"of {who(processes)}): a restart with SO_REUSEADDR can bind it, one without cannot"
        )
    return (
        f"{service}port {port_slash_protocol(finding)} "
        f"({d['reason']}) has no listener and is held by {d['holders']} "
        f"non-listening socket(s), e.g. {d['example']}, of {who(processes)}: an outgoing connection on "
        f"it makes the service's bind() fail with EADDRINUSE, even with SO_REUSEADDR "
        f"(the service's own draining connections would not)"
    )


def _find(inp: DetectionInput) -> list[Finding]:
    return find_ports_taken(inp.snapshot, inp.config, inp.remembered, inp.index.listening)


def owners_needed(snapshot: Snapshot, config: Config, idx: SocketIndex) -> set[int]:
    """Owners needed to know whose port a declared service's port is, and who holds it.

    For each declared service: the listeners covering its port (the scan's
    result then carries their identity, which the daemon remembers, see
    ``portwatch.daemon.state.listener_identities``), or, while none covers
    it, the connected sockets holding it (their owners decide between info
    and critical; a finding would have them attributed anyway). A handful of
    sockets per service; none when no service is declared.
    """
    ports = {(svc.protocol, svc.port): svc.address for svc in config.services}
    needed: set[int] = set()
    down: dict[tuple[Protocol, int], str | None] = {}
    for key, address in ports.items():
        up = [ls.inode for ls in idx.listening.get(key, ()) if covers(ls.local.ip, address)]
        needed.update(up)
        if not up:
            down[key] = address
    if down:
        for s in snapshot.sockets:
            key = (s.protocol, s.local.port)
            if key in down and not (s.is_listener or s.state in ORPHAN_STATES or s.remote is None) \
                    and covers(s.local.ip, down[key]):
                needed.add(s.inode)
    return needed


DETECTOR = Detector(
    kind=Kind.PORT_TAKEN,
    severity=Severity.CRITICAL,
    alertname="PortwatchPortTaken",
    find=_find,
    summarize=summarize,
    owners_needed=owners_needed,
)
