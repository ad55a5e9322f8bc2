"""The C loop of the classifying parser (``portwatch/collect/_classify.c``) against the pure Python one.

:func:`portwatch.collect.netlink.count_messages` runs the C loop of
``portwatch.collect._classify`` when setup.py built it and its own loop when
not; both must leave the same tally (states, usage, kept sockets, listeners,
the ``late`` flag, the buffers) and the same outcome (the return value, or
the same error at the same place) for any buffer the kernel or anything else
could send. These tests craft buffers with the helpers of
``tests/test_netlink.py`` (written independently of the module's structs),
valid and broken, and run both loops over each. The real-socket comparison of
a counted read with a full one (``tests/test_counted.py``) runs the C loop,
since it is the default.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from portwatch.collect import netlink
from portwatch.collect.netlink import NLMSG_NOOP, SOCK_DIAG_BY_FAMILY
from tests.netns import REPO
from tests.test_netlink import AF4, AF6, diag, done, error, nlmsg, v4, v6

C = netlink.ACCELERATOR
needs_c = pytest.mark.skipif(C is None and os.environ.get("CI") != "true",
                             reason="portwatch.collect._classify was not built (no C compiler at install)")

ZERO = bytes(16)
SERVER4, SERVER6 = v4("127.0.0.9"), v6("::9")
ADDRS = {AF4: [v4("127.0.0.1"), SERVER4, ZERO, v4("10.1.2.3")],
         AF6: [v6("::1"), SERVER6, ZERO, v6("::ffff:127.0.0.1")]}
#: Ports: the range 40000-40009 (40005 reserved), listeners' and interest's, mirrored bytes, 0.
PORTS = [0, 1, 258, 513, 2379, 8080, 9000, 65535, *range(40000, 40010)]
STATES = [*range(1, 13)] * 4 + [0, 13, 99, 255]


def test_the_c_loop_is_built_where_the_suite_runs_in_ci() -> None:
    """CI installs a compiler and the Python headers (scripts/test): the C loop must be there."""
    if os.environ.get("CI") != "true" and C is None:
        pytest.skip("portwatch.collect._classify was not built (no C compiler at install)")
    assert C is not None
    assert (netlink.count_messages.__kwdefaults__ or {})["accelerator"] is C


def typed(raw: bytes, msg_type: int) -> bytes:
    """The message ``raw`` with its nlmsg_type replaced."""
    return raw[:4] + struct.pack("=H", msg_type) + raw[6:]


def random_message(rng: random.Random, msg_type: int) -> bytes:
    """One message of a dump, most of them plausible sockets, some broken or not sockets at all."""
    roll = rng.random()
    if roll < 0.04:
        return nlmsg(NLMSG_NOOP, b"")
    if roll < 0.06:
        return error(rng.choice([0, 0, 2, 13]))
    if roll < 0.08:
        return typed(done(), 3) if rng.random() < 0.5 else done(seq=rng.choice([1, 2]))
    family = rng.choice([AF4, AF6, AF4, AF6, AF4, 1])
    addrs = ADDRS.get(family, ADDRS[AF4])
    state = rng.choice(STATES)
    sport, dport = rng.choice(PORTS), rng.choice(PORTS)
    src, dst = rng.choice(addrs), rng.choice(addrs)
    if rng.random() < 0.1:  # a self-connect
        dport, dst = sport, src
    if state == 10:  # a listener: no remote end
        dport, dst = 0, ZERO
    attrs = b""
    if rng.random() < 0.5:
        attrs = struct.pack("=HHQ", 12, 21, rng.randrange(1, 1 << 40))  # INET_DIAG_CGROUP_ID
    if rng.random() < 0.2:
        attrs = struct.pack("=HH", 5, 8) + b"\x01" + attrs  # unaligned INET_DIAG_SHUTDOWN
    raw = diag(family=family, state=state, sport=sport, dport=dport, src=src, dst=dst,
               uid=rng.choice([0, 1000]), inode=rng.randrange(0, 1 << 20), attrs=attrs,
               seq=1 if rng.random() < 0.97 else 2)
    raw = typed(raw, msg_type if rng.random() < 0.97 else SOCK_DIAG_BY_FAMILY + 1)
    cut = rng.random()
    if cut < 0.02:  # nlmsg_len shorter than inet_diag_msg, or longer than what is there
        raw = struct.pack("=I", rng.choice([16, 60, 87, len(raw) + 64])) + raw[4:]
    return raw


def random_buffers(rng: random.Random, msg_type: int) -> list[bytes]:
    """One to three receive buffers of a dump; the last may end it or be cut short."""
    buffers = []
    for _ in range(rng.randint(1, 3)):
        data = b"".join(random_message(rng, msg_type) for _ in range(rng.randint(0, 30)))
        buffers.append(data)
    if rng.random() < 0.7:
        buffers[-1] += done()
    if rng.random() < 0.1 and buffers[-1]:
        buffers[-1] = buffers[-1][:rng.randrange(len(buffers[-1]))]
    return buffers


def random_tally(rng: random.Random) -> netlink.Tally:
    """A tally over 40000-40009 with some of the known listeners and ports of interest."""
    listeners = frozenset(rng.sample([(ZERO, 8080), (SERVER4, 9000), (SERVER6, 9000), (ZERO, 258)],
                                     rng.randint(0, 4)))
    interest = frozenset(rng.sample([2379, 8080, 40003], rng.randint(0, 2)))
    return netlink.Tally((40000, 40009), frozenset({40005}) | interest, interest, listeners,
                         take_listeners=rng.random() < 0.7)


def classify(buffers: list[bytes], tally: netlink.Tally, accelerator: Callable[..., int] | None,
             family: int | None, msg_type: int) -> tuple[Any, ...]:
    """Feed ``buffers`` to count_messages until one ends the dump or raises; everything it left."""
    outcome: Any = ("not done",)
    for data in buffers:
        try:
            if netlink.count_messages(data, tally, seq=1, length=len(data), family=family,
                                      msg_type=msg_type, accelerator=accelerator):
                outcome = ("done",)
                break
        except Exception as exc:  # the same error, with the same message (offset included)
            outcome = (type(exc).__name__, str(exc))
            break
    return (outcome, tally.states, tally.usage, tally.kept, tally.listeners, tally.late, tally.buffers,
            tally.specific, bytes(tally.wildcard), bytes(tally.usable))


@needs_c
@pytest.mark.parametrize("seed", range(8))
def test_both_loops_leave_the_same_tally_for_any_buffer(seed: int) -> None:
    rng = random.Random(seed)
    outcomes = set()
    for case in range(400):
        family = rng.choice([None, None, AF4, AF6])
        msg_type = netlink.TCPDIAG_GETSOCK if family is None else SOCK_DIAG_BY_FAMILY
        buffers = random_buffers(rng, msg_type)
        state = rng.getstate()
        python = classify(buffers, random_tally(rng), None, family, msg_type)
        rng.setstate(state)  # the same tally for the C loop
        fast = classify(buffers, random_tally(rng), C, family, msg_type)
        assert fast == python, f"seed {seed} case {case}"
        outcomes.add(python[0][0])
    # the cases reach every way out: a dump ended, one left open, and errors
    assert {"done", "not done", "NetlinkError"} <= outcomes


def many_destinations(count: int) -> bytes:
    """``count`` ESTABLISHED clients from 40001, each towards its own port of 127.0.0.9 (a specific listener)."""
    return b"".join(diag(state=1, sport=40001, dport=10000 + i, dst=SERVER4, inode=i) for i in range(count))


@needs_c
def test_more_destinations_than_the_c_loop_holds_at_once_are_all_counted() -> None:
    listeners = frozenset((SERVER4, 10000 + i) for i in range(1000))
    data = many_destinations(1000) + done()
    tallies = []
    for accelerator in (None, C):
        tally = netlink.Tally((40000, 40009), frozenset(), frozenset(), listeners)
        assert netlink.count_messages(data, tally, seq=1, length=len(data), accelerator=accelerator)
        tallies.append(tally)
    python, fast = tallies
    assert fast.usage == python.usage and len(fast.usage) == 1000
    assert set(fast.usage.values()) == {1} and fast.states[1] == 1000 and not fast.kept


@needs_c
def test_counts_already_in_the_tally_are_added_to() -> None:
    tally = netlink.Tally((40000, 40009), frozenset(), frozenset(), frozenset({(SERVER4, 10000)}))
    data = many_destinations(1)
    for _ in range(3):
        assert not netlink.count_messages(data, tally, seq=1, length=len(data), accelerator=C)
    assert tally.states[1] == 3 and list(tally.usage.values()) == [3]


@needs_c
def test_the_c_loop_stops_where_python_must_take_over() -> None:
    """It returns the offset of the first message it does not count, having counted those before."""
    assert C is not None
    tally = netlink.Tally((40000, 40009), frozenset(), frozenset(), frozenset({(ZERO, 8080)}))
    plain = diag(state=1, sport=40001, dport=8080)
    kept = diag(state=8, sport=40002, dport=8080)  # CLOSE_WAIT: a socket to build
    data = plain + plain + kept + plain
    args = (1, SOCK_DIAG_BY_FAMILY, AF4, AF4, -1, 8, netlink._PLAIN_STATES, tally.states, tally.usage,
            tally.usable, tally.interest, tally.wildcard, tally.specific_port, tally.specific)
    assert C(data, 0, len(data), *args) == 2 * len(plain)
    assert tally.states[1] == 2
    assert C(data, 3 * len(plain), len(data), *args) == len(data)
    assert tally.states[1] == 3
    assert C(data, 0, 10, *args) == 0  # less than one message left: nothing counted
    assert C(b"", 0, 0, *args) == 0


@needs_c
def test_the_c_loop_refuses_wrong_arguments_with_an_error_not_a_crash() -> None:
    assert C is not None
    tally = netlink.Tally((40000, 40009), frozenset(), frozenset(), frozenset())
    tables = (tally.usable, tally.interest, tally.wildcard, tally.specific_port, tally.specific)
    head = (1, SOCK_DIAG_BY_FAMILY, AF4, AF4, -1, 8, netlink._PLAIN_STATES)
    data = diag() + done()
    with pytest.raises(TypeError, match="17 arguments"):
        C(data, 0)
    with pytest.raises(TypeError, match="chunk must be bytes"):
        C(bytearray(data), 0, len(data), *head, tally.states, tally.usage, *tables)
    with pytest.raises(ValueError, match="states must be a list of 256"):
        C(data, 0, len(data), *head, [0] * 12, tally.usage, *tables)
    with pytest.raises(TypeError, match="usage must be a dict"):
        C(data, 0, len(data), *head, tally.states, [], *tables)
    with pytest.raises(ValueError, match="usable: 0 bytes, 65536 needed"):
        C(data, 0, len(data), *head, tally.states, tally.usage, b"", *tables[1:])
    with pytest.raises(ValueError, match="plain: 3 bytes, 256 needed"):
        C(data, 0, len(data), *head[:-1], b"abc", tally.states, tally.usage, *tables)
    with pytest.raises(TypeError):
        C(data, "0", len(data), *head, tally.states, tally.usage, *tables)
    assert sum(tally.states) == 0 and not tally.usage


def test_a_build_without_the_c_loop_classifies_the_same_on_its_own() -> None:
    """The pure Python loop alone (what runs where no compiler was found) on the module's own example."""
    tally = netlink.Tally((40000, 40009), frozenset(), frozenset(), frozenset({(ZERO, 8080)}))
    data = diag(state=1, sport=40001, dport=8080) + diag(state=8, sport=40002, dport=8080) + done()
    assert netlink.count_messages(data, tally, seq=1, length=len(data), accelerator=None)
    assert tally.states[1] == 1 and tally.states[8] == 1 and [s.local.port for s in tally.kept] == [40002]
    assert [n for n in tally.usage.values()] == [2]
    assert socket.inet_ntoa(next(iter(tally.usage))[1][:4]) == "127.0.0.1"


@pytest.mark.parametrize("loop", [None, C] if C is not None else [None], ids=["python", "c"][:1 + (C is not None)])
@pytest.mark.parametrize("seq,msg_type", [(2**32 + 1, SOCK_DIAG_BY_FAMILY), (-(2**32) + 1, SOCK_DIAG_BY_FAMILY),
                                          (2**70, SOCK_DIAG_BY_FAMILY), (1, SOCK_DIAG_BY_FAMILY + 65536)])
def test_a_sequence_number_or_type_no_message_can_carry_matches_none(loop: Any, seq: int, msg_type: int) -> None:
    # the C loop compares the full values, not their low bits: the Python loop names the mismatch
    tally = netlink.Tally((40000, 40009), frozenset(), frozenset(), frozenset())
    data = diag(state=1, sport=40001) + done()
    with pytest.raises(netlink.NetlinkError, match="unexpected (sequence number 1|netlink message type 20)"):
        netlink.count_messages(data, tally, seq=seq, length=len(data), msg_type=msg_type, accelerator=loop)
    assert sum(tally.states) == 0


@needs_c
def test_python_code_run_by_the_collector_during_the_call_cannot_crash_it() -> None:
    """Making the usage dict's keys may start a collection; a callback that empties the states list is refused."""
    import gc

    if sys.version_info >= (3, 12):
        pytest.skip("Python 3.12+ collects between bytecodes, never inside a C call")
    assert C is not None
    listeners = frozenset((SERVER4, 10000 + i) for i in range(300))
    tally = netlink.Tally((40000, 40009), frozenset(), frozenset(), listeners)
    data = many_destinations(300)  # more destinations than the C loop holds: keys are made mid-call
    end, plain, states, usage = len(data), netlink._PLAIN_STATES, tally.states, tally.usage
    usable, interest, wildcard, port, keys = (tally.usable, tally.interest, tally.wildcard, tally.specific_port,
                                              tally.specific)
    emptied = []

    def empty(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and tally.states:
            tally.states.clear()
            emptied.append(True)

    # 4-tuples held (the keys' size): the C loop's keys cannot come from the tuple free list, whose
    # reuse does not count as an allocation for the collector
    held = [(i, i, i, i) for i in range(4000)]
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    gc.disable()  # no collection before the call: the callback would empty the list too early
    gc.callbacks.append(empty)
    try:
        with pytest.raises(ValueError, match="states changed size during the call"):
            # (every argument named: unpacking a tuple of them would allocate between enable and call)
            gc.set_threshold(1)
            gc.enable()
            C(data, 0, end, 1, 20, 2, 2, -1, 8, plain, states, usage, usable, interest, wildcard, port, keys)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(empty)
        if not enabled:
            gc.disable()
    assert emptied and len(held) == 4000


@pytest.mark.slow
def test_an_install_where_no_compiler_works_runs_the_python_loop(tmp_path: Path) -> None:
    """setup.py's extension is optional: pip installs portwatch without it, and portwatch says so."""
    source, target = tmp_path / "source", tmp_path / "site"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "portwatch", source / "portwatch", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    env = {**os.environ, "CC": "false", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # a compiler that always fails
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                            str(source)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    assert not list(target.glob("portwatch/collect/_classify*.so"))
    probe = ("import portwatch, portwatch.collect.netlink as n; "
             "print(n.ACCELERATOR is None, portwatch.version_text().endswith(', pure-Python classifier)'))")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert ran.stdout.split() == ["True", "True"], ran.stderr
