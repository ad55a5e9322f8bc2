"""Seeded fuzzing: configuration files, state documents and netlink buffers give only documented errors.

Every generator is seeded (hypothesis with ``derandomize=True``, ``random.Random``
with a fixed seed), so a failure reproduces on every run and machine:

- at least 5,000 configuration files, made from ``config/portwatch.yaml`` by
  structural mutations (a value replaced by a huge number, a deep nesting, a
  control character, a wrong type, a key removed or misspelt), text mutations
  of its bytes, and special files: ``portwatch check-config`` exits 0 or 2,
  never with a traceback;
- daemon state and alert state documents, mutated from real saved ones:
  ``from_document`` returns or raises ``ValueError``, a load never raises;
- 100,000 netlink receive buffers, mutated from a real sock_diag dump of
  sockets this test makes in its own namespace: ``parse_messages`` returns or
  raises ``NetlinkError``, ``OSError`` or ``SourceUnavailable``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from portwatch.alerts.notification import Notification, Reason, Status
from portwatch.alerts.rules import AlertState
from portwatch.alerts.store import from_document as alerts_from_document
from portwatch.alerts.store import load as alerts_load
from portwatch.alerts.store import to_document as alerts_to_document
from portwatch.cli import main
from portwatch.collect.netlink import SOCK_DIAG_BY_FAMILY, NetlinkError, build_request, dump_ended, parse_messages
from portwatch.daemon.state import FindingRecord, ListenerRecord, State, StateStore
from portwatch.daemon.state import from_document as state_from_document
from portwatch.daemon.state import to_document as state_to_document
from portwatch.jsonfile import MAX_DEPTH, write_atomic
from portwatch.model import Kind, Protocol, RememberedPort, Severity, SourceUnavailable
from tests.netns import NetNS

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (REPO / "config" / "portwatch.yaml").read_text()
EXAMPLE_DATA: Any = yaml.safe_load(EXAMPLE)

FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Capture what the CLI prints (stdout and stderr), for the failure message."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        yield out


def check_config_exit(path: str) -> tuple[int, str]:
    """``portwatch check-config PATH`` in this process: its exit status and what it printed."""
    with quiet() as out:
        try:
            code = main(["check-config", path])
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue()


def assert_documented_exit(path: str) -> None:
    code, printed = check_config_exit(path)
    assert code in (0, 2), f"exit {code}:\n{printed}"
    assert "Traceback" not in printed, printed


# --------------------------------------------------------------------------- configuration

#: Values that once broke the parser or still come close: huge and deep, odd types, control characters.
NASTY_VALUES: list[Any] = [
    None, True, -1, 0, 2**63, 10**400, -(10**5000), 1e308, float("inf"), float("nan"), "", " ",
    "1" + "0" * 400, "1" + "0" * 400 + "s", "15s\x7f", "a\x00b", "\x1b[31m", "٤٠٠٠٠-٤٠١٠٠", "40000-", "-5",
    "::1", "[::1]:9731", "http://user:secret@host/", "/dev/zero", "/", "{{", "*", [], {}, [[[[[[]]]]]],
    {"x": {"y": {"z": 1}}}, ["a"] * 50,
]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path (keys and indexes) to a node of the YAML data, the root first."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


CONFIG_PATHS = list(_paths(EXAMPLE_DATA))


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _mutate(data: Any, path: tuple[Any, ...], action: str, value: Any) -> Any:
    """A copy of ``data`` with the node at ``path`` replaced, removed or given a misspelt key."""
    data = json.loads(json.dumps(data))  # the example is plain data
    if not path:
        return value if action == "replace" else data
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "remove" and isinstance(parent, dict):
        del parent[last]
    elif action == "remove" and isinstance(parent, list):
        parent.pop(last)
    elif action == "misspell" and isinstance(parent, dict):
        parent[f"{last}x"] = parent.pop(last)
    return data


def _write(text: str | bytes) -> str:
    fd, name = tempfile.mkstemp(prefix="pwfuzz-", suffix=".yaml")
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    return name


@settings(FUZZ, max_examples=3000)
@given(path=st.sampled_from(CONFIG_PATHS),
       action=st.sampled_from(["replace", "replace", "replace", "remove", "misspell"]),
       value=st.one_of(st.sampled_from(NASTY_VALUES), st.integers(), st.floats(),
                       st.text(max_size=30), st.integers(1, 1200).map(_deep),
                       st.dictionaries(st.text(max_size=8), st.integers(), max_size=3)))
def test_structurally_mutated_configs_give_exit_0_or_2(path: tuple[Any, ...], action: str, value: Any) -> None:
    data = _mutate(EXAMPLE_DATA, path, action, value)
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except (yaml.YAMLError, RecursionError, ValueError):
        return  # the dumper cannot write it (e.g. an int past 4300 digits): the text cases below cover those
    name = _write(text)
    try:
        assert_documented_exit(name)
    finally:
        os.unlink(name)


@settings(FUZZ, max_examples=2000)
@given(edits=st.lists(st.tuples(st.integers(0, len(EXAMPLE.encode()) - 1),
                                st.sampled_from(["flip", "insert", "delete", "control"]),
                                st.integers(0, 255)), min_size=1, max_size=8))
def test_text_mutated_configs_give_exit_0_or_2(edits: list[tuple[int, str, int]]) -> None:
    raw = bytearray(EXAMPLE.encode())
    for at, how, byte in edits:
        at = min(at, len(raw) - 1)
        if how == "flip":
            raw[at] ^= 1 << (byte % 8)
        elif how == "insert":
            raw.insert(at, byte)
        elif how == "delete":
            del raw[at]
        else:
            raw.insert(at, byte % 0x20 if byte % 2 else 0x7F)
    name = _write(bytes(raw))
    try:
        assert_documented_exit(name)
    finally:
        os.unlink(name)


@pytest.mark.parametrize("text", [
    "interval: 1" + "0" * 5000 + "\n",  # past Python's int-from-text limit
    "interval: 1" + "0" * 400 + "s\n",
    "thresholds:\n  close_wait: " + "9" * 20000 + "\n",
    "services: " + "[" * 5000 + "]" * 5000 + "\n",
    "interval: 15s\x7f\n",
    "interval: !!set {a, b}\n",
])
def test_huge_and_deep_values_in_config_text_give_exit_2(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, printed = check_config_exit(str(path))
    assert code == 2, printed
    assert "Traceback" not in printed and "sys.set_int_max_str_digits" not in printed, printed


def test_special_files_as_config_give_exit_2(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # a blocking read would hang this test (pytest-timeout ends it)
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero, tmp_path, tmp_path / "missing.yaml"):
        code, printed = check_config_exit(str(path))
        assert code == 2, (path, printed)
        assert str(path) in printed and "Traceback" not in printed


# --------------------------------------------------------------------------- state documents

T = 1_700_000_000.0


def _state_doc() -> Any:
    state = State({RememberedPort(Protocol.TCP, 8080): ListenerRecord(Protocol.TCP, 8080, T, T + 600),
                   RememberedPort(Protocol.UDP, 5353): ListenerRecord(Protocol.UDP, 5353, T, T + 900)},
                  {"a": FindingRecord("a", Kind.LISTENER_IN_EPHEMERAL_RANGE, Severity.WARNING, "a summary",
                                      T, T + 60),
                   "b": FindingRecord("b", Kind.PORT_TAKEN, Severity.CRITICAL, "b", T, T + 60, T + 120)})
    return json.loads(json.dumps(state_to_document(state, T + 1000)))


def _alerts_doc() -> Any:
    note = Notification(id="n1", sink="s", alert_key="r/A", rule="r", status=Status.FIRING,
                        reason=Reason.NEW, severity=Severity.CRITICAL, starts_at=T, created_at=T,
                        host="h", finding={"key": "A", "summary": "x"})
    alert = AlertState("r/A", "r", "A", Severity.CRITICAL, since=T, fired_at=T + 1, finding={"key": "A"},
                       send_resolved=True, notified={"s": T + 1})
    return json.loads(json.dumps(alerts_to_document({"r/A": alert}, [(note, 2)], T + 2)))


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=6), children, max_size=3)),
    max_leaves=8)


def _doc_paths(doc: Any) -> list[tuple[Any, ...]]:
    return list(_paths(doc))


STATE_DOC, ALERTS_DOC = _state_doc(), _alerts_doc()


@settings(FUZZ, max_examples=1000)
@given(which=st.sampled_from(["state", "alerts"]), data=st.data())
def test_mutated_state_documents_load_or_are_refused_saying_why(which: str, data: st.DataObject) -> None:
    base = STATE_DOC if which == "state" else ALERTS_DOC
    path = data.draw(st.sampled_from(_doc_paths(base)))
    action = data.draw(st.sampled_from(["replace", "replace", "remove", "misspell"]))
    # (documents reach from_document only through jsonfile.read_document, which refuses
    # nesting deeper than MAX_DEPTH: deeper files are covered by the file test below)
    value = data.draw(st.one_of(JSON_VALUES, st.integers(1, MAX_DEPTH).map(_deep),
                                st.sampled_from([float("nan"), float("inf"), 10**5000, "x" * 5000])))
    doc = _mutate(base, path, action, value)
    parse = state_from_document if which == "state" else alerts_from_document
    try:
        parse(doc)
    except ValueError:
        pass  # documented: the document as a whole is unusable, with the reason


@pytest.mark.parametrize("which", ["state", "alerts"])
def test_mutated_state_files_never_stop_a_load(tmp_path: Path, which: str) -> None:
    rng = random.Random(1234)
    base = json.dumps(STATE_DOC if which == "state" else ALERTS_DOC).encode()
    warnings: list[str] = []
    for i in range(300):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        if i % 50 == 0:  # and a deep nesting where a value was
            at = raw.find(b"[")
            raw[at:at + 1] = b"[" * 3000
            raw += b"]" * 2999
        if which == "state":
            store = StateStore(tmp_path / f"s{i}", warn=warnings.append, info=lambda _m: None)
            store.directory.mkdir()
            store.path.write_bytes(bytes(raw))
            assert isinstance(store.load(), State)
            assert store.save(State(), T)  # and the next save replaces what could not be read
        else:
            path = tmp_path / f"alerts{i}.json"
            path.write_bytes(bytes(raw))
            alerts_load(path, warn=warnings.append, info=lambda _m: None)
            write_atomic(path, _alerts_doc())
    assert warnings  # the corrupt ones were reported


# --------------------------------------------------------------------------- netlink


def _real_dump(ns: NetNS) -> list[bytes]:
    """Receive buffers of a real TCP IPv4 sock_diag dump in ``ns``, with some sockets in it."""
    code = (
        "import socket\n"
        "from portwatch.collect.netlink import build_request, parse_messages\n"
        "from portwatch.model import Protocol\n"
        "ls = socket.socket(); ls.bind(('127.0.0.1', 0)); ls.listen()\n"
        "cs = [socket.create_connection(ls.getsockname()) for _ in range(20)]\n"
        "ac = [ls.accept()[0] for _ in cs]\n"
        "nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)\n"
        "nl.send(build_request(1, socket.AF_INET, socket.IPPROTO_TCP, 0xFFFF))\n"
        "out = []\n"
        "for _ in range(100):\n"
        "    data = nl.recv(65536); out.append(data.hex())\n"
        "    if parse_messages(data, protocol=Protocol.TCP, seq=1)[1]: break\n"
        "print(' '.join(out))\n"
    )
    res = ns.run([os.path.join(REPO, ".venv", "bin", "python"), "-c", code], timeout=60, check=True)
    return [bytes.fromhex(h) for h in res.stdout.split()]


def test_hundred_thousand_mutated_netlink_buffers_give_only_documented_errors(netns: NetNS) -> None:
    buffers = _real_dump(netns)
    sample = b"".join(buffers)
    assert len(parse_messages(sample, protocol=Protocol.TCP, seq=1)[0]) >= 41  # the real sockets parse
    rng = random.Random(20261201)
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(100_000):
        raw = bytearray(sample)
        how = rng.randrange(5)
        if how == 0:  # flip bits
            for _ in range(rng.randint(1, 8)):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        elif how == 1:  # truncate
            del raw[rng.randrange(len(raw)):]
        elif how == 2:  # a length, type or status field set to an extreme
            at = rng.randrange(0, max(1, len(raw) - 4)) & ~3
            raw[at:at + 4] = struct.pack("=I", rng.choice([0, 1, 15, 16, 17, 2**31, 2**32 - 1]))
        elif how == 3:  # random bytes spliced in
            at = rng.randrange(len(raw))
            raw[at:at] = rng.randbytes(rng.randint(1, 64))
        else:  # a NLMSG_ERROR with any status after the first message
            first = struct.unpack_from("=I", raw, 0)[0]
            status = rng.choice([-2**31, -4096, -1, 0, 1, 2**31 - 1, -rng.randrange(1, 200)])
            err = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", status) + build_request(1, 2, 6, 2)[:16]
            raw[first:first] = err
        try:
            parse_messages(bytes(raw), protocol=rng.choice([Protocol.TCP, Protocol.UDP]),
                           seq=rng.choice([None, 1]))
            outcomes["parsed"] += 1
        except (NetlinkError, SourceUnavailable, OSError):
            outcomes["refused"] += 1
    assert outcomes["parsed"] and outcomes["refused"]  # both paths were exercised


def test_a_fetch_ends_a_mutated_dump_where_the_parser_stops(netns: NetNS) -> None:
    # NetlinkSource.fetch keeps datagrams until dump_ended says the last one came; the
    # parse runs later. It must not wait past a datagram the parser ends (done, or a
    # failure it raises at once), nor stop at one the parser reads on from.
    sample = b"".join(_real_dump(netns))
    rng = random.Random(20261202)
    seen: dict[str, int] = {}
    for _ in range(20_000):
        raw = bytearray(sample)
        how = rng.randrange(4)
        if how == 0:
            for _ in range(rng.randint(1, 8)):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        elif how == 1:
            del raw[rng.randrange(len(raw)):]
        elif how == 2:
            at = rng.randrange(0, max(1, len(raw) - 4)) & ~3
            raw[at:at + 4] = struct.pack("=I", rng.choice([0, 1, 15, 16, 17, 20, 2**31, 2**32 - 1]))
        else:
            first = struct.unpack_from("=I", raw, 0)[0]
            status = rng.choice([-2**31, -4096, -1, 0, 1, -rng.randrange(1, 200)])
            kind = rng.choice([2, 3])  # NLMSG_ERROR, NLMSG_DONE
            raw[first:first] = struct.pack("=IHHII", 20, kind, 0, 1, 0) + struct.pack("=i", status)
        data = bytes(raw)
        try:
            parsed: object = parse_messages(data, protocol=Protocol.TCP, seq=1)[1]
        except NetlinkError:
            parsed = "malformed"
        except (SourceUnavailable, OSError) as exc:
            parsed = (type(exc), exc.errno if isinstance(exc, OSError) else None)
        try:
            ended: object = dump_ended(data, length=len(data), seq=1, msg_type=SOCK_DIAG_BY_FAMILY,
                                       protocol=Protocol.TCP)
        except NetlinkError:
            ended = "malformed"
        except (SourceUnavailable, OSError) as exc:
            ended = (type(exc), exc.errno if isinstance(exc, OSError) else None)
        assert ended == parsed, (parsed, ended, data[:64].hex())
        key = str(parsed)
        seen[key] = seen.get(key, 0) + 1
    assert {"True", "False", "malformed"} <= set(seen) and len(seen) >= 4, seen
