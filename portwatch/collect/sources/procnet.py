"""The /proc socket source: ``/proc/thread-self/net/{tcp,tcp6,udp,udp6}`` parsed into a socket table.

Job: :func:`parse_proc_net` (pure: the text of one such file into
:class:`~portwatch.model.Socket`\\ s) and :class:`ProcNetSource`, which reads
the four files of the calling thread's network namespace. It is the fallback
inside other namespaces when NETLINK_SOCK_DIAG is not available there: psutil
cannot serve (it reads ``/proc/net``, which follows the main thread's
namespace, not the entering thread's). It costs several times what netlink
does (the kernel formats text, Python parses it) and reports no cgroup id.
May import the standard library, :mod:`portwatch.model` and
:mod:`portwatch.collect.errors`.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from portwatch.collect.errors import SourceReadError, cause
from portwatch.model import KERNEL_TCP_STATES, Endpoint, Family, Protocol, Socket, SocketState, SocketTable
from portwatch.model import normalize_ip

__all__ = ["FILES", "ProcNetSource", "parse_proc_net"]

#: The files of one read: (file name, protocol, family).
FILES: tuple[tuple[str, Protocol, Family], ...] = (
    ("tcp", Protocol.TCP, Family.IPV4),
    ("tcp6", Protocol.TCP, Family.IPV6),
    ("udp", Protocol.UDP, Family.IPV4),
    ("udp6", Protocol.UDP, Family.IPV6),
)


def _address(text: str, family: Family) -> Endpoint:
    """``0100007F:1F90`` (the kernel's hex, address words in host order) -> Endpoint."""
    hex_ip, _, hex_port = text.partition(":")
    raw = bytes.fromhex(hex_ip)
    words = struct.unpack(f"={len(raw) // 4}I", raw)  # each word is printed as a host int
    packed = struct.pack(f">{len(words)}I", *words)
    af = socket.AF_INET if family is Family.IPV4 else socket.AF_INET6
    return Endpoint(normalize_ip(socket.inet_ntop(af, packed)), int(hex_port, 16))


def parse_proc_net(text: str, protocol: Protocol, family: Family) -> list[Socket]:
    """The sockets listed in the text of ``/proc/net/tcp`` (``tcp6``, ``udp``, ``udp6``).

    Takes the file's text (header line first), its protocol and family.
    States are the kernel's numbers (UDP: 1 connected, 7 unconnected); a
    remote of port 0 and an all-zero address means none. Returns the sockets
    in file order with their inode and uid (``cgroup_id`` ``None``). Raises
    ``ValueError`` naming the line for a line that cannot be read.
    """
    sockets: list[Socket] = []
    for number, line in enumerate(text.splitlines()[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        try:
            local = _address(fields[1], family)
            remote: Endpoint | None = _address(fields[2], family)
            kernel_state = int(fields[3], 16)
            uid, inode = int(fields[7]), int(fields[9])
        except (IndexError, ValueError, struct.error, OSError) as exc:
            raise ValueError(f"line {number}: cannot read {line.strip()[:80]!r} ({exc})") from None
        if protocol is Protocol.TCP:
            state = KERNEL_TCP_STATES.get(kernel_state)
            if state is None:
                continue  # a state the model has no name for (e.g. TCP_BOUND_INACTIVE)
        else:
            state = SocketState.ESTABLISHED if kernel_state == 1 else SocketState.UNCONN
        if remote is not None and remote.port == 0 and remote.ip in ("0.0.0.0", "::"):
            remote = None
        sockets.append(Socket(protocol, family, state, local, remote, inode, uid))
    return sockets


class ProcNetSource:
    """Reads the calling thread's namespace's sockets from ``proc_root/thread-self/net``.

    Implements :class:`portwatch.model.SocketSource`; owners are not known.
    Must run in the thread that entered the namespace (see
    :func:`portwatch.collect.run_in_namespace`). A missing ``tcp6``/``udp6``
    (IPv6 disabled) counts as no socket.
    """

    name = "procnet"

    def __init__(self, proc_root: Path = Path("/proc")) -> None:
        """Take the proc mount."""
        self.base = Path(proc_root) / "thread-self" / "net"

    def read(self) -> SocketTable:
        """Read the four files. Raises :class:`SourceReadError` naming the file that
        cannot be read or parsed (a missing ``tcp`` or ``udp`` too)."""
        sockets: list[Socket] = []
        for name, protocol, family in FILES:
            path = self.base / name
            try:
                text = path.read_text()
            except FileNotFoundError:
                if family is Family.IPV6:
                    continue
                raise SourceReadError(f"{path}: no such file") from None
            except OSError as exc:
                raise SourceReadError(f"{path}: {cause(exc)}") from None
            try:
                sockets.extend(parse_proc_net(text, protocol, family))
            except ValueError as exc:
                raise SourceReadError(f"{path}: {exc}") from None
        return SocketTable(sockets=tuple(sockets))
