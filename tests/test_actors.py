"""The actors make the kernel state they claim, checked with ``ss`` (independently of portwatch).

Each test starts one scenario of :mod:`tests.actors` in a fresh network
namespace and reads the socket table with ``ss -tanpH`` / ``ss -uanpH``. The
portwatch integration tests rely on exactly these properties.
"""

from __future__ import annotations

import re
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from tests.netns import NetNS

pytestmark = pytest.mark.netns

LOW, HIGH = 40000, 40009
TINY_RANGE = f"{LOW} {HIGH}"


@dataclass(frozen=True)
class Row:
    """One socket as ``ss -anpH`` prints it."""

    state: str
    local: tuple[str, int]
    peer: tuple[str, int]
    pids: tuple[int, ...]


def _endpoint(text: str) -> tuple[str, int]:
    """``127.0.0.1:80`` / ``[::1]:80`` / ``*:80`` / ``0.0.0.0:*`` to (host, port; 0 for ``*``)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), (0 if port == "*" else int(port))


def ss(ns: NetNS, flags: str = "-tanpH") -> list[Row]:
    """The sockets ``ss FLAGS`` lists in ``ns`` (FLAGS must contain n, p and H)."""
    out = ns.run(["ss", flags], check=True).stdout
    rows: list[Row] = []
    for line in out.splitlines():
        cols = line.split(None, 5)
        if not cols:
            continue
        process = cols[5] if len(cols) > 5 else ""
        rows.append(Row(state=cols[0], local=_endpoint(cols[3]), peer=_endpoint(cols[4]),
                        pids=tuple(int(p) for p in re.findall(r"pid=(\d+)", process))))
    return rows


def tiny_range(ns: NetNS) -> None:
    """Set the namespace's ephemeral range to the 10 ports LOW..HIGH."""
    ns.sysctl("net/ipv4/ip_local_port_range", TINY_RANGE)


def start(ns: NetNS, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start an actor and check the fields every READY document has."""
    proc, info = ns.actor(*args)
    assert info["scenario"] == args[0]
    assert info["pid"] == proc.pid  # `ip netns exec` execs the actor: same pid
    return proc, info


def fails(ns: NetNS, *args: str) -> str:
    """Start an actor that must fail; the text of its FAILED line (via NetNS.actor's error)."""
    with pytest.raises(RuntimeError) as excinfo:
        ns.actor(*args)
    message = str(excinfo.value)
    assert "(exit 1): " in message and "FAILED " in message, message
    return message


# --------------------------------------------------------------------------- self-connect


@pytest.mark.parametrize("family,host", [("4", "127.0.0.1"), ("6", "::1")])
def test_self_connect_on_an_explicit_even_port_is_connected_to_itself(
        netns: NetNS, family: str, host: str) -> None:
    tiny_range(netns)
    proc, info = start(netns, "self-connect", "--family", family, "--port", "40004")
    assert info["local"] == info["remote"] == [host, 40004]
    assert 1 <= info["attempts"] <= info["max_attempts"]
    assert info["range"] == [LOW, HIGH]
    mine = [r for r in ss(netns) if proc.pid in r.pids]
    assert [(r.state, r.local, r.peer) for r in mine] == [("ESTAB", (host, 40004), (host, 40004))]


def test_self_connect_default_port_is_free_in_range_with_low_end_parity(netns: NetNS) -> None:
    tiny_range(netns)
    proc, info = start(netns, "self-connect")
    port = info["port"]
    assert LOW <= port <= HIGH and port % 2 == LOW % 2
    rows = ss(netns)
    assert [(r.state, r.local, r.peer, r.pids) for r in rows] == [
        ("ESTAB", ("127.0.0.1", port), ("127.0.0.1", port), (proc.pid,))]


def test_self_connect_default_port_shares_a_port_used_by_connections(netns: NetNS) -> None:
    tiny_range(netns)
    start(netns, "exhaust", "--to", "127.0.0.1:8080", "--count", "5")  # takes the 5 even ports
    proc, info = start(netns, "self-connect")
    port = info["port"]
    assert port % 2 == LOW % 2
    assert [r.pids for r in ss(netns) if r.local == r.peer == ("127.0.0.1", port)] == [(proc.pid,)]


def test_self_connect_to_odd_port_fails_within_its_bound(netns: NetNS) -> None:
    tiny_range(netns)
    message = fails(netns, "self-connect", "--port", "40003", "--max-attempts", "300")
    assert "after 300 attempts" in message
    assert ss(netns) == []


def test_self_connect_refuses_a_port_outside_the_range(netns: NetNS) -> None:
    tiny_range(netns)
    assert "outside ip_local_port_range" in fails(netns, "self-connect", "--port", "8080")


# --------------------------------------------------------------------------- loop-pair


@pytest.mark.parametrize("family,host", [("4", "127.0.0.1"), ("6", "::1")])
def test_loop_pair_is_mirrored_with_no_listener(netns: NetNS, family: str, host: str) -> None:
    proc, info = start(netns, "loop-pair", "--family", family, "--port-a", "41000",
                       "--port-b", "41001")
    assert info["ports"] == [41000, 41001]
    assert info["a"] == {"local": [host, 41000], "remote": [host, 41001]}
    assert info["b"] == {"local": [host, 41001], "remote": [host, 41000]}
    rows = ss(netns)
    assert sorted((r.state, r.local, r.peer, r.pids) for r in rows) == [
        ("ESTAB", (host, 41000), (host, 41001), (proc.pid,)),
        ("ESTAB", (host, 41001), (host, 41000), (proc.pid,)),
    ]  # no LISTEN row at all


def test_loop_pair_on_kernel_chosen_ports_is_two_distinct_mirrored_ends(netns: NetNS) -> None:
    proc, info = start(netns, "loop-pair")
    pa, pb = info["ports"]
    assert pa != pb
    pairs = {(r.local[1], r.peer[1]) for r in ss(netns) if r.state == "ESTAB"}
    assert pairs == {(pa, pb), (pb, pa)}


# --------------------------------------------------------------------------- listen


def test_listen_holds_tcp_listeners_and_an_unconnected_udp_socket(netns: NetNS) -> None:
    tiny_range(netns)
    tcp_proc, tcp = start(netns, "listen", "--proto", "tcp", "--port", "40005", "--port", "40007")
    udp_proc, udp = start(netns, "listen", "--proto", "udp", "--port", "40006", "--host", "::1")
    assert tcp["ports"] == [40005, 40007] and tcp["host"] == "0.0.0.0"
    assert udp["sockets"] == [{"proto": "udp", "local": ["::1", 40006]}]
    assert sorted((r.state, r.local, r.pids) for r in ss(netns, "-tanpH")) == [
        ("LISTEN", ("0.0.0.0", 40005), (tcp_proc.pid,)),
        ("LISTEN", ("0.0.0.0", 40007), (tcp_proc.pid,)),
    ]
    assert [(r.state, r.local, r.pids) for r in ss(netns, "-uanpH")] == [
        ("UNCONN", ("::1", 40006), (udp_proc.pid,))]


def test_listen_on_ipv6_binds_the_wildcard_address(netns: NetNS) -> None:
    proc, info = start(netns, "listen", "--family", "6", "--port", "40005")
    assert info["host"] == "::"
    [row] = ss(netns)
    assert row.state == "LISTEN" and row.local[1] == 40005 and row.pids == (proc.pid,)


# --------------------------------------------------------------------------- hold-port


def test_hold_port_with_its_own_server_keeps_the_service_from_binding(netns: NetNS) -> None:
    tiny_range(netns)
    proc, info = start(netns, "hold-port", "--port", "40005", "--to", "127.0.0.1:8080", "--serve")
    assert info["local"] == ["127.0.0.1", 40005] and info["remote"] == ["127.0.0.1", 8080]
    assert info["service_bind"] == "EADDRINUSE"
    rows = ss(netns)
    assert not [r for r in rows if r.local[1] == 40005 and r.state == "LISTEN"]
    assert [r.pids for r in rows if r.state == "ESTAB" and r.local == ("127.0.0.1", 40005)
            and r.peer == ("127.0.0.1", 8080)] == [(proc.pid,)]
    # The service cannot come back: a fresh process gets EADDRINUSE on its port.
    probe = netns.run(["python3", "-c", (
        "import socket,errno\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "try:\n s.bind(('0.0.0.0', 40005)); s.listen(); print('bound')\n"
        "except OSError as e:\n print(errno.errorcode[e.errno])\n")])
    assert probe.stdout.strip() == "EADDRINUSE", probe


def test_hold_port_to_an_existing_listener_leaves_it_unaccepted(netns: NetNS) -> None:
    server, _ = start(netns, "listen", "--host", "127.0.0.1", "--port", "8080")
    proc, info = start(netns, "hold-port", "--port", "40005", "--to", "127.0.0.1:8080")
    assert info["served"] is False and info["server"] is None
    rows = ss(netns)
    assert [r.pids for r in rows if r.local == ("127.0.0.1", 40005)] == [(proc.pid,)]
    assert [r.state for r in rows if r.local == ("127.0.0.1", 8080) and r.pids == (server.pid,)] \
        == ["LISTEN"]  # the accepted side sits in the listener's queue, not accepted


def test_hold_port_without_a_server_fails(netns: NetNS) -> None:
    assert "ECONNREFUSED" in fails(netns, "hold-port", "--port", "40005", "--to", "127.0.0.1:8080")


# --------------------------------------------------------------------------- exhaust


def test_exhaust_holds_nine_of_ten_ports_and_a_second_destination(netns: NetNS) -> None:
    tiny_range(netns)
    proc, info = start(netns, "exhaust", "--to", "127.0.0.1:8080", "--count", "9",
                       "--also", "127.0.0.1:8081", "--count-also", "2")
    assert info["count"] == 9 and info["exhausted"] == []
    rows = ss(netns)
    to_8080 = sorted(r.local[1] for r in rows if r.state == "ESTAB" and r.peer == ("127.0.0.1", 8080))
    to_8081 = sorted(r.local[1] for r in rows if r.state == "ESTAB" and r.peer == ("127.0.0.1", 8081))
    assert to_8080 == info["local_ports"] and len(set(to_8080)) == 9
    assert all(LOW <= p <= HIGH for p in to_8080 + to_8081)
    assert to_8081 == info["also"]["local_ports"] and len(to_8081) == 2
    assert {r.pids for r in rows} == {(proc.pid,)}  # clients, accepted sides and listeners
    assert sorted(r.local for r in rows if r.state == "LISTEN") == [
        ("127.0.0.1", 8080), ("127.0.0.1", 8081)]


def test_exhaust_past_the_range_fails_with_eaddrnotavail(netns: NetNS) -> None:
    tiny_range(netns)
    message = fails(netns, "exhaust", "--to", "127.0.0.1:8080", "--count", "11")
    assert "EADDRNOTAVAIL" in message and "after 10 connections" in message


def test_exhaust_allowed_holds_the_whole_range(netns: NetNS) -> None:
    tiny_range(netns)
    _, info = start(netns, "exhaust", "--to", "127.0.0.1:8080", "--count", "11",
                    "--allow-exhaustion")
    assert info["exhausted"] == [{"to": ["127.0.0.1", 8080], "after": 10, "error": "EADDRNOTAVAIL"}]
    ports = sorted(r.local[1] for r in ss(netns) if r.peer == ("127.0.0.1", 8080))
    assert ports == info["local_ports"] == list(range(LOW, HIGH + 1))


def test_exhaust_against_an_existing_listener_owns_only_the_clients(netns: NetNS) -> None:
    tiny_range(netns)
    start(netns, "listen", "--host", "127.0.0.1", "--port", "8080")
    proc, info = start(netns, "exhaust", "--to", "127.0.0.1:8080", "--count", "8", "--no-serve")
    assert info["served"] is False
    mine = [r for r in ss(netns) if proc.pid in r.pids]
    assert sorted(r.local[1] for r in mine) == info["local_ports"] and len(mine) == 8


# --------------------------------------------------------------------------- close-wait


def test_close_wait_sockets_belong_to_the_actor(netns: NetNS) -> None:
    tiny_range(netns)
    proc, info = start(netns, "close-wait", "--count", "5", "--port", "8081")
    assert info["holder_pid"] == proc.pid
    rows = ss(netns)
    close_wait = [r for r in rows if r.state == "CLOSE-WAIT"]
    assert len(close_wait) == 5
    assert {r.pids for r in close_wait} == {(proc.pid,)}
    assert {r.local for r in close_wait} == {("127.0.0.1", 8081)}
    assert sorted(r.peer[1] for r in close_wait) == info["client_ports"]
    # the clients' side: closed by the actor, orphaned (no owning process)
    assert all(not r.pids for r in rows if r.peer == ("127.0.0.1", 8081))


def test_close_wait_survives_its_listener_being_closed(netns: NetNS) -> None:
    proc, info = start(netns, "close-wait", "--count", "3", "--close-listener")
    assert info["listener_open"] is False
    rows = [r for r in ss(netns) if proc.pid in r.pids]
    assert sorted(r.state for r in rows) == ["CLOSE-WAIT"] * 3


# --------------------------------------------------------------------------- traffic


def test_traffic_leaves_only_listen_established_and_client_time_wait(netns: NetNS) -> None:
    tiny_range(netns)
    proc, info = start(netns, "traffic", "--closed", "3", "--open", "2")
    server = ("127.0.0.1", 8080)
    rows = ss(netns)
    assert [r.local for r in rows if r.state == "LISTEN"] == [server]
    time_wait = sorted(r.local[1] for r in rows if r.state == "TIME-WAIT" and r.peer == server)
    assert time_wait == sorted(info["closed_client_ports"])  # client side, the normal end
    open_clients = sorted(r.local[1] for r in rows if r.state == "ESTAB" and r.peer == server)
    assert open_clients == sorted(info["open_client_ports"])
    assert all(LOW <= p <= HIGH for p in time_wait + open_clients)
    assert not [r for r in rows if r.state not in ("LISTEN", "ESTAB", "TIME-WAIT")]
    assert not [r for r in rows if r.local == r.peer]
    assert {r.pids for r in rows if r.state != "TIME-WAIT"} == {(proc.pid,)}


def test_traffic_refuses_a_server_port_inside_the_range(netns: NetNS) -> None:
    tiny_range(netns)
    assert "inside ip_local_port_range" in fails(netns, "traffic", "--port", "40005")


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("how", ["sigterm", "stdin-eof"])
def test_actor_stops_cleanly_and_leaves_nothing(netns: NetNS, how: str) -> None:
    tiny_range(netns)
    proc, _ = start(netns, "self-connect")
    proc2, _ = start(netns, "exhaust", "--to", "127.0.0.1:8080", "--count", "5")
    assert ss(netns)
    for p in (proc, proc2):
        if how == "sigterm":
            p.send_signal(signal.SIGTERM)
        else:
            assert p.stdin is not None
            p.stdin.close()
    for p in (proc, proc2):
        assert p.wait(timeout=30) == 0  # a bound against a hang, not a timing assertion
        assert p.stdout is not None and p.stdout.read() == ""
    assert ss(netns) == []  # closed with RST: no TIME_WAIT, no self-connected remnant


def test_actor_usage_error_is_reported_as_a_failed_line(netns: NetNS) -> None:
    assert "invalid int value" in fails(netns, "exhaust", "--to", "127.0.0.1:8080", "--count", "x")
