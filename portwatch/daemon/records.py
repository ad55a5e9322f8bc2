"""The daemon's memory as data: remembered listeners and finding history, and the pure rules that update them.

Job: the records (:class:`ListenerRecord`, :class:`FindingRecord`,
:class:`State`, :class:`FindingsUpdate`) and the update rules, pure
functions that take ``now`` (:func:`update_listeners`,
:func:`update_namespace_listeners`, :func:`update_findings`,
:func:`needs_save`, :func:`persistent`), so they can be tested as tables.
:mod:`portwatch.daemon.state` explains the rules and writes the file.
Remembered listeners are kept per network namespace: ``State.listeners``
holds the host namespace's (what every state file before namespaces held),
``State.namespaces`` the others' by namespace key.

May import the standard library and :mod:`portwatch.model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from portwatch.model import Finding, Kind, NamespaceKind, Protocol, RememberedPort, Severity
from portwatch.model.snapshot import Identity

__all__ = [
    "FindingRecord", "FindingsUpdate", "HISTORY_TTL", "HOST_KEY", "LISTENER_TTL", "ListenerRecord",
    "MAX_LISTENERS", "MAX_NAMESPACES", "MAX_RESOLVED", "REMEMBER_AFTER", "SAVE_RESOLUTION", "State",
    "needs_save", "persistent", "remembered_by_namespace", "remembered_ports", "update_findings",
    "update_listeners", "update_namespace_listeners",
]

#: Seconds a listener must have been seen for before it is remembered.
REMEMBER_AFTER = 300.0
#: Seconds a remembered listener stays remembered without being seen.
LISTENER_TTL = 7 * 86400.0
#: Most remembered listeners kept.
MAX_LISTENERS = 10_000
#: Seconds a resolved finding stays in the history.
HISTORY_TTL = 30 * 86400.0
#: Most resolved findings kept in the history.
MAX_RESOLVED = 1_000
#: Changes of ``last_seen`` (or a summary's wording) alone are written at most this often (seconds).
SAVE_RESOLUTION = 600.0
#: The namespace key of ``State.listeners`` (the host namespace; old state files hold only it).
HOST_KEY = NamespaceKind.HOST.value
#: Most namespaces other than the host's whose listeners are remembered (the least recently seen go first).
MAX_NAMESPACES = 1_000


@dataclass(frozen=True)
class ListenerRecord:
    """A listener port seen by scans: first and last seen (Unix times), and its process identity when known."""

    protocol: Protocol
    port: int
    first_seen: float
    last_seen: float
    executable: str | None = None
    unit: str | None = None

    @property
    def port_key(self) -> RememberedPort:
        """The (protocol, port) the state is keyed by (no identity)."""
        return RememberedPort(self.protocol, self.port)

    @property
    def remembered(self) -> RememberedPort:
        """The (protocol, port) with the listener's identity: what the detectors take."""
        return RememberedPort(self.protocol, self.port, self.executable, self.unit)

    def qualifies(self, remember_after: float = REMEMBER_AFTER) -> bool:
        """True once the listener has been seen for at least ``remember_after`` seconds."""
        return self.last_seen - self.first_seen >= remember_after


@dataclass(frozen=True)
class FindingRecord:
    """The history of one finding key. ``resolved_at`` is None while the finding is active."""

    key: str
    kind: Kind
    severity: Severity
    summary: str
    first_seen: float
    last_seen: float
    resolved_at: float | None = None

    @property
    def active(self) -> bool:
        """True while the latest scan reported the finding."""
        return self.resolved_at is None


@dataclass(frozen=True)
class State:
    """Everything the daemon remembers. Immutable; the update functions return new values.

    ``listeners`` are the host namespace's remembered listeners (key
    :data:`HOST_KEY`), ``namespaces`` those of every other network namespace
    by its key (:attr:`~portwatch.model.NamespaceInfo.key`).
    """

    listeners: Mapping[RememberedPort, ListenerRecord] = field(default_factory=dict)
    findings: Mapping[str, FindingRecord] = field(default_factory=dict)
    namespaces: Mapping[str, Mapping[RememberedPort, ListenerRecord]] = field(default_factory=dict)

    def listeners_of(self, key: str) -> Mapping[RememberedPort, ListenerRecord]:
        """The remembered listeners of the namespace ``key`` (empty when none)."""
        return self.listeners if key == HOST_KEY else self.namespaces.get(key, {})

    def active_keys(self) -> frozenset[str]:
        """Keys of the findings active in the latest scan."""
        return frozenset(k for k, r in self.findings.items() if r.active)


@dataclass(frozen=True)
class FindingsUpdate:
    """What :func:`update_findings` returns: the new history, and what changed.

    ``new`` are the findings whose keys were not active before (in scan
    order); ``resolved`` the records that just got their ``resolved_at``
    (sorted by key).
    """

    records: Mapping[str, FindingRecord]
    new: tuple[Finding, ...]
    resolved: tuple[FindingRecord, ...]


# --------------------------------------------------------------------------- pure update rules


def update_listeners(
    listeners: Mapping[RememberedPort, ListenerRecord],
    seen: Iterable[RememberedPort],
    now: float,
    *,
    remember_after: float = REMEMBER_AFTER,
    ttl: float = LISTENER_TTL,
    limit: int = MAX_LISTENERS,
    identities: Mapping[RememberedPort, Identity] | None = None,
) -> dict[RememberedPort, ListenerRecord]:
    """The listener records after a scan that saw the listeners ``seen`` at time ``now``.

    Seen ports get ``last_seen = now`` (new ones ``first_seen = now`` too),
    and the identity ``identities`` gives them (keyed by ``(protocol,
    port)``; a port it does not name keeps the identity it had).
    An unseen port is kept only if it qualified (seen for ``remember_after``
    seconds) and was last seen at most ``ttl`` seconds ago. When more than
    ``limit`` remain, the least recently seen unseen ones are dropped (ports
    seen now are always kept). Pure; never raises.
    """
    seen_set = {RememberedPort(k.protocol, k.port) for k in seen}
    out: dict[RememberedPort, ListenerRecord] = {}
    for key, rec in listeners.items():
        if key in seen_set:
            continue
        if rec.qualifies(remember_after) and now - rec.last_seen <= ttl:
            out[key] = rec
    if len(out) + len(seen_set) > limit:
        room = max(limit - len(seen_set), 0)
        keep = sorted(out.values(), key=lambda r: (-r.last_seen, r.protocol.value, r.port))[:room]
        out = {r.port_key: r for r in keep}
    for key in seen_set:
        old = listeners.get(key)
        first = old.first_seen if old is not None and old.first_seen <= now else now
        executable, unit = (identities or {}).get(key) or ((old.executable, old.unit) if old else (None, None))
        out[key] = ListenerRecord(key.protocol, key.port, first, now, executable, unit)
    return out


def remembered_ports(listeners: Mapping[RememberedPort, ListenerRecord],
                     remember_after: float = REMEMBER_AFTER) -> frozenset[RememberedPort]:
    """The ports to pass to the detectors (with identity when known): listeners seen for ``remember_after`` s."""
    return frozenset(r.remembered for r in listeners.values() if r.qualifies(remember_after))


def remembered_by_namespace(state: State, remember_after: float = REMEMBER_AFTER) -> dict[str, frozenset[RememberedPort]]:
    """:func:`remembered_ports` of every namespace of ``state``, by key (the host's as :data:`HOST_KEY`)."""
    out = {key: remembered_ports(records, remember_after) for key, records in state.namespaces.items()}
    out[HOST_KEY] = remembered_ports(state.listeners, remember_after)
    return out


#: What one namespace's scan saw: its listeners, and their identities when known.
Seen = tuple[Iterable[RememberedPort], Mapping[RememberedPort, Identity]]


def update_namespace_listeners(
    state: State,
    seen: Mapping[str, Seen],
    now: float,
    *,
    keep: Iterable[str] = (),
    remember_after: float = REMEMBER_AFTER,
    ttl: float = LISTENER_TTL,
    limit: int = MAX_NAMESPACES,
) -> tuple[dict[RememberedPort, ListenerRecord], dict[str, dict[RememberedPort, ListenerRecord]]]:
    """The host's and the other namespaces' listener records after a pass at ``now``.

    ``seen`` maps the key of each namespace scanned to what it saw; each gets
    :func:`update_listeners`. A namespace not scanned keeps its records as
    they are when its key is in ``keep`` (it could not be read this pass);
    otherwise (gone, or no longer selected) only those that qualified and
    were seen within ``ttl`` stay, so it is forgotten ``ttl`` after it went.
    At most ``limit`` namespaces besides the host's are kept, the most
    recently seen. Pure; never raises.
    """
    kept = set(keep)
    out: dict[str, dict[RememberedPort, ListenerRecord]] = {}
    for key in {HOST_KEY, *state.namespaces, *seen}:
        old = state.listeners_of(key)
        if key in seen:
            ports, identities = seen[key]
            out[key] = update_listeners(old, ports, now, remember_after=remember_after, ttl=ttl,
                                        identities=identities)
        elif key in kept:
            out[key] = dict(old)
        else:
            out[key] = update_listeners(old, (), now, remember_after=remember_after, ttl=ttl)
    host = out.pop(HOST_KEY)
    others = sorted(((k, v) for k, v in out.items() if v),
                    key=lambda kv: (-max(r.last_seen for r in kv[1].values()), kv[0]))
    return host, dict(others[: max(limit, 0)])


def update_findings(
    records: Mapping[str, FindingRecord],
    findings: Iterable[Finding],
    now: float,
    *,
    history_ttl: float = HISTORY_TTL,
    max_resolved: int = MAX_RESOLVED,
) -> FindingsUpdate:
    """The finding history after a successful scan at ``now`` that reported ``findings``.

    - a finding whose key is active: ``last_seen``, severity and summary updated;
    - a finding whose key is unknown or resolved: a new record
      (``first_seen = last_seen = now``), listed in ``new``;
    - an active record whose key is not reported: ``resolved_at = now``,
      listed in ``resolved``;
    - resolved records older than ``history_ttl`` are dropped, and the
      oldest beyond ``max_resolved``.

    Pure; never raises. Duplicate keys in ``findings`` count once (the first).
    """
    out: dict[str, FindingRecord] = {}
    new: list[Finding] = []
    for f in findings:
        if f.key in out:
            continue
        old = records.get(f.key)
        if old is not None and old.active:
            out[f.key] = replace(old, kind=f.kind, severity=f.severity, summary=f.summary,
                                 last_seen=max(now, old.last_seen))
        else:
            out[f.key] = FindingRecord(f.key, f.kind, f.severity, f.summary, now, now, None)
            new.append(f)
    resolved: list[FindingRecord] = []
    kept_resolved: list[FindingRecord] = []
    for key, rec in records.items():
        if key in out:
            continue
        if rec.active:
            done = replace(rec, resolved_at=now)
            resolved.append(done)
            kept_resolved.append(done)
        elif rec.resolved_at is not None and now - rec.resolved_at <= history_ttl:
            kept_resolved.append(rec)
    kept_resolved.sort(key=lambda r: (-(r.resolved_at or 0.0), r.key))
    for rec in kept_resolved[: max(max_resolved, 0)]:
        out[rec.key] = rec
    return FindingsUpdate(out, tuple(new), tuple(sorted(resolved, key=lambda r: r.key)))


def persistent(state: State, remember_after: float = REMEMBER_AFTER) -> State:
    """The part of ``state`` that is written: listeners that qualified, every finding record."""
    def qualified(records: Mapping[RememberedPort, ListenerRecord]) -> dict[RememberedPort, ListenerRecord]:
        return {k: r for k, r in records.items() if r.qualifies(remember_after)}

    namespaces = {key: q for key, records in state.namespaces.items() if (q := qualified(records))}
    return State(listeners=qualified(state.listeners), findings=dict(state.findings), namespaces=namespaces)


def _structure(state: State) -> tuple[frozenset[tuple[str, RememberedPort]], dict[str, tuple[str, str, float | None]]]:
    """What a save must never wait for: which listeners are remembered, each finding's kind, severity, resolution."""
    listeners = {(HOST_KEY, p) for p in state.listeners}
    listeners.update((key, p) for key, records in state.namespaces.items() for p in records)
    return (
        frozenset(listeners),
        {k: (r.kind.value, r.severity.value, r.resolved_at) for k, r in state.findings.items()},
    )


def needs_save(saved: State | None, current: State, saved_at: float | None, now: float,
               resolution: float = SAVE_RESOLUTION) -> bool:
    """Whether ``current`` must be written, given what was written last (``saved`` at ``saved_at``).

    Both states are persistent views (:func:`persistent`). True when nothing
    was written yet (``saved`` None), when the structure differs (listeners
    remembered or forgotten; findings new, resolved, dropped, or of another
    kind or severity), or when anything else differs and ``resolution``
    seconds have passed since the last write. Pure.
    """
    if saved is None or saved_at is None:
        return True
    if _structure(saved) != _structure(current):
        return True
    return saved != current and (now - saved_at >= resolution or now < saved_at)


