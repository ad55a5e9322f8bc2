"""The passive audit reader: portwatch's SYSCALL and SOCKADDR records from the audit multicast group.

Job: :func:`parse_record` (one audit message's text to its type, time,
serial and ``key=value`` fields), :func:`parse_saddr` (the hex ``struct
sockaddr`` of a SOCKADDR record to an endpoint), :class:`RecordJoiner`
(pairs the SYSCALL record of a portwatch rule with the SOCKADDR record of the
same serial, completes the event at its EOE record or, without one, after
``pair_timeout`` seconds, and reports a SYSCALL record whose pair never came)
and :class:`AuditReader` (a NETLINK_AUDIT socket joined to
``AUDIT_NLGRP_READLOG``, bounded non-blocking reads, ENOBUFS counted). Taking
a record never blocks auditd: the multicast group is best-effort, beside the
unicast stream to auditd. May import the standard library,
:mod:`portwatch.model` and the modules of :mod:`portwatch.collect`.

The kernel multicasts audit records only to readers in the initial network
namespace, and joining needs CAP_AUDIT_READ. One event, as the messages come::

    1300 audit(1764635200.512:3307): arch=c000003e syscall=42 success=no exit=-99 a0=3 ...
         ppid=801 pid=990 auid=4294967295 uid=0 ... comm="loadgen" exe="/usr/bin/python3.11" ...
         key="portwatch"
    1306 audit(1764635200.512:3307): saddr=02001389 7F000001 0000000000000000   (no spaces)
    1327 audit(1764635200.512:3307): proctitle=...
    1320 audit(1764635200.512:3307):                                           (EOE)
"""

from __future__ import annotations

import errno
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Final, Mapping

from portwatch.collect.audit import AUDIT_NLGRP_READLOG, PORTWATCH_KEY, open_audit_socket
from portwatch.collect.netlink import OVERRUN, recv_nowait
from portwatch.model import Endpoint, normalize_ip
from portwatch.model.failures import FailedCall

__all__ = [
    "AUDIT_EOE",
    "AUDIT_SOCKADDR",
    "AUDIT_SYSCALL",
    "AuditReader",
    "JoinedRecord",
    "Record",
    "RecordJoiner",
    "parse_record",
    "parse_saddr",
]

AUDIT_SYSCALL: Final = 1300
AUDIT_SOCKADDR: Final = 1306
AUDIT_EOE: Final = 1320

_HEADER: Final = re.compile(r"audit\((\d+)\.(\d+):(\d+)\):\s*")
_FIELD: Final = re.compile(r'(\w+)=("[^"]*"|\S+)')
_NLHDR: Final = struct.Struct("=IHHII")
_EXITS: Final = {-errno.EADDRNOTAVAIL: FailedCall.CONNECT, -errno.EADDRINUSE: FailedCall.BIND}


@dataclass(frozen=True)
class Record:
    """One audit record: its message ``type``, time ``at`` (Unix seconds), ``serial`` and fields.

    Quoted values lose their quotes; an unquoted value stays as sent (hex
    for strings the kernel escaped, see :func:`untrusted`).
    """

    type: int
    at: float
    serial: int
    fields: Mapping[str, str]


def parse_record(msg_type: int, text: str) -> Record | None:
    """The :class:`Record` of one message's text, or None when it has no ``audit(TIME:SERIAL):`` header."""
    m = _HEADER.match(text)
    if m is None:
        return None
    at = int(m.group(1)) + int(m.group(2)) / 10 ** len(m.group(2))
    fields = {k: v[1:-1] if v.startswith('"') and v.endswith('"') and len(v) > 1 else v
              for k, v in _FIELD.findall(text, m.end())}
    return Record(msg_type, at, int(m.group(3)), fields)


def untrusted(raw: str | None, quoted: bool) -> str | None:
    """A string field (``comm``, ``exe``): as is when it was quoted; hex-decoded when the kernel escaped it.

    ``(null)`` and a missing field are None; undecodable hex stays as sent.
    """
    if raw is None or raw == "(null)":
        return None
    if quoted:
        return raw
    try:
        return bytes.fromhex(raw).decode("utf-8", "replace")
    except ValueError:
        return raw


def parse_saddr(hexed: str) -> Endpoint | None:
    """The inet endpoint of a SOCKADDR record's ``saddr`` (hex ``struct sockaddr_in``/``_in6``), else None.

    ``sa_family`` is in host byte order, the port and address in network
    order. Other families (AF_UNIX, AF_NETLINK...) and truncated data give None.
    """
    try:
        raw = bytes.fromhex(hexed)
    except ValueError:
        return None
    if len(raw) < 2:
        return None
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET and len(raw) >= 8:
        return Endpoint(socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big"))
    if family == socket.AF_INET6 and len(raw) >= 24:
        ip = normalize_ip(socket.inet_ntop(socket.AF_INET6, raw[8:24]))
        return Endpoint(ip, int.from_bytes(raw[2:4], "big"))
    return None


@dataclass(frozen=True)
class JoinedRecord:
    """A portwatch SYSCALL record with its SOCKADDR (``address`` None when it never came: ``complete`` False).

    ``context``: what :class:`RecordJoiner`'s ``on_syscall`` read about the
    process when the SYSCALL record arrived (namespace, cgroup), while it
    still lived.
    """

    at: float
    serial: int
    call: FailedCall
    exit: int
    fields: Mapping[str, str]
    quoted: frozenset[str]
    address: Endpoint | None
    complete: bool
    context: object = None


@dataclass
class _Pending:
    record: Record
    quoted: frozenset[str]
    since: float
    context: object
    address: Endpoint | None = None
    paired: bool = False


def _quoted_names(text: str) -> frozenset[str]:
    return frozenset(k for k, v in _FIELD.findall(text) if v.startswith('"'))


@dataclass
class RecordJoiner:
    """Joins SYSCALL and SOCKADDR records by serial; bounded.

    ``RecordJoiner(pair_timeout=0.5, max_pending=4096, on_syscall=None,
    clock=time.monotonic)``. :meth:`feed` takes one message (type and text)
    and returns the events it completed; :meth:`flush` returns the events
    whose pair did not come within ``pair_timeout`` seconds (their SOCKADDR
    lost, or no EOE sent). Only SYSCALL records with the key ``portwatch``
    and an exit of -EADDRNOTAVAIL/-EADDRINUSE start an event; other records
    are ignored. ``on_syscall(pid)`` is called when such a record arrives
    (to read the process's namespace before it exits); what it returns is
    the event's ``context``. Beyond ``max_pending`` unfinished events the
    oldest is completed as it is. ``orphans`` counts SOCKADDR records of no
    known event.
    """

    pair_timeout: float = 0.5
    max_pending: int = 4096
    on_syscall: Callable[[int], object] | None = None
    clock: Callable[[], float] = time.monotonic
    orphans: int = 0
    _pending: dict[int, _Pending] = field(default_factory=dict)

    def feed(self, msg_type: int, text: str) -> list[JoinedRecord]:
        """Take one audit message; return the events it completed (usually none or one)."""
        if msg_type not in (AUDIT_SYSCALL, AUDIT_SOCKADDR, AUDIT_EOE):
            return []
        rec = parse_record(msg_type, text)
        if rec is None:
            return []
        if msg_type == AUDIT_SYSCALL:
            return self._syscall(rec, text)
        pending = self._pending.get(rec.serial)
        if pending is None:
            if msg_type == AUDIT_SOCKADDR:
                self.orphans += 1
            return []
        if msg_type == AUDIT_SOCKADDR:
            pending.address = parse_saddr(rec.fields.get("saddr", ""))
            pending.paired = True
            return []
        return [self._complete(rec.serial)]

    def _syscall(self, rec: Record, text: str) -> list[JoinedRecord]:
        quoted = _quoted_names(text)
        try:
            code = int(rec.fields.get("exit", ""))
        except ValueError:
            return []
        if code not in _EXITS or PORTWATCH_KEY not in _keys(rec.fields.get("key"), "key" in quoted):
            return []
        done: list[JoinedRecord] = []
        if len(self._pending) >= self.max_pending:
            done.append(self._complete(next(iter(self._pending))))
        context = None
        if self.on_syscall is not None:
            try:
                context = self.on_syscall(int(rec.fields.get("pid", "0")))
            except ValueError:
                context = None
        self._pending[rec.serial] = _Pending(rec, quoted, self.clock(), context)
        return done

    def flush(self, force: bool = False) -> list[JoinedRecord]:
        """The events older than ``pair_timeout`` (every pending one with ``force``), completed as they are."""
        now = self.clock()
        late = [s for s, p in self._pending.items() if force or now - p.since >= self.pair_timeout]
        return [self._complete(s) for s in late]

    def _complete(self, serial: int) -> JoinedRecord:
        p = self._pending.pop(serial)
        code = int(p.record.fields["exit"])
        return JoinedRecord(p.record.at, serial, _EXITS[code], code, p.record.fields, p.quoted, p.address,
                            p.paired, p.context)


def _keys(value: str | None, quoted: bool) -> list[str]:
    """The keys of a SYSCALL record's ``key`` field: quoted text, or (several keys) hex of keys joined by 0x01."""
    return (untrusted(value, quoted) or "").split("\x01")


@dataclass(frozen=True)
class ReadResult:
    """One read: the completed events, whether ENOBUFS was reported, the bound reached."""

    records: tuple[JoinedRecord, ...]
    lost: bool
    more: bool


def _size_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a ``size``-byte receive buffer: beyond rmem_max with CAP_NET_ADMIN, else up to it."""
    force = getattr(socket, "SO_RCVBUFFORCE", 33)
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class AuditReader:
    """A NETLINK_AUDIT socket joined to the read-only log group, in the calling thread's network namespace.

    ``AuditReader(joiner, factory=open_audit_socket, buffer_bytes=4 MiB)``.
    Raises ``PermissionError`` without CAP_AUDIT_READ and ``OSError`` when
    the kernel has no audit. Use :meth:`fileno` with a selector and
    :meth:`read` when readable (and now and then, so that events missing
    their pair are reported); ``dropped_total`` counts ENOBUFS (records the
    kernel dropped because the buffer was full). Not thread-safe.
    """

    def __init__(self, joiner: RecordJoiner, factory: Callable[[], socket.socket] = open_audit_socket, *,
                 buffer_bytes: int = 4 << 20) -> None:
        self.joiner = joiner
        self.dropped_total = 0
        self.records_total = 0
        self._buf = bytearray(1 << 16)
        sock = factory()
        try:
            sock.setblocking(False)
            _size_buffer(sock, buffer_bytes)
            sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def read(self, max_messages: int = 4096) -> ReadResult:
        """Read the queued messages without blocking (at most ``max_messages``); the events they completed.

        Events whose pair is overdue are completed too. Raises ``OSError``
        for a socket error other than EAGAIN/ENOBUFS/EINTR.
        """
        out: list[JoinedRecord] = []
        lost = False
        reads = 0
        while reads < max_messages:
            reads += 1
            n = recv_nowait(self._sock.recv_into, self._buf)
            if n is None:
                break
            if n == OVERRUN:
                self.dropped_total += 1
                lost = True
                continue
            off = 0
            while off + _NLHDR.size <= n:
                length, mtype = _NLHDR.unpack_from(self._buf, off)[:2]
                length = max(_NLHDR.size, min(length, n - off))
                text = bytes(self._buf[off + _NLHDR.size:off + length]).rstrip(b"\x00").decode("utf-8", "replace")
                self.records_total += 1
                out += self.joiner.feed(mtype, text)
                off += (length + 3) & ~3
        out += self.joiner.flush()
        return ReadResult(tuple(out), lost, reads >= max_messages)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._sock.close()

    def fileno(self) -> int:
        """The socket's file descriptor (readable when records are queued); -1 once closed."""
        return self._sock.fileno()
