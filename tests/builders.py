"""Hand-built snapshots for detector tests: terse constructors for sockets and snapshots."""

from __future__ import annotations

import itertools
from typing import Iterable, Mapping

from portwatch.model import (
    Endpoint,
    Family,
    KernelSettings,
    PortRange,
    ProcessInfo,
    Protocol,
    Snapshot,
    Socket,
    SocketState,
    normalize_ip,
)

_inodes = itertools.count(1000)


def ep(text: str) -> Endpoint:
    """``"127.0.0.1:80"`` or ``"[::1]:80"`` to an Endpoint (addresses normalised)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    return Endpoint(normalize_ip(host), int(port))


def _family(text: str) -> Family:
    return Family.IPV6 if text.startswith("[") else Family.IPV4


def tcp(local: str, remote: str | None = None, state: str = "ESTABLISHED", inode: int | None = None,
        uid: int | None = 0) -> Socket:
    """A TCP socket; ``remote`` None means a listener unless ``state`` says otherwise."""
    st = SocketState[state] if remote is not None or state != "ESTABLISHED" else SocketState.LISTEN
    return Socket(Protocol.TCP, _family(local), st, ep(local), ep(remote) if remote else None,
                  next(_inodes) if inode is None else inode, uid)


def listen(local: str, inode: int | None = None) -> Socket:
    """A TCP listener."""
    return tcp(local, None, "LISTEN", inode)


def udp(local: str, remote: str | None = None, inode: int | None = None) -> Socket:
    """A UDP socket, connected when ``remote`` is given."""
    st = SocketState.ESTABLISHED if remote else SocketState.UNCONN
    return Socket(Protocol.UDP, _family(local), st, ep(local), ep(remote) if remote else None,
                  next(_inodes) if inode is None else inode, 0)


def snap(sockets: Iterable[Socket], port_range: tuple[int, int] = (32768, 60999),
         reserved: Iterable[int] = (), unprivileged: int = 1024,
         owners: Mapping[Socket, int] | None = None,
         processes: Iterable[ProcessInfo] = ()) -> Snapshot:
    """A snapshot of ``sockets``; ``owners`` maps a socket to its owning pid."""
    own = {s.inode: (pid,) for s, pid in (owners or {}).items()}
    return Snapshot(
        settings=KernelSettings(PortRange(*port_range), frozenset(reserved), unprivileged),
        sockets=tuple(sockets),
        taken_at=1_700_000_000.0,
        owners=own,
        processes={p.pid: p for p in processes},
        source="test",
    )


def proc(pid: int, name: str, unit: str | None = None) -> ProcessInfo:
    """A described process."""
    return ProcessInfo(pid=pid, name=name, cmdline=(name,), user="root", unit=unit)
