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

    Listeners are remembered per network namespace: the top-level
    ``listeners`` list is the host namespace's (as in every file written
    before namespaces, which therefore still load: their listeners are the
    host's), ``namespace_listeners`` maps another namespace's key to its
    list. A namespace that is gone (or no longer selected) keeps its
    remembered listeners for :data:`LISTENER_TTL`; one that could not be read
    in a pass keeps them as they were. At most :data:`MAX_NAMESPACES`
    namespaces besides the host's are kept.

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

The records and update rules live in :mod:`portwatch.daemon.records`
(re-exported here): pure functions that take ``now`` (:func:`update_listeners`,
:func:`update_namespace_listeners`, :func:`update_findings`,
:func:`needs_save`), like :func:`to_document` and :func:`from_document`, so
they can be tested as tables.
:class:`StateStore` does the file I/O: JSON with a ``version``, written
atomically (temporary file, ``fsync``, ``rename``, ``fsync`` of the
directory), only when the state changed. Changes of only ``last_seen`` or a
summary's wording are written at most every :data:`SAVE_RESOLUTION` seconds
(the file is for restarts, a few minutes of precision are enough); anything
else (a listener remembered or forgotten, a finding new, resolved, or of
another severity) is written after the scan that made it. A missing or
corrupt file is logged and replaced, never fatal; a directory that cannot be
written is logged once per distinct error and the daemon goes on in memory.

May import the standard library, :mod:`portwatch.model`, :mod:`portwatch.jsonfile`,
:mod:`portwatch.daemon.records` and the field readers of
:mod:`portwatch.alerts.notification` (``number_field``, ``text_field``: the
alert store's files are read with the same checks).
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from portwatch import __version__
from portwatch.alerts.notification import number_field, text_field
from portwatch.daemon.records import (
    HISTORY_TTL,
    HOST_KEY,
    LISTENER_TTL,
    MAX_LISTENERS,
    MAX_NAMESPACES,
    MAX_RESOLVED,
    REMEMBER_AFTER,
    SAVE_RESOLUTION,
    FindingRecord,
    FindingsUpdate,
    ListenerRecord,
    State,
    needs_save,
    persistent,
    remembered_by_namespace,
    remembered_ports,
    update_findings,
    update_listeners,
    update_namespace_listeners,
)
from portwatch.jsonfile import parse_entries, problems_text, read_document, write_atomic
from portwatch.model import Kind, Protocol, RememberedPort, Severity
from portwatch.model.snapshot import listener_identities
from portwatch.model.text import os_error_text
from portwatch.model.values import brief

__all__ = [
    "FindingRecord", "FindingsUpdate", "HISTORY_TTL", "HOST_KEY", "LISTENER_TTL", "ListenerRecord",
    "MAX_LISTENERS", "MAX_NAMESPACES", "MAX_RESOLVED", "REMEMBER_AFTER", "SAVE_RESOLUTION", "STATE_FILE",
    "STATE_VERSION", "State", "StateError", "StateStore", "from_document", "listener_identities",
    "needs_save", "persistent", "remembered_by_namespace", "remembered_ports", "to_document",
    "update_findings", "update_listeners", "update_namespace_listeners",
]

log = logging.getLogger("portwatch.state")

STATE_FILE = "state.json"
STATE_VERSION = 1
#: A state file larger than this is not read (it is treated as corrupt).
MAX_FILE_SIZE = 32 * 1024 * 1024


class StateError(ValueError):
    """A state document that cannot be used; the message says why."""


# --------------------------------------------------------------------------- JSON document


def to_document(state: State, now: float) -> dict[str, Any]:
    """The JSON-ready document of ``state`` (a persistent view), written at ``now``. Sorted, so stable.

    The other namespaces' listeners go under ``namespace_listeners`` (key ->
    list), only when there are some: a file of a host-only daemon is the
    same as before namespaces, and an older portwatch reading a newer file
    ignores that key (it keeps the host's listeners).
    """
    doc: dict[str, Any] = {
        "version": STATE_VERSION,
        "written_by": f"portwatch {__version__}",
        "saved_at": now,
        "listeners": _listener_entries(state.listeners),
        "findings": [
            {"key": r.key, "kind": r.kind.value, "severity": r.severity.value, "summary": r.summary,
             "first_seen": r.first_seen, "last_seen": r.last_seen, "resolved_at": r.resolved_at}
            for r in sorted(state.findings.values(), key=lambda r: r.key)
        ],
    }
    if state.namespaces:
        doc["namespace_listeners"] = {key: _listener_entries(records)
                                      for key, records in sorted(state.namespaces.items())}
    return doc


def _listener_entries(records: Mapping[Any, ListenerRecord]) -> list[dict[str, Any]]:
    return [_listener_entry(r) for r in sorted(records.values(), key=lambda r: (r.protocol.value, r.port))]


def _listener_entry(r: ListenerRecord) -> dict[str, Any]:
    identity = {"executable": r.executable, "unit": r.unit}
    return {"protocol": r.protocol.value, "port": r.port, "first_seen": r.first_seen, "last_seen": r.last_seen,
            **{k: v for k, v in identity.items() if v is not None}}


def _bad(message: str, value: object) -> StateError:
    """The error of a bad field: its message and the value, shown briefly."""
    return StateError(f"{message}: {brief(value)}")


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
    first, last = number_field(entry, "first_seen", error=_bad), number_field(entry, "last_seen", error=_bad)
    return ListenerRecord(protocol, port, first, last, text_field(entry, "executable", optional=True, error=_bad),
                          text_field(entry, "unit", optional=True, error=_bad))


def _finding(entry: object) -> FindingRecord:
    if not isinstance(entry, dict):
        raise StateError(f"not an object: {brief(entry)}")
    key, summary = text_field(entry, "key", error=_bad), entry.get("summary")
    if not isinstance(summary, str):
        raise StateError(f"summary of {key} is not a string")
    try:
        kind = Kind(entry.get("kind"))
        severity = Severity(entry.get("severity"))
    except ValueError as exc:
        raise StateError(f"{key}: {exc}") from None
    first, last = number_field(entry, "first_seen", error=_bad), number_field(entry, "last_seen", error=_bad)
    return FindingRecord(key, kind, severity, summary, first, last,
                         number_field(entry, "resolved_at", optional=True, error=_bad))


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
    raw_namespaces = doc.get("namespace_listeners", {})
    namespaces: dict[str, dict[RememberedPort, ListenerRecord]] = {}
    if not isinstance(raw_namespaces, dict):
        problems.append(f"namespace_listeners: not an object: {brief(raw_namespaces)}")
        raw_namespaces = {}
    for key, entries in raw_namespaces.items():
        where = f"namespace_listeners[{brief(key)}]"
        if not key or key == HOST_KEY or not isinstance(entries, list):
            problems.append(f"{where}: not a namespace key with a list of listeners")
            continue
        records = {rec.port_key: rec for rec in parse_entries(entries, where, _listener, problems, StateError)}
        if records:
            namespaces[key] = records
    return State(listeners, findings, namespaces), problems


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

