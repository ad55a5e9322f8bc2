"""The daemon's state directory: remembered listeners and finding history, across restarts.

What is kept (in ``<state_directory>/state.json``, see :data:`STATE_FILE`):

Remembered listeners
    The (protocol, port) of listeners seen by earlier scans, with when they
    were first and last seen. ``port_taken`` uses them as service ports: a
    port a service listened on, held now by an outgoing connection while the
    service is down. A listener is remembered once it has been seen for at
    least :data:`REMEMBER_AFTER` (five minutes: programs that ``bind(0)`` to a
    random port for a moment are not services), and forgotten after
    :data:`LISTENER_TTL` (seven days) without being seen, so a removed service
    or a transient listener does not haunt ``port_taken`` forever. At most
    :data:`MAX_LISTENERS` are kept (the least recently seen go first). When
    the scan knew the listener's owner, its identity (executable and systemd
    unit, see :func:`listener_identities`) is kept with it, so that
    ``port_taken`` can tell the service's own draining connections from a
    foreign holder; files written without it still load.

Finding history
    Per finding key: kind, severity, summary, first seen, last seen, and when
    it was resolved (``None`` while active). A finding is *new* when its key
    was not active in the previous scan (never seen, or resolved since); it is
    *resolved* by the first scan that does not report it (a failed scan
    resolves nothing). Resolved findings are kept for :data:`HISTORY_TTL`
    (30 days), at most :data:`MAX_RESOLVED` of them (the oldest go first); a
    finding that comes back after being resolved starts a new episode (new
    ``first_seen``). Findings still active when the daemon stops stay active
    in the file: if the first scan after a restart reports them, they are not
    new; if it does not, they are resolved at that scan's time.

The update rules are pure functions that take ``now`` (:func:`update_listeners`,
:func:`update_findings`, :func:`needs_save`, :func:`to_document`,
:func:`from_document`) so they can be tested as tables.
:class:`StateStore` does the file I/O: JSON with a ``version``, written
atomically (temporary file, ``fsync``, ``rename``, ``fsync`` of the
directory), only when the state changed. Changes of only ``last_seen`` or a
summary's wording are written at most every :data:`SAVE_RESOLUTION` seconds
(the file is for restarts, a few minutes of precision are enough); anything
else (a listener remembered or forgotten, a finding new, resolved, or of
another severity) is written after the scan that made it. A missing or
corrupt file is logged and replaced, never fatal; a directory that cannot be
written is logged once per distinct error and the daemon goes on in memory.

May import the standard library, :mod:`portwatch.model` and :mod:`portwatch.jsonfile`.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from portwatch import __version__
from portwatch.jsonfile import parse_entries, problems_text, read_document, write_atomic
from portwatch.model import Finding, Kind, Protocol, RememberedPort, Severity
from portwatch.model.snapshot import Identity, listener_identities
from portwatch.model.text import os_error_text
from portwatch.model.values import brief, finite_number

__all__ = [
    "FindingRecord", "FindingsUpdate", "HISTORY_TTL", "LISTENER_TTL", "ListenerRecord",
    "MAX_LISTENERS", "MAX_RESOLVED", "REMEMBER_AFTER", "SAVE_RESOLUTION", "STATE_FILE",
    "STATE_VERSION", "State", "StateError", "StateStore", "from_document", "listener_identities",
    "needs_save", "persistent", "remembered_ports", "to_document", "update_findings",
    "update_listeners",
]

log = logging.getLogger("portwatch.state")

STATE_FILE = "state.json"
STATE_VERSION = 1
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
#: A state file larger than this is not read (it is treated as corrupt).
MAX_FILE_SIZE = 32 * 1024 * 1024


class StateError(ValueError):
    """A state document that cannot be used; the message says why."""


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
    """Everything the daemon remembers. Immutable; the update functions return new values."""

    listeners: Mapping[RememberedPort, ListenerRecord] = field(default_factory=dict)
    findings: Mapping[str, FindingRecord] = field(default_factory=dict)

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
    return State(
        listeners={k: r for k, r in state.listeners.items() if r.qualifies(remember_after)},
        findings=dict(state.findings),
    )


def _structure(state: State) -> tuple[frozenset[RememberedPort], dict[str, tuple[str, str, float | None]]]:
    """What a save must never wait for: which listeners are remembered, each finding's kind, severity, resolution."""
    return (
        frozenset(state.listeners),
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


# --------------------------------------------------------------------------- JSON document


def to_document(state: State, now: float) -> dict[str, Any]:
    """The JSON-ready document of ``state`` (a persistent view), written at ``now``. Sorted, so stable."""
    return {
        "version": STATE_VERSION,
        "written_by": f"portwatch {__version__}",
        "saved_at": now,
        "listeners": [_listener_entry(r)
                      for r in sorted(state.listeners.values(), key=lambda r: (r.protocol.value, r.port))],
        "findings": [
            {"key": r.key, "kind": r.kind.value, "severity": r.severity.value, "summary": r.summary,
             "first_seen": r.first_seen, "last_seen": r.last_seen, "resolved_at": r.resolved_at}
            for r in sorted(state.findings.values(), key=lambda r: r.key)
        ],
    }


def _listener_entry(r: ListenerRecord) -> dict[str, Any]:
    identity = {"executable": r.executable, "unit": r.unit}
    return {"protocol": r.protocol.value, "port": r.port, "first_seen": r.first_seen, "last_seen": r.last_seen,
            **{k: v for k, v in identity.items() if v is not None}}


def _optional_text(entry: Mapping[str, Any], name: str) -> str | None:
    value = entry.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise StateError(f"{name} is not a non-empty string: {brief(value)}")
    return value


def _time(entry: Mapping[str, Any], name: str, optional: bool = False) -> float | None:
    value = entry.get(name)
    if value is None and optional:
        return None
    number = finite_number(value)
    if number is None:
        raise StateError(f"{name} is not a finite number: {brief(value)}")
    return number


def _listener(entry: object) -> ListenerRecord:
    if not isinstance(entry, dict):
        raise StateError(f"not an object: {brief(entry)}")
    port = entry.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise StateError(f"port is not 1-65535: {brief(port)}")
    try:
        protocol = Protocol(entry.get("protocol"))
    except ValueError:
        raise StateError(f"unknown protocol {brief(entry.get('protocol'))}") from None
    first, last = _time(entry, "first_seen"), _time(entry, "last_seen")
    assert first is not None and last is not None
    return ListenerRecord(protocol, port, first, last, _optional_text(entry, "executable"), _optional_text(entry, "unit"))


def _finding(entry: object) -> FindingRecord:
    if not isinstance(entry, dict):
        raise StateError(f"not an object: {brief(entry)}")
    key, summary = entry.get("key"), entry.get("summary")
    if not isinstance(key, str) or not key:
        raise StateError(f"key is not a non-empty string: {brief(key)}")
    if not isinstance(summary, str):
        raise StateError(f"summary of {key} is not a string")
    try:
        kind = Kind(entry.get("kind"))
        severity = Severity(entry.get("severity"))
    except ValueError as exc:
        raise StateError(f"{key}: {exc}") from None
    first, last = _time(entry, "first_seen"), _time(entry, "last_seen")
    assert first is not None and last is not None
    return FindingRecord(key, kind, severity, summary, first, last, _time(entry, "resolved_at", optional=True))


def from_document(doc: object) -> tuple[State, list[str]]:
    """The state a JSON document holds, and the problems of entries that were skipped.

    Raises :class:`StateError` when the document as a whole is unusable
    (not an object, missing or unsupported ``version``, lists missing).
    A malformed entry is skipped and described in the returned list.
    """
    if not isinstance(doc, dict):
        raise StateError("the top level is not a JSON object")
    version = doc.get("version")
    if version != STATE_VERSION:
        raise StateError(f"unsupported version {brief(version)} (this portwatch reads version {STATE_VERSION})")
    problems: list[str] = []
    raw_listeners, raw_findings = doc.get("listeners"), doc.get("findings")
    if not isinstance(raw_listeners, list) or not isinstance(raw_findings, list):
        raise StateError("'listeners' and 'findings' must be lists")
    listeners = {rec.port_key: rec for rec in parse_entries(raw_listeners, "listeners", _listener, problems, StateError)}
    findings = {rec.key: rec for rec in parse_entries(raw_findings, "findings", _finding, problems, StateError)}
    return State(listeners, findings), problems


# --------------------------------------------------------------------------- the file


class StateStore:
    """Reads and writes ``state.json`` in one directory. Never raises from :meth:`load` or :meth:`save`.

    ``warn`` receives each problem worth a person's attention (default: the
    ``portwatch.state`` logger at warning level); it is called once per
    distinct error while saving keeps failing.
    """

    def __init__(
        self,
        directory: Path,
        *,
        remember_after: float = REMEMBER_AFTER,
        resolution: float = SAVE_RESOLUTION,
        warn: Callable[[str], None] = log.warning,
        info: Callable[[str], None] = log.info,
    ) -> None:
        """Take the state directory (created on first save if missing), the listener
        qualification age, the save resolution (see :func:`needs_save`), and the
        functions that report problems and events."""
        self.directory = Path(directory)
        self.remember_after = remember_after
        self.resolution = resolution
        self._warn = warn
        self._info = info
        self._saved: State | None = None
        self._saved_at: float | None = None
        self._last_error: str | None = None

    @property
    def path(self) -> Path:
        """The state file."""
        return self.directory / STATE_FILE

    @property
    def last_error(self) -> str | None:
        """The error of the latest failed save, None after a successful one."""
        return self._last_error

    def load(self) -> State:
        """The state in the file; an empty state when it is missing or unusable.

        A missing file is reported through ``info``; an unreadable or corrupt
        one through ``warn`` (it is replaced by the next save). Never raises.
        """
        path = self.path
        try:
            doc = read_document(path, MAX_FILE_SIZE)
        except FileNotFoundError:
            self._info(f"no state file {path} yet: starting with no remembered listeners or finding history")
            return State()
        except OSError as exc:
            self._warn(f"cannot read state file {path}: {os_error_text(exc)}; starting with an empty state")
            return State()
        except ValueError as exc:
            self._warn(f"state file {path} is corrupt ({exc}); starting with an empty state, "
                       f"the file will be replaced")
            return State()
        try:
            state, problems = from_document(doc)
        except StateError as exc:
            self._warn(f"state file {path} is corrupt ({exc}); starting with an empty state, "
                       f"the file will be replaced")
            return State()
        if problems:
            self._warn(f"state file {path}: skipped {len(problems)} malformed entries ({problems_text(problems)})")
        else:
            self._saved = persistent(state, self.remember_after)
            self._saved_at = None  # unknown age: the first save after a change writes at once
        return state

    def save(self, state: State, now: float, force: bool = False) -> bool:
        """Write ``state`` if it changed enough (see :func:`needs_save`), or if it changed at all with ``force``.

        Returns True when the file now holds ``state``'s persistent view
        (written now or already), False when writing failed (reported
        through ``warn`` once per distinct error). Never raises.
        """
        view = persistent(state, self.remember_after)
        if self._saved is not None and self._saved == view:
            return True
        if not force and self._last_error is None and not needs_save(
                self._saved, view, self._saved_at, now, self.resolution):
            return True
        try:
            self._write(to_document(view, now))
        except OSError as exc:
            message = f"cannot write state file {self.path}: {os_error_text(exc)}"
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                message += " (is the state directory writable? the unit's StateDirectory= provides one)"
            if message != self._last_error:
                self._warn(message + "; going on without saving state")
            self._last_error = message
            return False
        if self._last_error is not None:
            self._info(f"state file {self.path} written again")
            self._last_error = None
        self._saved = view
        self._saved_at = now
        return True

    def _write(self, document: Mapping[str, Any]) -> None:
        """Write ``document`` atomically (:func:`portwatch.jsonfile.write_atomic`). Raises OSError."""
        write_atomic(self.path, document)

