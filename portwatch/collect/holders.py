"""Who holds a port right now: a sock_diag dump filtered by the kernel to one source port.

Job: :func:`build_port_request` (one ``SOCK_DIAG_BY_FAMILY`` dump request
carrying an ``INET_DIAG_REQ_BYTECODE`` filter, the program ``ss 'sport = :P'``
sends), :func:`dump_port` (the sockets of the calling thread's network
namespace whose local port is P, parsed by
:func:`portwatch.collect.netlink.parse_messages`) and :func:`port_holders`
(those sockets in a given namespace, entered with
:func:`~portwatch.collect.namespaces.run_in_namespace`, with their owners from
the ``/proc/PID/fd`` walk). The kernel walks its socket hash once per
family and protocol and sends back only the matches, so the answer costs a
few kilobytes whatever the table's size. May import the standard library,
:mod:`portwatch.model` and the modules of :mod:`portwatch.collect`.

The filter program (``include/uapi/linux/inet_diag.h``; checked by the
kernel's ``inet_diag_bc_audit``, run by ``inet_diag_bc_run``)::

    struct inet_diag_bc_op { u8 code; u8 yes; u16 no; }
    op 0: { INET_DIAG_BC_S_EQ, yes = 8, no = 12 }   # sport == port ? jump 8 (to the end: match)
    op 1: { 0, 0, port }                             #   : jump 12 (past the end: no match)

A socket matches when the program's length is used up exactly (``len ==
0``); jumping to ``len + 4`` is how ``ss`` writes "reject".
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Callable, Final, Sequence

from portwatch.collect.namespaces import run_in_namespace
from portwatch.collect.netlink import (
    NETLINK_SOCK_DIAG,
    TCP_STATES_MASK,
    UDP_STATES_MASK,
    build_request,
    parse_messages,
    run_dump,
)
from portwatch.collect.owners import find_socket_owners
from portwatch.collect.processes import describe_processes
from portwatch.model import NamespaceInfo, Protocol, Socket
from portwatch.model.failures import Holder

__all__ = [
    "INET_DIAG_BC_S_EQ",
    "INET_DIAG_REQ_BYTECODE",
    "build_port_request",
    "dump_port",
    "port_holders",
]

#: Request attribute carrying the filter program (enum of inet_diag.h: INET_DIAG_REQ_NONE = 0).
INET_DIAG_REQ_BYTECODE: Final = 1
#: Filter operation "source port equals" (its port in the following op's ``no``), Linux 4.16+.
INET_DIAG_BC_S_EQ: Final = 11

_BC_OP: Final = struct.Struct("=BBH")
_NLA: Final = struct.Struct("=HH")
_PROTO_NUMBERS: Final = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP}
_STATES: Final = {Protocol.TCP: TCP_STATES_MASK, Protocol.UDP: UDP_STATES_MASK}


def port_filter(port: int) -> bytes:
    """The bytecode of "local port == ``port``" (two 4-byte ops). Raises ``struct.error`` outside 0..65535."""
    return _BC_OP.pack(INET_DIAG_BC_S_EQ, 8, 12) + _BC_OP.pack(0, 0, port)


def build_port_request(seq: int, family: int, protocol: Protocol, port: int) -> bytes:
    """The bytes of one dump request for the sockets of ``family``/``protocol`` whose local port is ``port``.

    ``nlmsghdr`` + ``inet_diag_req_v2`` (every state of the protocol) + one
    ``INET_DIAG_REQ_BYTECODE`` attribute holding :func:`port_filter`.
    Raises ``struct.error`` for out-of-range numbers.
    """
    program = port_filter(port)
    attr = _NLA.pack(_NLA.size + len(program), INET_DIAG_REQ_BYTECODE) + program
    return build_request(seq, family, _PROTO_NUMBERS[protocol], _STATES[protocol], attr)


def dump_port(port: int, protocols: Sequence[Protocol] = (Protocol.TCP, Protocol.UDP),
              timeout: float = 5.0) -> list[Socket]:
    """The sockets of the calling thread's network namespace whose local port is ``port``.

    Takes the port, the protocols to dump (IPv4 and IPv6 each) and a time
    limit in seconds for the whole dump. Returns the sockets in dump order.
    Raises ``OSError`` when netlink refuses (e.g. a kernel older than 4.16
    rejects the filter with EINVAL), :class:`~portwatch.collect.netlink.NetlinkError`
    for a malformed answer and ``TimeoutError`` after ``timeout``.
    """
    out: list[Socket] = []
    deadline = time.monotonic() + timeout
    late = f"sock_diag dump of port {port}: no answer after {timeout}s"
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        view = memoryview(bytearray(1 << 16))
        seq = 0
        for protocol in protocols:
            for family in (socket.AF_INET, socket.AF_INET6):
                seq += 1

                def parse(n: int) -> bool:  # called within this iteration
                    return parse_messages(view, protocol=protocol, seq=seq, family=family, out=out,
                                          length=n)[1]

                run_dump(sock, build_port_request(seq, family, protocol, port), parse, view,
                         deadline=deadline, late=late)
    return [s for s in out if s.local.port == port]


#: Runs a callable in a namespace: ``run(namespace, fn)`` (run_in_namespace by default).
Runner = Callable[[NamespaceInfo, Callable[[], list[Socket]]], list[Socket]]


def _run(ns: NamespaceInfo, fn: Callable[[], list[Socket]]) -> list[Socket]:
    return run_in_namespace(ns, fn)


def port_holders(port: int, namespace: NamespaceInfo | None = None, *,
                 protocols: Sequence[Protocol] = (Protocol.TCP, Protocol.UDP),
                 proc_root: Path = Path("/proc"), run: Runner = _run) -> tuple[Holder, ...]:
    """The sockets holding ``port`` in ``namespace`` (the own one when None) with their owners.

    TIME_WAIT and NEW_SYN_RECV entries are left out (no process holds them).
    Owners come from one walk of ``proc_root/*/fd`` for the holders' inodes
    and :func:`~portwatch.collect.processes.describe_processes`. Raises what
    :func:`dump_port` and :func:`run_in_namespace` raise
    (:class:`~portwatch.collect.namespaces.NamespaceVanished`,
    ``PermissionError``, ``OSError``).
    """
    def dump() -> list[Socket]:
        return dump_port(port, protocols)

    found = dump() if namespace is None or namespace.own else run(namespace, dump)
    live = [s for s in found if s.inode > 0]
    if not live:
        return ()
    owners = find_socket_owners({s.inode for s in live}, proc_root).owners
    pids = sorted({pid for s in live for pid in owners.get(s.inode, ())})
    described = describe_processes(pids, proc_root)
    return tuple(Holder(s, tuple(described[p] for p in owners.get(s.inode, ()) if p in described))
                 for s in live)
