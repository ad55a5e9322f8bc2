"""State: the update rules as tables, the JSON document, and the file (corrupt, missing, unwritable)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from portwatch import detect
from portwatch.model import Finding, Kind, Protocol, RememberedPort, Severity
from tests.builders import listen, proc, snap
from portwatch.daemon.state import (
    STATE_VERSION,
    FindingRecord,
    ListenerRecord,
    State,
    StateError,
    StateStore,
    from_document,
    listener_identities,
    needs_save,
    persistent,
    remembered_ports,
    to_document,
    update_findings,
    update_listeners,
)

T = 1_700_000_000.0
DAY = 86400.0
TCP, UDP = Protocol.TCP, Protocol.UDP


def rp(port: int, proto: Protocol = TCP) -> RememberedPort:
    return RememberedPort(proto, port)


def lr(port: int, first: float, last: float, proto: Protocol = TCP) -> ListenerRecord:
    return ListenerRecord(proto, port, first, last)


def finding(key: str, severity: Severity = Severity.WARNING, summary: str = "s",
            kind: Kind = Kind.LISTENER_IN_EPHEMERAL_RANGE) -> Finding:
    return Finding(kind=kind, severity=severity, key=key, summary=summary)


def fr(key: str, first: float, last: float, resolved: float | None = None,
       severity: Severity = Severity.WARNING, summary: str = "s") -> FindingRecord:
    return FindingRecord(key, Kind.LISTENER_IN_EPHEMERAL_RANGE, severity, summary, first, last, resolved)


# ----------------------------------------------------------------- listeners

@pytest.mark.parametrize("name, before, seen, now, after", [
    ("new listener starts its record",
     {}, [rp(8080)], T, {rp(8080): lr(8080, T, T)}),
    ("seen again: last_seen moves, first_seen stays",
     {rp(8080): lr(8080, T, T)}, [rp(8080)], T + 15, {rp(8080): lr(8080, T, T + 15)}),
    ("unseen before qualifying: dropped (a bind(0) moment, not a service)",
     {rp(40123): lr(40123, T, T + 60)}, [], T + 75, {}),
    ("unseen after qualifying: kept",
     {rp(8080): lr(8080, T, T + 300)}, [], T + 315, {rp(8080): lr(8080, T, T + 300)}),
    ("unseen for exactly the TTL: kept",
     {rp(8080): lr(8080, T, T + 300)}, [], T + 300 + 7 * DAY, {rp(8080): lr(8080, T, T + 300)}),
    ("unseen for longer than the TTL: forgotten",
     {rp(8080): lr(8080, T, T + 300)}, [], T + 301 + 7 * DAY, {}),
    ("protocols are separate ports",
     {rp(53, UDP): lr(53, T, T + 400, UDP)}, [rp(53)], T + 500,
     {rp(53, UDP): lr(53, T, T + 400, UDP), rp(53): lr(53, T + 500, T + 500)}),
    ("clock went back: first_seen is not in the future",
     {rp(8080): lr(8080, T + 100, T + 100)}, [rp(8080)], T, {rp(8080): lr(8080, T, T)}),
])
def test_listener_records_after_a_scan(name: str, before: dict[RememberedPort, ListenerRecord], seen: list[RememberedPort],
                          now: float, after: dict[RememberedPort, ListenerRecord]) -> None:
    assert update_listeners(before, seen, now) == after, name


def test_update_listeners_limit_keeps_seen_and_most_recent() -> None:
    before = {rp(p): lr(p, T, T + 300 + p) for p in range(1, 6)}  # port 5 most recently seen
    after = update_listeners(before, [rp(100), rp(101)], T + 1000, limit=4)
    assert set(after) == {rp(100), rp(101), rp(5), rp(4)}


@pytest.mark.parametrize("records, remember_after, expected", [
    ({rp(1): lr(1, T, T), rp(2): lr(2, T, T + 300)}, 300.0, {rp(2)}),
    ({rp(1): lr(1, T, T)}, 0.0, {rp(1)}),
    ({}, 300.0, set()),
])
def test_only_listeners_seen_long_enough_are_remembered(records: dict[RememberedPort, ListenerRecord], remember_after: float,
                          expected: set[RememberedPort]) -> None:
    assert remembered_ports(records, remember_after) == expected


# ----------------------------------------------------------------- findings

@pytest.mark.parametrize("name, before, findings, now, after, new, resolved", [
    ("first sighting is new",
     {}, [finding("a")], T, {"a": fr("a", T, T)}, ["a"], []),
    ("still active: updated, not new",
     {"a": fr("a", T, T)}, [finding("a", Severity.CRITICAL, "worse")], T + 15,
     {"a": fr("a", T, T + 15, severity=Severity.CRITICAL, summary="worse")}, [], []),
    ("gone: resolved now, last_seen kept",
     {"a": fr("a", T, T + 15)}, [], T + 30, {"a": fr("a", T, T + 15, T + 30)}, [], ["a"]),
    ("back after resolution: a new episode",
     {"a": fr("a", T, T + 15, T + 30)}, [finding("a")], T + 45, {"a": fr("a", T + 45, T + 45)}, ["a"], []),
    ("resolved stays resolved (not resolved again)",
     {"a": fr("a", T, T + 15, T + 30)}, [], T + 45, {"a": fr("a", T, T + 15, T + 30)}, [], []),
    ("resolved kept for the history TTL",
     {"a": fr("a", T, T, T)}, [], T + 30 * DAY, {"a": fr("a", T, T, T)}, [], []),
    ("resolved dropped after the history TTL",
     {"a": fr("a", T, T, T)}, [], T + 30 * DAY + 1, {}, [], []),
    ("duplicate keys in one scan count once",
     {}, [finding("a"), finding("a", summary="dup")], T, {"a": fr("a", T, T)}, ["a"], []),
    ("mixed",
     {"a": fr("a", T, T), "b": fr("b", T, T)}, [finding("b"), finding("c")], T + 15,
     {"a": fr("a", T, T, T + 15), "b": fr("b", T, T + 15), "c": fr("c", T + 15, T + 15)}, ["c"], ["a"]),
])
def test_finding_history_after_a_scan(name: str, before: dict[str, FindingRecord], findings: list[Finding], now: float,
                         after: dict[str, FindingRecord], new: list[str], resolved: list[str]) -> None:
    upd = update_findings(before, findings, now)
    assert dict(upd.records) == after, name
    assert [f.key for f in upd.new] == new, name
    assert [r.key for r in upd.resolved] == resolved, name


def test_update_findings_caps_resolved_oldest_first() -> None:
    before = {f"k{i}": fr(f"k{i}", T, T, T + i) for i in range(5)}
    upd = update_findings(before, [finding("live")], T + 10, max_resolved=2)
    assert set(upd.records) == {"live", "k4", "k3"}


# ----------------------------------------------------------------- when to write

BASE = State({rp(8080): lr(8080, T, T + 300)}, {"a": fr("a", T, T + 300)})


@pytest.mark.parametrize("name, saved, current, saved_at, now, expected", [
    ("nothing written yet", None, BASE, None, T, True),
    ("no change", BASE, BASE, T, T + 1, False),
    ("only last_seen moved, soon after the last write",
     BASE, State({rp(8080): lr(8080, T, T + 315)}, {"a": fr("a", T, T + 315)}), T + 300, T + 315, False),
    ("only last_seen moved, resolution passed",
     BASE, State({rp(8080): lr(8080, T, T + 900)}, {"a": fr("a", T, T + 900)}), T + 300, T + 900, True),
    ("summary reworded only: waits like last_seen",
     BASE, State(BASE.listeners, {"a": fr("a", T, T + 300, summary="other")}), T + 300, T + 315, False),
    ("new finding: at once", BASE, State(BASE.listeners, {**BASE.findings, "b": fr("b", T, T)}), T, T + 1, True),
    ("resolved finding: at once", BASE, State(BASE.listeners, {"a": fr("a", T, T + 300, T + 315)}), T, T + 1, True),
    ("severity changed: at once",
     BASE, State(BASE.listeners, {"a": fr("a", T, T + 300, severity=Severity.CRITICAL)}), T, T + 1, True),
    ("listener forgotten: at once", BASE, State({}, BASE.findings), T, T + 1, True),
    ("clock went back", BASE, State(BASE.listeners, {"a": fr("a", T, T + 301)}), T + 300, T, True),
])
def test_save_needed_on_structure_change_or_after_the_resolution(name: str, saved: State | None, current: State, saved_at: float | None, now: float,
                    expected: bool) -> None:
    assert needs_save(saved, current, saved_at, now) is expected, name


def test_persistent_view_drops_unqualified_listeners() -> None:
    state = State({rp(1): lr(1, T, T), rp(2): lr(2, T, T + 300)}, {"a": fr("a", T, T)})
    assert persistent(state) == State({rp(2): lr(2, T, T + 300)}, {"a": fr("a", T, T)})


# ----------------------------------------------------------------- document

def test_state_survives_a_document_round_trip() -> None:
    state = State({rp(8080): lr(8080, T, T + 300), rp(53, UDP): lr(53, T, T + 400, UDP)},
                  {"a": fr("a", T, T + 300), "b": fr("b", T, T, T + 15)})
    doc = json.loads(json.dumps(to_document(state, T + 500)))
    assert doc["version"] == STATE_VERSION
    back, problems = from_document(doc)
    assert back == state and problems == []


@pytest.mark.parametrize("doc, message", [
    ([], "not a JSON object"),
    ({}, "unsupported version None"),
    ({"version": 99, "listeners": [], "findings": []}, "unsupported version 99"),
    ({"version": STATE_VERSION, "listeners": {}, "findings": []}, "must be lists"),
])
def test_unusable_document_is_refused_saying_why(doc: object, message: str) -> None:
    with pytest.raises(StateError, match=message):
        from_document(doc)


def test_malformed_entries_are_skipped_and_described() -> None:
    good = to_document(State({rp(8080): lr(8080, T, T + 300)}, {"a": fr("a", T, T)}), T)
    good["listeners"] += [{"protocol": "sctp", "port": 1, "first_seen": T, "last_seen": T},
                          {"protocol": "tcp", "port": 70000, "first_seen": T, "last_seen": T},
                          "garbage"]
    good["findings"] += [{"key": "x", "kind": "no_such_kind", "severity": "warning", "summary": "",
                          "first_seen": T, "last_seen": T, "resolved_at": None},
                         {"key": "y", "kind": "self_connect", "severity": "warning", "summary": "",
                          "first_seen": "yesterday", "last_seen": T}]
    state, problems = from_document(good)
    assert set(state.listeners) == {rp(8080)} and set(state.findings) == {"a"}
    assert len(problems) == 5
    assert any("sctp" in p for p in problems) and any("first_seen" in p for p in problems)


# ----------------------------------------------------------------- listener identity

def test_listener_identity_round_trips_and_an_old_document_still_loads() -> None:
    state = State({rp(8080): ListenerRecord(TCP, 8080, T, T + 300, "/usr/sbin/nginx", "nginx.service"),
                   rp(8081): ListenerRecord(TCP, 8081, T, T + 300, "python3", None),
                   rp(53, UDP): lr(53, T, T + 400, UDP)}, {})
    doc = json.loads(json.dumps(to_document(state, T + 500)))
    entries = {e["port"]: e for e in doc["listeners"]}
    assert entries[8080]["executable"] == "/usr/sbin/nginx" and entries[8080]["unit"] == "nginx.service"
    assert "unit" not in entries[8081]
    assert "executable" not in entries[53] and "unit" not in entries[53]  # unknown: written as before
    back, problems = from_document(doc)
    assert back == state and problems == []
    # a document written before identities existed loads, with identities unknown
    old = {"version": STATE_VERSION, "listeners": [{"protocol": "tcp", "port": 8080, "first_seen": T,
                                                    "last_seen": T + 300}], "findings": []}
    back, problems = from_document(old)
    assert back.listeners == {rp(8080): lr(8080, T, T + 300)} and problems == []
    assert remembered_ports(back.listeners) == {rp(8080)}


def test_malformed_identity_skips_the_entry() -> None:
    doc = {"version": STATE_VERSION, "findings": [],
           "listeners": [{"protocol": "tcp", "port": 8080, "first_seen": T, "last_seen": T, "executable": 7}]}
    state, problems = from_document(doc)
    assert state.listeners == {} and len(problems) == 1 and "executable" in problems[0]


def test_identity_is_kept_remembered_and_replaced_by_a_new_one() -> None:
    first = update_listeners({}, [rp(8080)], T, identities={rp(8080): ("nginx", "nginx.service")})
    assert first[rp(8080)].executable == "nginx" and first[rp(8080)].unit == "nginx.service"
    # a scan that did not learn the owner keeps the identity; the key stays (protocol, port)
    kept = update_listeners(first, [rp(8080)], T + 300)
    assert set(kept) == {rp(8080)} and (kept[rp(8080)].executable, kept[rp(8080)].unit) == ("nginx", "nginx.service")
    assert remembered_ports(kept) == {RememberedPort(TCP, 8080, "nginx", "nginx.service")}
    # gone from the scan but remembered: the detectors get the identity
    later = update_listeners(kept, [], T + 400)
    assert remembered_ports(later) == {RememberedPort(TCP, 8080, "nginx", "nginx.service")}
    replaced = update_listeners(kept, [rp(8080)], T + 500, identities={rp(8080): ("caddy", None)})
    assert (replaced[rp(8080)].executable, replaced[rp(8080)].unit) == ("caddy", None)


def test_listener_identities_come_from_the_owners_the_snapshot_knows() -> None:
    a, b = listen("0.0.0.0:8080"), listen("0.0.0.0:8081")
    s = snap([a, b], owners={a: 50}, processes=[proc(50, "nginx", unit="nginx.service")])
    assert listener_identities(s, detect.index(s).listening) == {rp(8080): ("nginx", "nginx.service")}


# ----------------------------------------------------------------- the file

class Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.infos: list[str] = []

    def store(self, directory: Path, **kw: float) -> StateStore:
        return StateStore(directory, warn=self.warnings.append, info=self.infos.append, **kw)


ACTIVE = State({rp(8080): lr(8080, T, T + 300)}, {"a": fr("a", T, T + 300)})


def test_missing_state_file_starts_empty_and_is_then_saved(tmp_path: Path) -> None:
    log = Log()
    store = log.store(tmp_path / "state")
    assert store.load() == State()
    assert log.infos and "no state file" in log.infos[0] and not log.warnings
    assert store.save(ACTIVE, T + 300)
    assert store.path.exists()
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"]  # no temporary file left
    assert log.store(tmp_path / "state").load() == ACTIVE


@pytest.mark.parametrize("garbage", [b"", b"{not json", b"\xff\xfe\x00", b"[1, 2]",
                                     b'{"version": 0}', json.dumps({"version": 2}).encode()])
def test_garbage_file_is_logged_and_replaced(tmp_path: Path, garbage: bytes) -> None:
    log = Log()
    store = log.store(tmp_path)
    store.path.write_bytes(garbage)
    assert store.load() == State()
    assert len(log.warnings) == 1 and "corrupt" in log.warnings[0] and str(store.path) in log.warnings[0]
    assert store.save(State(), T)  # even an empty state replaces the garbage
    assert json.loads(store.path.read_text())["version"] == STATE_VERSION


def test_unreadable_state_path_is_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()  # a directory where the file should be
    log = Log()
    assert log.store(tmp_path).load() == State()
    assert log.warnings and "cannot read" in log.warnings[0]


def test_unwritable_directory_is_logged_once_per_distinct_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    log = Log()
    store = log.store(blocker / "state")  # mkdir fails: ENOTDIR (works as root too, unlike chmod)
    assert not store.save(ACTIVE, T)
    assert not store.save(ACTIVE, T + 15)
    assert not store.save(State(), T + 30)
    assert len(log.warnings) == 1 and "Not a directory" in log.warnings[0]
    assert store.last_error is not None
    # a different error is reported again
    store.directory = tmp_path / "dir-as-file"
    store.directory.mkdir()
    (store.directory / "state.json").mkdir()
    (store.directory / "state.json" / "x").write_text("keeps rename from replacing it")
    assert not store.save(ACTIVE, T + 45)
    assert len(log.warnings) == 2
    # the problem goes away: saved, and said so
    store.directory = tmp_path / "ok"
    assert store.save(ACTIVE, T + 60)
    assert store.last_error is None and any("written again" in m for m in log.infos)
    assert not [p for p in store.directory.iterdir() if p.name != "state.json"]


def test_saves_only_when_changed(tmp_path: Path) -> None:
    log = Log()
    store = log.store(tmp_path)
    assert store.save(ACTIVE, T + 300)
    first = store.path.stat().st_mtime_ns, store.path.stat().st_ino
    moved = State({rp(8080): lr(8080, T, T + 315)}, {"a": fr("a", T, T + 315)})
    assert store.save(moved, T + 315)  # last_seen only: not written yet
    assert (store.path.stat().st_mtime_ns, store.path.stat().st_ino) == first
    assert store.save(moved, T + 316, force=True)  # shutdown: written
    assert json.loads(store.path.read_text())["findings"][0]["last_seen"] == T + 315
    unqualified = State({**moved.listeners, rp(9): lr(9, T + 316, T + 316)}, moved.findings)
    ino = store.path.stat().st_ino
    assert store.save(unqualified, T + 330, force=True)  # nothing persistent changed
    assert store.path.stat().st_ino == ino


def test_loaded_state_keeps_history_semantics(tmp_path: Path) -> None:
    """A finding active at shutdown and reported by the first scan after a restart is not new."""
    log = Log()
    log.store(tmp_path).save(ACTIVE, T + 300)
    state = log.store(tmp_path).load()
    upd = update_findings(state.findings, [finding("a"), finding("b")], T + 400)
    assert [f.key for f in upd.new] == ["b"]
    assert remembered_ports(state.listeners) == {rp(8080)}


def test_directory_is_created_private(tmp_path: Path) -> None:
    store = Log().store(tmp_path / "a" / "b")
    assert store.save(ACTIVE, T)
    assert os.stat(tmp_path / "a" / "b").st_mode & 0o777 == 0o700
