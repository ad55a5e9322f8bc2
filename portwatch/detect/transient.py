"""Transient findings: self-connects and loop pairs seen only in socket-destroy events.

A scan sees the sockets of one instant; the self-connects that break test
suites live milliseconds. :class:`TransientDetector` reads the
:class:`~portwatch.model.DestroyEvent`\\ s of one namespace (from
:mod:`portwatch.collect.events`) and reports, as the scan would have:

- ``self_connect``: a destroyed TCP socket whose local endpoint equals its
  remote one;
- ``loop_pair``: two destroyed TCP sockets that mirror each other, destroyed
  within ``pair_window`` seconds of each other, with no listener on either
  port (the ports the caller says are listening, and the ports of unconnected
  TCP sockets destroyed in the last ``pair_window`` seconds: a server that just
  stopped).

The findings are the scan's own (same kind, severity, key, remediation: built
by the two detectors), with ``details["transient"] = True``, first and last
seen, how often in the window, the kernel's TCP figures, and a summary saying
the process is not in the event (or naming a known owner). Ordinary
connections, TIME_WAIT, refused or reset connects (the kernel mangles their
tuple to ``0.0.0.0:lport -> raddr:0``) and UDP yield nothing.

:class:`NamespaceTransients`: one detector per namespace, told what its
latest scan saw, keying findings like the scan's. :class:`TransientBook`: the
lifecycle (new, repeated, resolved) of findings that come as events, any kind.

Pure: imports :mod:`portwatch.model` and the two detectors; no I/O, clock or
logging (times come in the events and in the ``now`` arguments). State is
bounded: at most ``max_pending`` unmatched sockets and ``max_findings`` keys.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Iterable, Mapping, MutableSet

from portwatch.detect.loop_pair import find_loop_pairs
from portwatch.detect.loop_pair import summarize as summarize_loop_pair
from portwatch.detect.self_connect import find_self_connects
from portwatch.detect.self_connect import summarize as summarize_self_connect
from portwatch.config.types import Config, ignore_matches
from portwatch.detect.base import Summarize, who, with_configured_severities
from portwatch.model import (
    DestroyEvent,
    Endpoint,
    Finding,
    KernelSettings,
    NamespaceInfo,
    NamespaceKind,
    PortRange,
    ProcessInfo,
    Protocol,
    ScanResult,
    Snapshot,
    Socket,
    SocketState,
    TcpInfo,
    is_wildcard,
    iso_time,
)

__all__ = ["DEFAULT_CONFIRM_DELAY", "DEFAULT_PAIR_WINDOW", "DEFAULT_WINDOW", "BookEntry", "NamespaceTransients",
           "Owners", "TransientBook", "TransientDetector", "Tuple4"]

#: Seconds a transient finding stays current after its last event (and over which it is counted).
DEFAULT_WINDOW = 300.0
#: Seconds a loop pair waits for a listener's destroy event before it is reported (NamespaceTransients).
DEFAULT_CONFIRM_DELAY = 0.25
#: Seconds within which the two sockets of a loop pair must both be destroyed.
DEFAULT_PAIR_WINDOW = 2.0
#: The kernel's default range: the remediation of a finding when the caller gives no settings.
_DEFAULT_SETTINGS = KernelSettings(PortRange(32768, 60999))

#: Known owners of a 4-tuple: ``(local, remote) -> processes`` (from a scan or remembered sockets).
Owners = Mapping[tuple[Endpoint, Endpoint], tuple[ProcessInfo, ...]]
#: The (local, remote) endpoints of a connected socket.
Tuple4 = tuple[Endpoint, Endpoint]
#: What :meth:`TransientDetector.observe` passes down: listening ports, seen keys, owners, settings,
#: namespace, covered tuples, the probe of listeners.
_Context = tuple[Collection[int], Collection[str], Owners, KernelSettings, "str | None", MutableSet[Tuple4],
                 "_Probe"]


class _Probe:
    """``listening_now``, asked once: the ports it returned (empty when it cannot tell)."""

    def __init__(self, ask: Callable[[], Collection[int] | None] | None) -> None:
        self.ask = ask
        self.ports: Collection[int] | None = None

    def listening(self, port: int) -> bool:
        if self.ports is None:
            self.ports = (self.ask() if self.ask is not None else None) or ()
        return port in self.ports


@dataclass
class _Seen:
    """What the detector knows of one transient finding's key."""

    finding: Finding
    first: float
    last: float
    times: deque[float] = field(default_factory=deque)


def _socket(event: DestroyEvent, remote: Endpoint) -> Socket:
    """The model socket of a destroyed TCP socket (no inode, no uid: the event has none)."""
    return Socket(Protocol.TCP, event.family, event.state or SocketState.CLOSE, event.local, remote, 0)


class _Tally(dict[str, Finding]):
    """The findings one call touched, by key, and how often (``details["occurrences"]``)."""

    def add(self, found: Finding | None) -> None:
        if found is not None:
            old = self.pop(found.key, None)
            self[found.key] = replace(found, details={
                **found.details, "occurrences": old.details["occurrences"] + 1 if old else 1})


def _info(info: TcpInfo | None) -> dict[str, object] | None:
    return info.to_dict() if info is not None else None


class TransientDetector:
    """Turns one namespace's destroy events into transient findings; keeps the window's state.

    ``TransientDetector(window=300, pair_window=2, max_pending=100_000,
    max_findings=10_000, confirm_delay=0)``. Feed it with :meth:`observe` in
    event order (and :meth:`flush` with ``confirm_delay``); ask :meth:`current`
    for the findings still in the window, :meth:`expire` for those that went
    quiet. Not thread-safe.
    """

    def __init__(self, window: float = DEFAULT_WINDOW, pair_window: float = DEFAULT_PAIR_WINDOW, *,
                 max_pending: int = 100_000, max_findings: int = 10_000, confirm_delay: float = 0.0) -> None:
        if window <= 0 or pair_window <= 0 or max_pending < 1 or max_findings < 1:
            raise ValueError("window, pair_window, max_pending and max_findings must be positive")
        self.window, self.pair_window, self.confirm_delay = window, pair_window, confirm_delay
        self.max_pending, self.max_findings = max_pending, max_findings
        # loop pairs (due, first end, second end, context) waiting for their first and second look.
        self._candidates: deque[tuple[float, DestroyEvent, DestroyEvent, _Context]] = deque()
        self._second: deque[tuple[float, DestroyEvent, DestroyEvent, _Context]] = deque()
        # (local, remote) -> event of a destroyed connected TCP socket not yet matched, oldest first.
        self._pending: OrderedDict[tuple[Endpoint, Endpoint], DestroyEvent] = OrderedDict()
        # port -> time an unconnected TCP socket (a listener) on it was destroyed, oldest first.
        self._closed_listeners: OrderedDict[int, float] = OrderedDict()
        self._seen: dict[str, _Seen] = {}

    def observe(self, events: Iterable[DestroyEvent], *, listening_ports: Collection[int] = (),
                seen_keys: Collection[str] = (), owners: Owners | None = None,
                settings: KernelSettings | None = None, namespace: str | None = None,
                covered: MutableSet[Tuple4] | None = None,
                listening_now: Callable[[], Collection[int] | None] | None = None) -> list[Finding]:
        """Read ``events`` (oldest first); return the findings they created or updated.

        Takes what the caller knows of the namespace: ``listening_ports``
        (TCP listeners, declared services, remembered listeners: a pair with
        a side there is ordinary), ``seen_keys`` (keys the last scan reported:
        not reported again), ``owners`` (processes of known 4-tuples),
        ``settings`` (for the remediation; kernel defaults when None),
        ``namespace`` (put in ``details["namespace"]``), ``covered`` (the
        ``(local, remote)`` of sockets a scan reported, the 4-tuple standing
        for the cookie the socket model lacks: the first event of such a tuple
        is that socket closing, taken out of ``covered``, yielding nothing)
        and ``listening_now`` (asked at most once per call, for a would-be
        loop pair: the TCP listeners' ports now, None when unknown). Returns
        one finding per key touched, as of its last event, with
        ``details["occurrences"]`` in these events. Never raises.
        """
        touched = _Tally()
        ctx = (listening_ports, seen_keys, owners or {}, settings or _DEFAULT_SETTINGS, namespace,
               covered if covered is not None else set(), _Probe(listening_now))
        tcp = Protocol.TCP
        for event in events:
            remote = event.remote
            if event.protocol is not tcp:
                continue
            if remote is None:
                self._closed_listeners[event.local.port] = event.at
                self._closed_listeners.move_to_end(event.local.port)
                continue
            local = event.local
            if remote.port == 0 or local.port == 0 or is_wildcard(local.ip):
                continue  # reset, refused or never connected: the kernel mangled the tuple
            touched.add(self._self_connect(event, remote, ctx) if local == remote
                        else self._pair(event, local, remote, ctx))
            self._prune(event.at)
        return list(touched.values())

    def flush(self, now: float, listening_now: Callable[[], Collection[int] | None] | None = None) -> list[Finding]:
        """The loop pairs whose ``confirm_delay`` ended by ``now`` and that no listener explains.

        With ``confirm_delay`` a matched pair waits, then ``listening_now``
        (as in :meth:`observe`) and the listeners destroyed meanwhile are
        asked; if neither explains it, it waits once more (a listener closed
        just before has its event on the way) and is reported then unless a
        listener's destroy event came: ``2 * confirm_delay`` after it was
        read. Returns findings as :meth:`observe` does.
        """
        probe = _Probe(listening_now)
        touched = _Tally()
        while self._second and self._second[0][0] <= now:
            _due, other, event, ctx = self._second.popleft()
            touched.add(self._loop(other, event, (*ctx[:6], _Probe(None))))
        while self._candidates and self._candidates[0][0] <= now:
            _due, other, event, ctx = self._candidates.popleft()
            if self._explained(other.local.port, event.local.port, probe):
                continue
            # the listener may have closed just before the probe, its event still on its way
            self._second.append((now + self.confirm_delay, other, event, ctx))
        return list(touched.values())

    def current(self, now: float) -> list[Finding]:
        """The findings whose last event is at most ``window`` seconds before ``now``, by first seen."""
        live = [s for s in self._seen.values() if now - s.last <= self.window]
        return [s.finding for s in sorted(live, key=lambda s: s.first)]

    def expire(self, now: float) -> list[Finding]:
        """Forget, and return, the findings with no event in the ``window`` seconds before ``now``."""
        gone = [key for key, s in self._seen.items() if now - s.last > self.window]
        return [self._seen.pop(key).finding for key in gone]

    # ----------------------------------------------------------------- the two kinds

    def _self_connect(self, event: DestroyEvent, remote: Endpoint, ctx: _Context) -> Finding | None:
        listening_ports, seen_keys, owners, settings, namespace, covered, _probe = ctx
        if (event.local, remote) in covered:
            covered.discard((event.local, remote))
            return None
        sock = _socket(event, remote)
        for base in find_self_connects(Snapshot(settings, (sock,))):
            if base.key not in seen_keys:
                procs = owners.get((event.local, remote), ())
                return self._record(base, (event,), procs, summarize_self_connect, namespace,
                                    {"tcp_info": _info(event.info)})
        return None

    def _pair(self, event: DestroyEvent, local: Endpoint, remote: Endpoint, ctx: _Context) -> Finding | None:
        listening_ports, _keys, _owners, _settings, _namespace, covered, _probe = ctx
        if (local, remote) in covered:
            covered.discard((local, remote))
            return None
        if (local.port in listening_ports or remote.port in listening_ports
                or local.port in self._closed_listeners or remote.port in self._closed_listeners):
            return None
        other = self._pending.pop((remote, local), None)
        if other is None or event.at - other.at > self.pair_window:
            self._pending[(local, remote)] = event
            self._pending.move_to_end((local, remote))
            if len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
            return None
        if self.confirm_delay > 0:
            if len(self._candidates) < self.max_pending:
                self._candidates.append((event.at + self.confirm_delay, other, event, ctx))
            return None
        return self._loop(other, event, ctx)

    def _loop(self, other: DestroyEvent, event: DestroyEvent, ctx: _Context) -> Finding | None:
        """The loop pair of two mirrored destroyed sockets, unless a listener shows them ordinary."""
        _ports, seen_keys, owners, settings, namespace, _covered, probe = ctx
        local, remote = event.local, other.local
        if self._explained(local.port, remote.port, probe):
            return None
        socks = (_socket(other, local), _socket(event, remote))
        for base in find_loop_pairs(Snapshot(settings, socks), {}):
            if base.key in seen_keys:
                return None
            procs = owners.get((other.local, local), ()) + owners.get((local, remote), ())
            by_end = {str(e.local): _info(e.info) for e in (other, event)}
            return self._record(base, (other, event), procs, summarize_loop_pair, namespace,
                                {"tcp_info": by_end})
        return None

    def _explained(self, a: int, b: int, probe: _Probe) -> bool:
        """True when a listener on port ``a`` or ``b`` closed just now or exists (opened since the scan)."""
        closed = self._closed_listeners
        return a in closed or b in closed or probe.listening(a) or probe.listening(b)

    # ----------------------------------------------------------------- bookkeeping

    def _record(self, base: Finding, events: tuple[DestroyEvent, ...], procs: tuple[ProcessInfo, ...],
                summarize: Summarize, namespace: str | None,
                extra: dict[str, object]) -> Finding:
        """Count ``events`` under ``base.key``; the transient finding with its figures now."""
        at = max(e.at for e in events)
        seen = self._seen.get(base.key)
        if seen is None:
            if len(self._seen) >= self.max_findings:
                oldest = min(self._seen, key=lambda k: self._seen[k].last)
                del self._seen[oldest]
            seen = self._seen[base.key] = _Seen(base, at, at)
        seen.last = at
        seen.times.append(at)
        while seen.times and at - seen.times[0] > self.window:
            seen.times.popleft()
        details: dict[str, object] = {
            **base.details, "transient": True,
            "first_seen": iso_time(seen.first, "milliseconds"),
            "last_seen": iso_time(seen.last, "milliseconds"),
            "count": len(seen.times), "window_seconds": self.window,
            "state_at_destroy": [e.state.value if e.state else None for e in events],
            "cookies": [e.cookie for e in events],
            **extra,
        }
        if namespace is not None:
            details["namespace"] = namespace
        unique = tuple({p.pid: p for p in procs}.values())
        finding = replace(base, details=details, processes=unique)
        scan_words = summarize(finding, unique).rpartition("; held by ")[0]
        times = "once" if len(seen.times) == 1 else f"{len(seen.times)} times"
        held = (f"it was held by {who(unique)} (known from a scan)" if unique
                else "the process is not in the kernel's destroy event")
        summary = (f"{scan_words}; transient: seen {times} in {self.window:g} s, last at "
                   f"{details['last_seen']}, then closed; {held}")
        seen.finding = replace(finding, summary=summary)
        return seen.finding

    def _prune(self, now: float) -> None:
        """Drop unmatched sockets and destroyed listeners older than ``pair_window``."""
        limit = now - self.pair_window
        pending = self._pending
        while pending:
            key, first = next(iter(pending.items()))
            if first.at >= limit:
                break
            del pending[key]
        closed = self._closed_listeners
        while closed:
            port, at = next(iter(closed.items()))
            if at >= limit:
                break
            del closed[port]


# ----------------------------------------------------------------- several namespaces


class NamespaceTransients:
    """One :class:`TransientDetector` per namespace, told what the latest scan of it saw.

    ``NamespaceTransients(window, pair_window, keyed=True, config=None,
    confirm_delay=0.25)``: :meth:`scanned` takes each scan result (listening
    TCP ports, settings, 4-tuples and owners of its findings' sockets: a
    socket a scan reported that then closes is not reported again);
    :meth:`observe` gives one namespace's findings, ``namespace`` set and,
    with ``keyed``, non-host keys ending in ``@<namespace key>`` like the
    scan's (``keyed=False`` for scans of the own namespace only, as
    :func:`~portwatch.scan.run_scan`). Loop pairs come from :meth:`flush`
    (call it after each read). ``config`` (settable): its severities and
    ignore rules apply, as in a scan. Not thread-safe.
    """

    def __init__(self, window: float = DEFAULT_WINDOW, pair_window: float = DEFAULT_PAIR_WINDOW, *,
                 keyed: bool = True, config: Config | None = None,
                 confirm_delay: float = DEFAULT_CONFIRM_DELAY) -> None:
        self.config = config
        self.confirm_delay = confirm_delay
        self.window = window
        self.pair_window = pair_window
        self.keyed = keyed
        self._detectors: dict[int, TransientDetector] = {}
        self._namespaces: dict[int, NamespaceInfo] = {}
        self._scans: dict[int, _ScanContext] = {}

    def scanned(self, result: ScanResult) -> None:
        """Remember what ``result`` (a scan of ``result.snapshot.namespace``) saw, replacing the last."""
        ns = result.snapshot.namespace
        owners: dict[Tuple4, tuple[ProcessInfo, ...]] = {}
        for f in (*result.findings, *result.ignored):
            for s in f.sockets:
                if s.remote is not None:
                    owners[(s.local, s.remote)] = owners.get((s.local, s.remote), ()) + f.processes
        ports = frozenset(port for (proto, port) in result.listening if proto is Protocol.TCP)
        self._scans[ns.inode if ns else 0] = _ScanContext(ports, set(owners), owners, result.snapshot.settings)

    def observe(self, namespace: NamespaceInfo, events: Iterable[DestroyEvent],
                listening_now: Callable[[], Collection[int] | None] | None = None) -> list[Finding]:
        """The transient findings ``events`` (of ``namespace``, oldest first) created or updated.

        ``listening_now``: see :meth:`TransientDetector.observe`.
        """
        ident = namespace.inode
        self._namespaces[ident] = namespace
        detector = self._detectors.get(ident)
        if detector is None:
            detector = self._detectors[ident] = TransientDetector(self.window, self.pair_window,
                                                                  confirm_delay=self.confirm_delay)
        ctx = self._scans.get(ident) or (self._scans.get(0) if namespace.own else None)
        if ctx is None:
            ctx = self._scans[ident] = _ScanContext(frozenset(), set(), {}, None)
        found = detector.observe(events, listening_ports=ctx.ports, owners=ctx.owners,
                                 settings=ctx.settings, namespace=namespace.key, covered=ctx.covered,
                                 listening_now=listening_now)
        return self._finish(namespace, found)

    def flush(self, now: float,
              listening_now: Callable[[NamespaceInfo], Collection[int] | None] | None = None) -> list[Finding]:
        """The loop pairs confirmed by ``now`` in every namespace (see :meth:`TransientDetector.flush`).

        ``listening_now(namespace)``: the ports with a TCP listener there now.
        """
        out: list[Finding] = []
        for ident, detector in self._detectors.items():
            ns = self._namespaces[ident]
            ask = (lambda: listening_now(ns)) if listening_now is not None else None
            out += self._finish(ns, detector.flush(now, ask))
        return out

    def _finish(self, namespace: NamespaceInfo, found: list[Finding]) -> list[Finding]:
        """``found`` keyed and labelled for ``namespace``, with the configuration's severities and ignores."""
        suffix = f"@{namespace.key}" if self.keyed and namespace.kind is not NamespaceKind.HOST else ""
        found = [replace(f, key=f.key + suffix, namespace=namespace) for f in found]
        config = self.config
        if config is None:
            return found
        found = with_configured_severities(found, config)
        return [f for f in found if not any(ignore_matches(rule, f) for rule in config.ignore)]

    def retain(self, namespaces: Iterable[NamespaceInfo]) -> None:
        """Forget the state of every namespace not in ``namespaces`` (they are gone)."""
        keep = {ns.inode for ns in namespaces} | {0}
        for table in (self._detectors, self._scans, self._namespaces):
            for ident in [i for i in table if i not in keep]:
                del table[ident]


@dataclass
class _ScanContext:
    ports: frozenset[int]
    covered: set[Tuple4]
    owners: Owners
    settings: KernelSettings | None


# ----------------------------------------------------------------- the lifecycle


@dataclass(frozen=True)
class BookEntry:
    """A :class:`TransientBook` entry: latest report, first/last report times (Unix), occurrences."""

    finding: Finding
    first_seen: float
    last_seen: float
    count: int


class TransientBook:
    """The lifecycle of findings that come as events (of any kind): found, repeated, resolved.

    ``TransientBook(quiet_period=300, max_entries=10_000)``: :meth:`add`
    merges the reports of one key (count, first and last seen); a finding
    stays active until ``quiet_period`` seconds pass without a report, then
    :meth:`expire` resolves it. Times are passed in. Occurrences: the
    finding's positive int ``details["occurrences"]``, else 1. Beyond
    ``max_entries`` keys the quietest is dropped unreported. Not thread-safe.
    """

    def __init__(self, quiet_period: float = DEFAULT_WINDOW, max_entries: int = 10_000) -> None:
        if quiet_period <= 0 or max_entries < 1:
            raise ValueError("quiet_period and max_entries must be positive")
        self.quiet_period = quiet_period
        self.max_entries = max_entries
        self._entries: dict[str, BookEntry] = {}

    def add(self, findings: Iterable[Finding], at: float) -> list[Finding]:
        """Record ``findings`` reported at ``at``; return those whose key was not active (new)."""
        new: list[Finding] = []
        for f in findings:
            times = f.details.get("occurrences")
            n = times if isinstance(times, int) and not isinstance(times, bool) and times > 0 else 1
            old = self._entries.get(f.key)
            if old is not None and at - old.last_seen <= self.quiet_period:
                self._entries[f.key] = BookEntry(f, old.first_seen, max(at, old.last_seen), old.count + n)
                continue
            if old is None and len(self._entries) >= self.max_entries:
                del self._entries[min(self._entries, key=lambda k: self._entries[k].last_seen)]
            self._entries[f.key] = BookEntry(f, at, at, n)
            new.append(f)
        return new

    def expire(self, now: float) -> list[Finding]:
        """Forget, and return (resolved), the findings with no report in the ``quiet_period`` before ``now``."""
        gone = [k for k, e in self._entries.items() if now - e.last_seen > self.quiet_period]
        return [self._entries.pop(k).finding for k in gone]

    def active(self, now: float) -> list[BookEntry]:
        """The entries reported within ``quiet_period`` before ``now``, by first seen."""
        live = [e for e in self._entries.values() if now - e.last_seen <= self.quiet_period]
        return sorted(live, key=lambda e: (e.first_seen, e.finding.key))

    def get(self, key: str) -> BookEntry | None:
        """The entry of ``key`` (active or not yet expired), or None."""
        return self._entries.get(key)
