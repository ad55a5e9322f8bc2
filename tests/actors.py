"""Actors: processes that make one port-range failure (or a healthy state) for real.

Run as ``python -m tests.actors SCENARIO [options]`` inside a network namespace
(see :meth:`tests.netns.NetNS.actor`). An actor builds its sockets, prints one
line ``READY <json>`` on stdout (a JSON object describing what it made; always
with ``"scenario"`` and ``"pid"``), then holds its sockets until it receives
SIGTERM/SIGINT, until its stdin reaches end of file (unless ``--ignore-stdin``),
or until ``--lifetime`` seconds have passed; it then closes them with RST (so
nothing of it lingers, not even TIME_WAIT) and exits 0.
If the scenario cannot be made it prints one line ``FAILED <reason>`` on stdout
and exits 1 (bad command-line usage is a failure too). Nothing else is ever
written to stdout.

Scenarios (``python -m tests.actors SCENARIO --help`` for every option):

``self-connect``
    A TCP client connects again and again to a free port P inside
    ``ip_local_port_range`` on a local address where nothing listens, until
    ``connect()`` picks P itself as the source port: the SYN meets its own
    socket (simultaneous open) and the socket is ESTABLISHED with
    local == remote. With a 10-port range and P of the range's low-end parity
    this takes a few attempts (connect() prefers that parity since Linux 4.6);
    with the other parity it practically never happens. In the default range
    (about 14,000 ports of one parity) it takes thousands of attempts, well
    under a second.
``loop-pair``
    Two TCP sockets bound to 127.0.0.1:PA and 127.0.0.1:PB connect to each
    other (non-blocking, one right after the other) and end ESTABLISHED,
    mirrored, with no listener on either port.
``listen``
    TCP listeners or bound UDP sockets on the given ports.
``hold-port``
    An outgoing TCP connection whose local port is P (bound before connect):
    a service port taken by an outgoing connection while the service is down.
``exhaust``
    N client connections from unbound sockets (ephemeral source ports) to one
    destination that the actor serves itself (unless ``--no-serve``), and
    optionally M to a second destination.
``close-wait``
    A server (this process) accepts N connections from clients in this same
    process; the clients close, the server never does: N CLOSE_WAIT sockets
    held by this pid.
``traffic``
    A healthy namespace: a server outside the ephemeral range, some finished
    client connections (client-side TIME_WAIT) and some open ones.

Only the standard library is used, so the actor runs under any Python >= 3.10.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Callable, NoReturn, Sequence

# Linux socket options the socket module does not name on every Python.
IP_MINTTL = getattr(socket, "IP_MINTTL", 21)
IPV6_MINHOPCOUNT = getattr(socket, "IPV6_MINHOPCOUNT", 73)

# tcpi_state values (first byte of struct tcp_info) and /proc/net/tcp "st" codes.
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
PROC_TCP_STATES: dict[int, str] = {
    0x01: "ESTABLISHED", 0x02: "SYN_SENT", 0x03: "SYN_RECV", 0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2", 0x06: "TIME_WAIT", 0x07: "CLOSE", 0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK", 0x0A: "LISTEN", 0x0B: "CLOSING", 0x0C: "NEW_SYN_RECV",
}

#: Per-operation timeout on loopback (connect, accept, recv): generous, never hit in practice.
IO_TIMEOUT = 5.0


class ActorError(Exception):
    """The scenario could not be made; the message is the ``FAILED`` reason."""


class Stop(BaseException):
    """Raised by the SIGTERM/SIGINT handler to unwind to :func:`main`."""


# --------------------------------------------------------------------------- helpers


@dataclass
class Held:
    """Sockets the actor keeps open until it exits.

    At exit every held socket is closed abortively (SO_LINGER 0: RST instead
    of FIN), so an actor leaves nothing behind in the namespace: no
    self-connected 4-tuple in TIME_WAIT that would block the next run, no
    TIME_WAIT that would keep an exhaustion finding alive after the stop.
    Sockets closed during set-up (:meth:`discard`) close normally.
    """

    sockets: list[socket.socket] = field(default_factory=list)

    def add(self, sock: socket.socket) -> socket.socket:
        """Keep ``sock`` open until :meth:`close_all`; returns it."""
        self.sockets.append(sock)
        return sock

    def discard(self, sock: socket.socket) -> None:
        """Close ``sock`` now, normally (FIN), and stop holding it."""
        for i, held in enumerate(self.sockets):
            if held is sock:
                del self.sockets[i]
                close_socket(sock)
                return
        raise ValueError("socket is not held")

    def close_all(self) -> None:
        """Close every held socket abortively (never raises)."""
        for sock in reversed(self.sockets):
            close_socket(sock, abortive=True)
        self.sockets.clear()


def close_socket(sock: socket.socket, abortive: bool = False) -> None:
    """Close ``sock``; with ``abortive``, reset the connection instead of a FIN (no TIME_WAIT)."""
    try:
        if abortive and sock.fileno() >= 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def family_of(host: str) -> int:
    """``socket.AF_INET`` or ``AF_INET6`` for a literal address; ActorError otherwise."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ActorError(f"not an IP address: {host!r}") from None
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def family_number(family: int) -> int:
    """4 or 6."""
    return 6 if family == socket.AF_INET6 else 4


def loopback(family: int) -> str:
    """The loopback address of ``family``."""
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def wildcard(family: int) -> str:
    """The unspecified address of ``family``."""
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def parse_hostport(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` to (host, port); ActorError when malformed."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
    else:
        host, sep, rest = text.rpartition(":")
    if not sep or not host or not rest.isdigit() or not 0 < int(rest) < 65536:
        raise ActorError(f"expected HOST:PORT or [V6HOST]:PORT with a port 1-65535, got {text!r}")
    family_of(host)
    return host, int(rest)


def endpoint(addr: Any) -> list[Any]:
    """A socket address (2- or 4-tuple) as the JSON pair ``[host, port]``."""
    return [str(addr[0]), int(addr[1])]


def errno_name(err: OSError) -> str:
    """The symbolic errno of ``err`` (e.g. ``"EADDRNOTAVAIL"``), or its text."""
    if err.errno is not None and err.errno in errno.errorcode:
        return errno.errorcode[err.errno]
    return str(err)


def tcp_state(sock: socket.socket) -> int:
    """The kernel TCP state of ``sock`` (tcpi_state, e.g. 1 = ESTABLISHED)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def socket_inode(sock: socket.socket) -> int:
    """The inode number of ``sock`` as /proc/net/tcp shows it."""
    return os.fstat(sock.fileno()).st_ino


def read_port_range(proc_sys: str = "/proc/sys") -> tuple[int, int]:
    """``net.ipv4.ip_local_port_range`` of this namespace as (low, high)."""
    with open(f"{proc_sys}/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    return low, high


def read_reserved_ports(proc_sys: str = "/proc/sys") -> set[int]:
    """``net.ipv4.ip_local_reserved_ports`` of this namespace as a set of ports."""
    with open(f"{proc_sys}/net/ipv4/ip_local_reserved_ports") as f:
        text = f.read().strip()
    ports: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        ports.update(range(int(first), int(last or first) + 1))
    return ports


@dataclass(frozen=True)
class ProcSocket:
    """One row of /proc/net/tcp{,6} or udp{,6}."""

    proto: str
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str
    inode: int


def _proc_addr(text: str) -> tuple[str, int]:
    """Decode ``0100007F:9C40`` (or the 32-hex-digit IPv6 form) to (address, port)."""
    hexaddr, hexport = text.split(":")
    raw = bytes.fromhex(hexaddr)
    # The kernel prints each 32-bit word in host (little-endian) byte order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw)), int(hexport, 16)


def read_proc_net(proto: str = "tcp", proc_net: str = "/proc/net") -> list[ProcSocket]:
    """Every socket of ``proto`` ("tcp" or "udp"), IPv4 and IPv6, in this namespace."""
    rows: list[ProcSocket] = []
    for suffix in ("", "6"):
        try:
            with open(f"{proc_net}/{proto}{suffix}") as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:  # IPv6 disabled
            continue
        for line in lines:
            cols = line.split()
            rows.append(ProcSocket(proto=proto, local=_proc_addr(cols[1]),
                                   remote=_proc_addr(cols[2]),
                                   state=PROC_TCP_STATES.get(int(cols[3], 16), cols[3]),
                                   inode=int(cols[9])))
    return rows


def connect_error(err: OSError, target: tuple[str, int]) -> ActorError:
    """An ActorError explaining a failed connect() to ``target``."""
    where = f"{target[0]}:{target[1]}"
    if err.errno == errno.ECONNREFUSED:
        return ActorError(f"connect to {where}: ECONNREFUSED (nothing listens there)")
    if err.errno == errno.EADDRNOTAVAIL:
        return ActorError(f"connect to {where}: EADDRNOTAVAIL (no ephemeral port left)")
    return ActorError(f"connect to {where}: {errno_name(err)} ({err})")


def tcp_listener(held: Held, host: str, port: int, backlog: int = 128) -> socket.socket:
    """A TCP socket listening on host:port (SO_REUSEADDR, as servers do), held."""
    sock = held.add(socket.socket(family_of(host), socket.SOCK_STREAM))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as err:
        raise ActorError(f"cannot listen on {host}:{port}: {errno_name(err)}") from None
    return sock


def accept_n(listener: socket.socket, count: int, held: Held) -> list[socket.socket]:
    """Accept exactly ``count`` pending connections (each within IO_TIMEOUT), held."""
    listener.settimeout(IO_TIMEOUT)
    conns: list[socket.socket] = []
    for i in range(count):
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            raise ActorError(f"accepted only {i} of {count} connections within "
                             f"{IO_TIMEOUT}s each on {endpoint(listener.getsockname())}") from None
        conn.settimeout(IO_TIMEOUT)
        conns.append(held.add(conn))
    return conns


def client(held: Held, target: tuple[str, int]) -> socket.socket:
    """A blocking TCP client connected to ``target`` from an ephemeral port, held."""
    sock = held.add(socket.socket(family_of(target[0]), socket.SOCK_STREAM))
    sock.settimeout(IO_TIMEOUT)
    try:
        sock.connect(target)
    except OSError as err:
        raise connect_error(err, target) from None
    return sock


# --------------------------------------------------------------------------- scenarios


def scenario_self_connect(args: argparse.Namespace, held: Held) -> dict[str, Any]:
    """Loop connect() to a free in-range port until the socket is connected to itself.

    Bounded by ``--max-attempts`` and ``--deadline``. The reported ``attempts``
    is the attempt that succeeded. The socket is closed with RST on exit, so no
    self-connected TIME_WAIT blocks the next run (see :class:`Held`).
    """
    family = family_of(args.host) if args.host else (
        socket.AF_INET6 if args.family == 6 else socket.AF_INET)
    host = args.host or loopback(family)
    low, high = read_port_range()
    reserved = read_reserved_ports()
    tcp = read_proc_net("tcp")
    if args.port is None:
        # Prefer a port no socket uses; else one used only by connections (connect() may
        # share a port between 4-tuples, but never takes one held by listen() or bind()).
        used = {s.local[1] for s in tcp}
        listening = {s.local[1] for s in tcp if s.state == "LISTEN" or s.local == s.remote}
        candidates = [p for p in range(high, low - 1, -1)
                      if p % 2 == low % 2 and p not in reserved and p not in listening]
        if not candidates:
            raise ActorError(f"no port of the parity of {low} in range {low}-{high} "
                             "without a listener or reservation")
        port = min(candidates, key=lambda p: p in used)
    else:
        port = args.port
        if not low <= port <= high:
            raise ActorError(f"port {port} is outside ip_local_port_range {low}-{high}: "
                             "connect() never picks it, no self-connect possible")
        if port in reserved:
            raise ActorError(f"port {port} is in ip_local_reserved_ports: no self-connect possible")
        for s in tcp:
            if s.local[1] == port and s.state == "LISTEN":
                raise ActorError(f"port {port} has a listener ({s.local[0]}): no self-connect possible")
            if s.local == s.remote == (str(ipaddress.ip_address(host)), port):
                raise ActorError(f"{host}:{port} is already connected to itself ({s.state})")
    target = (host, port)
    deadline = time.monotonic() + args.deadline
    refused = unavailable = 0
    for attempt in range(1, args.max_attempts + 1):
        if time.monotonic() > deadline:
            raise ActorError(f"no self-connect to {host}:{port} within {args.deadline}s "
                             f"({attempt - 1} attempts)")
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        try:
            sock.connect(target)
        except ConnectionRefusedError:
            refused += 1
            close_socket(sock)
            continue
        except OSError as err:
            close_socket(sock)
            if err.errno == errno.EADDRNOTAVAIL:
                unavailable += 1
                continue
            raise connect_error(err, target) from None
        local, remote = sock.getsockname(), sock.getpeername()
        if endpoint(local) != endpoint(remote):
            close_socket(sock, abortive=True)
            raise ActorError(f"connected to a listener on {host}:{port} from port {local[1]}, "
                             "not to itself")
        held.add(sock)
        return {"family": family_number(family), "host": host, "port": port,
                "local": endpoint(local), "remote": endpoint(remote),
                "attempts": attempt, "refused": refused, "eaddrnotavail": unavailable,
                "max_attempts": args.max_attempts, "range": [low, high],
                "parity_of_low_end": port % 2 == low % 2}
    raise ActorError(f"no self-connect to {host}:{port} after {args.max_attempts} attempts "
                     f"(range {low}-{high}, {refused} refused, {unavailable} EADDRNOTAVAIL)")


def _set_hops(sock: socket.socket, family: int, hops: int) -> None:
    """Outgoing TTL / hop limit of ``sock`` (-1: the system default)."""
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)


def _set_min_hops(sock: socket.socket, family: int, hops: int) -> None:
    """Minimum TTL / hop limit that ``sock`` accepts (0: any)."""
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MINHOPCOUNT, hops)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_MINTTL, hops)


def _wait_established(socks: Sequence[socket.socket], timeout: float) -> bool:
    """Whether every socket reaches ESTABLISHED within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while True:
        if all(tcp_state(s) == TCP_ESTABLISHED for s in socks):
            return True
        if time.monotonic() > deadline:
            return False
        select.select([], list(socks), [], 0.01)


def _loop_pair_attempt(family: int, host: str, ports: tuple[int, int]
                       ) -> tuple[socket.socket, socket.socket] | str:
    """One try at a simultaneous-open pair; the two sockets, or why it failed.

    Over loopback a SYN is delivered inside the sender's connect() call, so
    A's SYN reaches port PB before B has connected and is answered with RST;
    a plain race succeeds about once in a thousand tries. So A is made deaf
    to that RST: it sends with TTL/hop limit 255 and accepts only packets
    with 255 (IP_MINTTL / IPV6_MINHOPCOUNT), while the kernel's RST carries
    the default 64. A stays in SYN_SENT; B (also TTL 255) then connects and
    its SYN meets A in SYN_SENT: a genuine simultaneous open, both sides
    ESTABLISHED through connect() alone. The TTL settings are reset after.
    """
    a = socket.socket(family, socket.SOCK_STREAM)
    b = socket.socket(family, socket.SOCK_STREAM)
    try:
        for sock, port in ((a, ports[0]), (b, ports[1])):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as err:
                raise ActorError(f"cannot bind {host}:{port}: {errno_name(err)}") from None
            sock.setblocking(False)
            _set_hops(sock, family, 255)
        _set_min_hops(a, family, 255)
        pa, pb = a.getsockname()[1], b.getsockname()[1]
        rc = a.connect_ex((host, pb))
        if rc not in (0, errno.EINPROGRESS) or tcp_state(a) != TCP_SYN_SENT:
            raise RuntimeError(f"A ({pa}) not in SYN_SENT after connect: "
                               f"{errno.errorcode.get(rc, rc)}, state {tcp_state(a)}")
        rc = b.connect_ex((host, pa))
        if rc not in (0, errno.EINPROGRESS):
            raise RuntimeError(f"B ({pb}) connect: {errno.errorcode.get(rc, rc)}")
        if not _wait_established((a, b), 2.0):
            raise RuntimeError(f"not both ESTABLISHED: states {tcp_state(a)}, {tcp_state(b)}, "
                               f"errors {a.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)}, "
                               f"{b.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)}")
        _set_min_hops(a, family, 0)
        for sock in (a, b):
            _set_hops(sock, family, -1)
            sock.setblocking(True)
        if (endpoint(a.getsockname()) != endpoint(b.getpeername())
                or endpoint(b.getsockname()) != endpoint(a.getpeername())):
            raise RuntimeError("pair is not mirrored")
        return a, b
    except RuntimeError as err:
        close_socket(a, abortive=True)
        close_socket(b, abortive=True)
        return str(err)
    except BaseException:
        close_socket(a, abortive=True)
        close_socket(b, abortive=True)
        raise


def scenario_loop_pair(args: argparse.Namespace, held: Held) -> dict[str, Any]:
    """Two sockets connected to each other by simultaneous open, no listener.

    Fresh sockets per attempt, at most ``--max-attempts`` (one is enough in
    practice, see :func:`_loop_pair_attempt`).
    """
    family = family_of(args.host) if args.host else (
        socket.AF_INET6 if args.family == 6 else socket.AF_INET)
    host = args.host or loopback(family)
    if args.port_a and args.port_a == args.port_b:
        raise ActorError("--port-a and --port-b must differ (equal ports make a self-connect)")
    last = ""
    for attempt in range(1, args.max_attempts + 1):
        result = _loop_pair_attempt(family, host, (args.port_a, args.port_b))
        if isinstance(result, str):
            last = result
            continue
        a, b = result
        held.add(a)
        held.add(b)
        return {"family": family_number(family), "host": host,
                "ports": [a.getsockname()[1], b.getsockname()[1]],
                "a": {"local": endpoint(a.getsockname()), "remote": endpoint(a.getpeername())},
                "b": {"local": endpoint(b.getsockname()), "remote": endpoint(b.getpeername())},
                "attempts": attempt}
    raise ActorError(f"no loop pair after {args.max_attempts} attempts; last: {last}")


def scenario_listen(args: argparse.Namespace, held: Held) -> dict[str, Any]:
    """TCP listeners (``--proto tcp``) or bound UDP sockets on every ``--port``."""
    family = family_of(args.host) if args.host else (
        socket.AF_INET6 if args.family == 6 else socket.AF_INET)
    host = args.host or wildcard(family)
    made: list[dict[str, Any]] = []
    for port in args.port:
        if args.proto == "tcp":
            sock = tcp_listener(held, host, port)
        else:
            sock = held.add(socket.socket(family, socket.SOCK_DGRAM))
            try:
                sock.bind((host, port))
            except OSError as err:
                raise ActorError(f"cannot bind udp {host}:{port}: {errno_name(err)}") from None
        made.append({"proto": args.proto, "local": endpoint(sock.getsockname())})
    return {"proto": args.proto, "family": family_number(family), "host": host,
            "ports": [m["local"][1] for m in made], "sockets": made}


def scenario_hold_port(args: argparse.Namespace, held: Held) -> dict[str, Any]:
    """An outgoing connection from local port ``--port`` to ``--to`` (served with ``--serve``).

    ``service_bind`` reports what a service restarting on that port would get
    (a fresh SO_REUSEADDR socket binding the wildcard address): normally
    ``"EADDRINUSE"``.
    """
    to = parse_hostport(args.to)
    family = family_of(to[0])
    bind_host = args.bind_host or wildcard(family)
    if family_of(bind_host) != family:
        raise ActorError(f"--bind-host {bind_host} and --to {args.to} differ in family")
    accepted: socket.socket | None = None
    listener = tcp_listener(held, to[0], to[1]) if args.serve else None
    sock = held.add(socket.socket(family, socket.SOCK_STREAM))
    sock.settimeout(IO_TIMEOUT)
    try:
        sock.bind((bind_host, args.port))
    except OSError as err:
        raise ActorError(f"cannot bind local port {bind_host}:{args.port}: {errno_name(err)}") from None
    try:
        sock.connect(to)
    except OSError as err:
        hint = "" if args.serve else " (pass --serve to start a server there)"
        raise ActorError(str(connect_error(err, to)) + hint) from None
    if listener is not None:
        accepted = accept_n(listener, 1, held)[0]
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((wildcard(family), args.port))
        probe.listen(1)
        service_bind = "ok"
    except OSError as err:
        service_bind = errno_name(err)
    finally:
        close_socket(probe)
    return {"port": args.port, "local": endpoint(sock.getsockname()),
            "remote": endpoint(sock.getpeername()), "served": args.serve,
            "server": endpoint(listener.getsockname()) if listener else None,
            "server_conn": ({"local": endpoint(accepted.getsockname()),
                             "remote": endpoint(accepted.getpeername())} if accepted else None),
            "service_bind": service_bind}


def _connect_many(held: Held, to: tuple[str, int], count: int, allow_exhaustion: bool,
                  range_: tuple[int, int]) -> tuple[list[int], int | None]:
    """``count`` connections to ``to`` from ephemeral ports: (local ports, index of EADDRNOTAVAIL)."""
    ports: list[int] = []
    for i in range(count):
        sock = socket.socket(family_of(to[0]), socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        try:
            sock.connect(to)
        except OSError as err:
            close_socket(sock)
            if err.errno == errno.EADDRNOTAVAIL:
                if allow_exhaustion:
                    return ports, i
                raise ActorError(
                    f"EADDRNOTAVAIL: ephemeral ports towards {to[0]}:{to[1]} exhausted after "
                    f"{i} connections (range {range_[0]}-{range_[1]}, local ports {sorted(ports)}); "
                    "pass --allow-exhaustion to hold that state") from None
            raise connect_error(err, to) from None
        held.add(sock)
        ports.append(sock.getsockname()[1])
    return ports, None


def scenario_exhaust(args: argparse.Namespace, held: Held) -> dict[str, Any]:
    """``--count`` connections to ``--to`` (and ``--count-also`` to ``--also``) from ephemeral ports.

    The actor listens on the destinations itself and accepts every connection,
    unless ``--no-serve``. With ``--allow-exhaustion`` an EADDRNOTAVAIL stops
    connecting to that destination and is reported under ``"exhausted"``
    instead of failing.
    """
    range_ = read_port_range()
    dests: list[tuple[tuple[str, int], int]] = [(parse_hostport(args.to), args.count)]
    if (args.also is None) != (args.count_also is None):
        raise ActorError("--also and --count-also go together")
    if args.also is not None:
        dests.append((parse_hostport(args.also), args.count_also))
    listeners = [tcp_listener(held, d[0], d[1], backlog=max(128, n + 16))
                 if not args.no_serve else None for d, n in dests]
    reports: list[dict[str, Any]] = []
    exhausted: list[dict[str, Any]] = []
    for (dest, count), listener in zip(dests, listeners):
        ports, failed_at = _connect_many(held, dest, count, args.allow_exhaustion, range_)
        if listener is not None:
            accept_n(listener, len(ports), held)
        reports.append({"to": endpoint(dest), "count": len(ports), "requested": count,
                        "local_ports": sorted(ports)})
        if failed_at is not None:
            exhausted.append({"to": endpoint(dest), "after": failed_at, "error": "EADDRNOTAVAIL"})
    return {"to": reports[0]["to"], "count": reports[0]["count"],
            "local_ports": reports[0]["local_ports"],
            "also": reports[1] if len(reports) > 1 else None,
            "destinations": reports, "exhausted": exhausted, "served": not args.no_serve,
            "range": list(range_)}


def scenario_close_wait(args: argparse.Namespace, held: Held) -> dict[str, Any]:
    """N server-side CLOSE_WAIT sockets held by this process.

    Clients in this process connect and close; the accepted sockets stay open.
    Returns once /proc/net/tcp{,6} shows every accepted socket (by inode) in
    CLOSE_WAIT, polling until ``--deadline``.
    """
    listener = tcp_listener(held, args.host, args.port, backlog=max(128, args.count + 16))
    server = listener.getsockname()
    clients = [client(held, (args.host, server[1])) for _ in range(args.count)]
    conns = accept_n(listener, args.count, held)
    client_ports = sorted(c.getsockname()[1] for c in clients)
    for c in clients:
        held.discard(c)
    if args.close_listener:
        held.discard(listener)
    inodes = {socket_inode(c): c for c in conns}
    deadline = time.monotonic() + args.deadline
    while True:
        states = {s.inode: s.state for s in read_proc_net("tcp") if s.inode in inodes}
        if len(states) == len(inodes) and set(states.values()) == {"CLOSE_WAIT"}:
            break
        if time.monotonic() > deadline:
            raise ActorError(f"accepted sockets not all in CLOSE_WAIT after {args.deadline}s: "
                             f"{sorted(states.values())}")
        time.sleep(0.01)
    return {"host": args.host, "port": server[1], "server": endpoint(server),
            "count": args.count, "holder_pid": os.getpid(),
            "listener_open": not args.close_listener, "client_ports": client_ports,
            "close_wait": [{"local": endpoint(c.getsockname()), "remote": endpoint(c.getpeername()),
                            "inode": ino} for ino, c in sorted(inodes.items())]}


def scenario_traffic(args: argparse.Namespace, held: Held) -> dict[str, Any]:
    """Healthy traffic: a server outside the range, ``--closed`` finished and ``--open`` live clients.

    Every client sends a line and reads the echo. Finished clients close first
    (client-side TIME_WAIT, the normal end of a connection) and the server
    closes its side on end of file.
    """
    low, high = read_port_range()
    if low <= args.port <= high:
        raise ActorError(f"--port {args.port} is inside ip_local_port_range {low}-{high}; "
                         "traffic must be healthy")
    listener = tcp_listener(held, args.host, args.port)
    target = (args.host, args.port)

    def exchange(index: int) -> tuple[socket.socket, socket.socket]:
        cli = client(held, target)
        srv = accept_n(listener, 1, held)[0]
        message = f"hello {index}\n".encode()
        cli.sendall(message)
        srv.sendall(_recv_exactly(srv, len(message)))
        if _recv_exactly(cli, len(message)) != message:
            raise ActorError("echo mismatch")
        return cli, srv

    closed: list[int] = []
    for i in range(args.closed):
        cli, srv = exchange(i)
        closed.append(cli.getsockname()[1])
        held.discard(cli)
        if srv.recv(1) != b"":
            raise ActorError("server expected end of file after the client closed")
        held.discard(srv)
    opened = [exchange(args.closed + i)[0].getsockname()[1] for i in range(args.open)]
    return {"server": endpoint(listener.getsockname()), "host": args.host, "port": args.port,
            "closed_client_ports": closed, "open_client_ports": opened, "range": [low, high]}


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes (each recv within the socket's timeout)."""
    data = b""
    for _ in range(size):  # at least one byte per successful recv
        if len(data) >= size:
            break
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ActorError(f"peer closed after {len(data)} of {size} bytes")
        data += chunk
    return data


SCENARIOS: dict[str, Callable[[argparse.Namespace, Held], dict[str, Any]]] = {
    "self-connect": scenario_self_connect,
    "loop-pair": scenario_loop_pair,
    "listen": scenario_listen,
    "hold-port": scenario_hold_port,
    "exhaust": scenario_exhaust,
    "close-wait": scenario_close_wait,
    "traffic": scenario_traffic,
}


# --------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors become ActorError (-> ``FAILED``, exit 1)."""

    def error(self, message: str) -> NoReturn:
        raise ActorError(f"usage: {self.prog}: {message}")


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser: one sub-command per scenario, common options on each."""
    common = _Parser(add_help=False)
    common.add_argument("--ignore-stdin", action="store_true",
                        help="do not exit when stdin reaches end of file (for manual runs)")
    common.add_argument("--lifetime", type=float, default=3600.0,
                        help="exit after holding this many seconds (default 3600)")
    parser = _Parser(prog="python -m tests.actors", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="scenario", required=True, parser_class=_Parser)

    p = sub.add_parser("self-connect", parents=[common], help="TCP socket connected to itself")
    p.add_argument("--host", help="local address to connect to (default loopback of --family)")
    p.add_argument("--family", type=int, choices=(4, 6), default=4)
    p.add_argument("--port", type=_port, help="target port (default: the highest in-range "
                   "port of the range's low-end parity that no socket uses)")
    p.add_argument("--max-attempts", type=int, default=200000,
                   help="default 200000: enough for the default range (~14000 ports of one parity)")
    p.add_argument("--deadline", type=float, default=60.0, help="seconds for all attempts")

    p = sub.add_parser("loop-pair", parents=[common], help="two sockets connected to each other")
    p.add_argument("--host", help="address of both sockets (default loopback of --family)")
    p.add_argument("--family", type=int, choices=(4, 6), default=4)
    p.add_argument("--port-a", type=_port, default=0, help="port of A (0: kernel's choice)")
    p.add_argument("--port-b", type=_port, default=0, help="port of B (0: kernel's choice)")
    p.add_argument("--max-attempts", type=int, default=10)

    p = sub.add_parser("listen", parents=[common], help="TCP listeners or bound UDP sockets")
    p.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    p.add_argument("--port", type=_port, action="append", required=True,
                   help="port to listen on (repeatable; 0: kernel's choice)")
    p.add_argument("--host", help="address to bind (default: wildcard of --family)")
    p.add_argument("--family", type=int, choices=(4, 6), default=4)

    p = sub.add_parser("hold-port", parents=[common], help="outgoing connection from a service port")
    p.add_argument("--port", type=_port, required=True, help="local port of the connection")
    p.add_argument("--to", required=True, help="HOST:PORT to connect to")
    p.add_argument("--serve", action="store_true", help="listen on --to first (and accept)")
    p.add_argument("--bind-host", help="local address to bind (default: wildcard)")

    p = sub.add_parser("exhaust", parents=[common], help="many connections to one destination")
    p.add_argument("--to", required=True, help="HOST:PORT of the destination")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--also", help="HOST:PORT of a second destination")
    p.add_argument("--count-also", type=int)
    p.add_argument("--no-serve", action="store_true", help="connect to existing listeners")
    p.add_argument("--allow-exhaustion", action="store_true",
                   help="report EADDRNOTAVAIL under 'exhausted' instead of failing")

    p = sub.add_parser("close-wait", parents=[common], help="CLOSE_WAIT sockets in this process")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8081, help="server port (default 8081)")
    p.add_argument("--close-listener", action="store_true",
                   help="close the listening socket once the connections are accepted")
    p.add_argument("--deadline", type=float, default=10.0,
                   help="seconds to wait for the kernel to show CLOSE_WAIT")

    p = sub.add_parser("traffic", parents=[common], help="healthy client/server traffic")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8080, help="server port, outside the range")
    p.add_argument("--closed", type=int, default=3, help="finished connections (TIME_WAIT)")
    p.add_argument("--open", type=int, default=2, help="open connections")
    return parser


def hold(lifetime: float, watch_stdin: bool) -> str:
    """Block until stdin reaches end of file or ``lifetime`` passes; returns which.

    SIGTERM/SIGINT interrupt it by raising :class:`Stop` from the handler.
    """
    deadline = time.monotonic() + lifetime
    fds: list[int] = []
    if watch_stdin:
        try:
            fds = [sys.stdin.fileno()]
        except (OSError, ValueError, AttributeError):
            return "eof"  # no stdin at all
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "lifetime"
        readable, _, _ = select.select(fds, [], [], min(remaining, 60.0))
        if readable:
            try:
                data = os.read(fds[0], 4096)
            except OSError:
                return "eof"
            if not data:
                return "eof"


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT: stop once (further signals are ignored while closing)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stop(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one scenario; 0 after a clean stop, 1 after ``FAILED``."""
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    held = Held()
    name = "actor"
    try:
        args = build_parser().parse_args(argv)
        name = args.scenario
        for opt in ("count", "count_also", "closed", "open", "max_attempts"):
            if getattr(args, opt, None) is not None and getattr(args, opt) < 0:
                raise ActorError(f"--{opt.replace('_', '-')} must not be negative")
        info = SCENARIOS[args.scenario](args, held)
        doc = {"scenario": args.scenario, "pid": os.getpid(), **info}
        sys.stdout.write("READY " + json.dumps(doc, sort_keys=True) + "\n")
        sys.stdout.flush()
        how = hold(args.lifetime, not args.ignore_stdin)
        if how == "lifetime":
            print(f"{name}: --lifetime {args.lifetime}s reached, exiting", file=sys.stderr)
        return 0
    except Stop:
        return 0
    except ActorError as err:
        _failed(f"{name}: {err}")
        return 1
    except OSError as err:
        _failed(f"{name}: unexpected {errno_name(err)}: {err}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        held.close_all()


def _failed(reason: str) -> None:
    """Print the ``FAILED`` line (one line, even if ``reason`` has several)."""
    try:
        sys.stdout.write("FAILED " + " ".join(reason.split()) + "\n")
        sys.stdout.flush()
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
