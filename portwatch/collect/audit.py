"""The kernel's audit control over NETLINK_AUDIT: status, enabling, and portwatch's own rules.

Job: :class:`AuditControl` (one netlink socket speaking the audit control
protocol auditctl speaks: ``AUDIT_GET`` status, ``AUDIT_SET`` enabled,
``AUDIT_LIST_RULES``, ``AUDIT_ADD_RULE``/``AUDIT_DEL_RULE``), :class:`AuditRule`
(one ``struct audit_rule_data``, packed and parsed), :func:`failure_rules`
(the rules portwatch adds for this machine's architecture) and
:class:`AuditCapture` (start: enable auditing if it is off, reuse the rules
a crashed run left or add them; stop: remove exactly those and restore the
enabled state). The passive reader of the records is
:mod:`portwatch.collect.auditlog`. May import the standard library,
:mod:`portwatch.model` and the modules of :mod:`portwatch.collect`.

Wire layout (``include/uapi/linux/audit.h``; host byte order)::

    struct audit_status    { u32 mask, enabled, failure, pid, rate_limit, backlog_limit,
                             lost, backlog, feature_bitmap, backlog_wait_time,
                             backlog_wait_time_actual; }     (older kernels send fewer)
    struct audit_rule_data { u32 flags, action, field_count;
                             u32 mask[64];                    # syscalls, bit nr of word nr/32
                             u32 fields[64], values[64], fieldflags[64];
                             u32 buflen; char buf[]; }        # string values, in field order

The rules, as ``auditctl -l`` prints them (x86_64)::

    -a always,exit -F arch=b64 -S connect -F exit=-EADDRNOTAVAIL -F key=portwatch
    -a always,exit -F arch=b64 -S bind -F exit=-EADDRINUSE -F key=portwatch
    -a always,exit -F arch=b32 -S connect -F exit=-EADDRNOTAVAIL -F key=portwatch
    -a always,exit -F arch=b32 -S bind -F exit=-EADDRINUSE -F key=portwatch
    -a always,exit -F arch=b32 -S socketcall -F a0=0x3 -F exit=-EADDRNOTAVAIL -F key=portwatch
    -a always,exit -F arch=b32 -S socketcall -F a0=0x2 -F exit=-EADDRINUSE -F key=portwatch

32-bit processes: ``auditctl -S connect`` on ``arch=b32`` selects i386's
own ``connect`` (362) and ``bind`` (361), which Linux 4.3+ has; a 32-bit
libc may still multiplex them through ``socketcall`` (102, first argument
SYS_CONNECT = 3 / SYS_BIND = 2), so two more rules cover that path. The
32-bit rules are best-effort: a kernel without 32-bit support refusing
them leaves the 64-bit ones.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable, Final, Iterator, Sequence

from portwatch.collect.netlink import NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR

__all__ = [
    "AUDIT_ARCH",
    "AUDIT_NLGRP_READLOG",
    "NETLINK_AUDIT",
    "PORTWATCH_KEY",
    "AuditControl",
    "AuditError",
    "AuditRule",
    "AuditStatus",
    "failure_rules",
]

NETLINK_AUDIT: Final = 9
#: The multicast group of the "best effort" read-only log socket (needs CAP_AUDIT_READ).
AUDIT_NLGRP_READLOG: Final = 1

AUDIT_GET: Final = 1000
AUDIT_SET: Final = 1001
AUDIT_ADD_RULE: Final = 1011
AUDIT_DEL_RULE: Final = 1012
AUDIT_LIST_RULES: Final = 1013
AUDIT_STATUS_ENABLED: Final = 0x0001
AUDIT_STATUS_BACKLOG_LIMIT: Final = 0x0010

AUDIT_FILTER_EXIT: Final = 0x04
AUDIT_ALWAYS: Final = 2
AUDIT_ARCH_FIELD: Final = 11
AUDIT_EXIT: Final = 103
AUDIT_ARG0: Final = 200
AUDIT_FILTERKEY: Final = 210
AUDIT_EQUAL: Final = 0x40000000
AUDIT_MAX_FIELDS: Final = 64
AUDIT_BITMASK_SIZE: Final = 64
#: The separator of several keys in one key field (auditctl's AUDIT_KEY_SEPARATOR).
KEY_SEPARATOR: Final = "\x01"
#: Fields whose value is a string in ``buf`` (its length in ``values``): kernel audit_data_to_entry.
_STRING_FIELDS: Final = frozenset({13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 105, 107, 112, AUDIT_FILTERKEY})

#: Asks the kernel to acknowledge a request (include/uapi/linux/netlink.h).
NLM_F_ACK: Final = 0x04

#: The key every portwatch rule carries; rules with it are portwatch's, others are never touched.
PORTWATCH_KEY: Final = "portwatch"

#: ``os.uname().machine`` -> {"b64"/"b32": (AUDIT_ARCH value, connect, bind, socketcall or None)}.
AUDIT_ARCH: Final[dict[str, dict[str, tuple[int, int, int, int | None]]]] = {
    "x86_64": {"b64": (0xC000003E, 42, 49, None), "b32": (0x40000003, 362, 361, 102)},
    "aarch64": {"b64": (0xC00000B7, 203, 200, None), "b32": (0x40000028, 283, 282, None)},
}
_SYS_CONNECT: Final = 3
_SYS_BIND: Final = 2

_HDR: Final = struct.Struct("=IHHII")
_RULE_HEAD: Final = struct.Struct(f"=III{AUDIT_BITMASK_SIZE}I{AUDIT_MAX_FIELDS}I{AUDIT_MAX_FIELDS}I"
                                  f"{AUDIT_MAX_FIELDS}II")
_STATUS_FIELDS: Final = ("mask", "enabled", "failure", "pid", "rate_limit", "backlog_limit", "lost",
                         "backlog", "feature_bitmap", "backlog_wait_time")
_STATUS: Final = struct.Struct("=" + "I" * len(_STATUS_FIELDS))


class AuditError(OSError):
    """The audit subsystem refused or is missing; ``errno`` says why (EPERM, ECONNREFUSED, EPROTONOSUPPORT...)."""


@dataclass(frozen=True)
class AuditStatus:
    """``AUDIT_GET``: ``enabled`` (0 off, 1 on, 2 locked), ``pid`` (auditd's, 0 without), ``lost``, ``backlog_limit``."""

    enabled: int
    pid: int
    lost: int
    backlog_limit: int


@dataclass(frozen=True)
class AuditRule:
    """One audit rule as ``struct audit_rule_data`` holds it.

    ``syscalls``: the syscall numbers of its mask; ``fields``: ``(field,
    operator, value)`` triples in order (a string field's value is its
    length); ``strings``: the string values in field order.
    """

    flags: int
    action: int
    syscalls: frozenset[int]
    fields: tuple[tuple[int, int, int], ...]
    strings: tuple[str, ...] = ()
    raw: bytes = field(default=b"", compare=False, repr=False)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys (``-k``) of the rule: its AUDIT_FILTERKEY strings, split on the key separator."""
        out: list[str] = []
        strings = iter(self.strings)
        for f, _op, _value in self.fields:
            if f in _STRING_FIELDS:
                text = next(strings, "")
                if f == AUDIT_FILTERKEY:
                    out.extend(text.split(KEY_SEPARATOR))
        return tuple(out)

    def pack(self) -> bytes:
        """The ``struct audit_rule_data`` bytes (``raw`` itself when the rule came from the kernel)."""
        if self.raw:
            return self.raw
        mask = [0] * AUDIT_BITMASK_SIZE
        for nr in self.syscalls:
            mask[nr // 32] |= 1 << (nr % 32)
        pad = [0] * (AUDIT_MAX_FIELDS - len(self.fields))
        names = [f for f, _o, _v in self.fields] + pad
        ops = [o for _f, o, _v in self.fields] + pad
        values = [v & 0xFFFFFFFF for _f, _o, v in self.fields] + pad
        buf = "".join(self.strings).encode()
        return _RULE_HEAD.pack(self.flags, self.action, len(self.fields), *mask, *names, *values,
                               *ops, len(buf)) + buf

    @classmethod
    def unpack(cls, data: bytes) -> AuditRule:
        """The rule of ``struct audit_rule_data`` bytes; ``ValueError`` when they are too short."""
        if len(data) < _RULE_HEAD.size:
            raise ValueError(f"audit_rule_data of {len(data)} bytes, need {_RULE_HEAD.size}")
        v = _RULE_HEAD.unpack_from(data)
        flags, action, count = v[0], v[1], min(v[2], AUDIT_MAX_FIELDS)
        mask = v[3:3 + AUDIT_BITMASK_SIZE]
        base = 3 + AUDIT_BITMASK_SIZE
        names = v[base:base + AUDIT_MAX_FIELDS]
        values = v[base + AUDIT_MAX_FIELDS:base + 2 * AUDIT_MAX_FIELDS]
        ops = v[base + 2 * AUDIT_MAX_FIELDS:base + 3 * AUDIT_MAX_FIELDS]
        buflen = v[-1]
        buf = data[_RULE_HEAD.size:_RULE_HEAD.size + buflen]
        syscalls = frozenset(w * 32 + b for w, word in enumerate(mask) for b in range(32) if word >> b & 1)
        fields = tuple((names[i], ops[i], values[i]) for i in range(count))
        strings: list[str] = []
        at = 0
        for f, _op, length in fields:
            if f in _STRING_FIELDS:
                strings.append(buf[at:at + length].decode("utf-8", "replace"))
                at += length
        return cls(flags, action, syscalls, fields, tuple(strings), raw=bytes(data[:_RULE_HEAD.size + buflen]))


def _rule(arch: int, syscall: int, exit_errno: int, arg0: int | None = None) -> AuditRule:
    fields = [(AUDIT_ARCH_FIELD, AUDIT_EQUAL, arch)]
    if arg0 is not None:
        fields.append((AUDIT_ARG0, AUDIT_EQUAL, arg0))
    fields += [(AUDIT_EXIT, AUDIT_EQUAL, -exit_errno & 0xFFFFFFFF), (AUDIT_FILTERKEY, AUDIT_EQUAL, len(PORTWATCH_KEY))]
    return AuditRule(AUDIT_FILTER_EXIT, AUDIT_ALWAYS, frozenset({syscall}), tuple(fields), (PORTWATCH_KEY,))


def failure_rules(machine: str | None = None) -> tuple[tuple[AuditRule, ...], tuple[AuditRule, ...]]:
    """The rules for ``machine`` (``os.uname().machine`` by default): ``(64-bit rules, 32-bit rules)``.

    Each: ``always,exit`` on connect with exit = -EADDRNOTAVAIL and on bind
    with exit = -EADDRINUSE, arch-qualified, key ``portwatch``; the 32-bit
    set adds the ``socketcall`` forms where the architecture has it. Raises
    ``LookupError`` for an architecture without a table here.
    """
    name = machine or os.uname().machine
    table = AUDIT_ARCH.get(name)
    if table is None:
        raise LookupError(f"no audit syscall table for architecture {name!r} "
                          f"(known: {', '.join(sorted(AUDIT_ARCH))})")
    out: list[tuple[AuditRule, ...]] = []
    for bits in ("b64", "b32"):
        arch, connect, bind, socketcall = table[bits]
        rules = [_rule(arch, connect, errno.EADDRNOTAVAIL), _rule(arch, bind, errno.EADDRINUSE)]
        if socketcall is not None:
            rules += [_rule(arch, socketcall, errno.EADDRNOTAVAIL, _SYS_CONNECT),
                      _rule(arch, socketcall, errno.EADDRINUSE, _SYS_BIND)]
        out.append(tuple(rules))
    return out[0], out[1]


def open_audit_socket() -> socket.socket:
    """A close-on-exec ``AF_NETLINK``/``NETLINK_AUDIT`` raw socket; ``OSError`` when the kernel has no audit."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)


class AuditControl:
    """The audit control protocol on one netlink socket (what auditctl does, without auditctl).

    ``AuditControl(factory=open_audit_socket, timeout=5)``. Every method
    raises :class:`AuditError` with the kernel's errno when it refuses
    (EPERM without CAP_AUDIT_CONTROL; ECONNREFUSED outside the initial user
    namespace; EEXIST adding a rule that exists; ENOENT deleting one that
    does not), ``TimeoutError`` when no answer comes. Also a context manager.
    """

    def __init__(self, factory: Callable[[], socket.socket] = open_audit_socket, timeout: float = 5.0) -> None:
        try:
            self._sock = factory()
        except OSError as exc:
            raise AuditError(exc.errno or errno.EPROTONOSUPPORT,
                             f"cannot open a NETLINK_AUDIT socket: {os.strerror(exc.errno or 0)}") from exc
        try:
            self._sock.settimeout(timeout)
            self._sock.bind((0, 0))
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0
        self._buf = bytearray(1 << 16)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self._sock.close()

    def __enter__(self) -> AuditControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, msg_type: int, payload: bytes, what: str, until: int | None = None,
                 ) -> Iterator[tuple[int, bytes]]:
        """Send one request; yield ``(type, payload)`` of each answer until the end.

        ``until`` None: the request asks for an acknowledgement, which ends
        it. Otherwise the kernel answers from a thread of its own, so an
        acknowledgement could overtake the answer: none is asked for, and the
        first message of type ``until`` (or NLMSG_DONE) ends it, after being
        yielded.
        """
        self._seq = self._seq % 0x7FFFFFFF + 1
        seq = self._seq
        flags = NLM_F_REQUEST | (NLM_F_ACK if until is None else 0)
        self._sock.send(_HDR.pack(_HDR.size + len(payload), msg_type, flags, seq, 0) + payload)
        while True:
            try:
                n = self._sock.recv_into(self._buf)
            except socket.timeout:
                raise TimeoutError(f"audit {what}: no answer from the kernel") from None
            off = 0
            while off + _HDR.size <= n:
                length, mtype, _flags, mseq, _pid = _HDR.unpack_from(self._buf, off)
                if length < _HDR.size or off + length > n:
                    raise AuditError(errno.EPROTO, f"audit {what}: malformed netlink message")
                body = bytes(self._buf[off + _HDR.size:off + length])
                off += (length + 3) & ~3
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    (status,) = struct.unpack_from("=i", body)
                    if status:
                        raise AuditError(-status, f"audit {what}: {os.strerror(-status)}")
                    return
                if mtype == NLMSG_DONE:
                    return
                yield mtype, body
                if mtype == until:
                    return

    def status(self) -> AuditStatus:
        """``AUDIT_GET``: whether auditing is enabled, auditd's pid, records lost."""
        found: AuditStatus | None = None
        for mtype, body in self._request(AUDIT_GET, b"", "status", until=AUDIT_GET):
            if mtype == AUDIT_GET:
                values = dict(zip(_STATUS_FIELDS, struct.unpack_from(
                    "=" + "I" * min(len(body) // 4, len(_STATUS_FIELDS)), body)))
                found = AuditStatus(values.get("enabled", 0), values.get("pid", 0), values.get("lost", 0),
                                    values.get("backlog_limit", 0))
        if found is None:
            raise AuditError(errno.EPROTO, "audit status: the kernel sent no status")
        return found

    def set_enabled(self, enabled: int) -> None:
        """``AUDIT_SET`` enabled = ``enabled`` (0 or 1; EPERM when locked at 2)."""
        self._set(AUDIT_STATUS_ENABLED, enabled=enabled)

    def set_backlog_limit(self, limit: int) -> None:
        """``AUDIT_SET`` backlog_limit = ``limit``: records queued in the kernel before callers wait or records are lost."""
        self._set(AUDIT_STATUS_BACKLOG_LIMIT, backlog_limit=limit)

    def _set(self, mask: int, **values: int) -> None:
        fields = {name: 0 for name in _STATUS_FIELDS} | values | {"mask": mask}
        for _ in self._request(AUDIT_SET, _STATUS.pack(*(fields[n] for n in _STATUS_FIELDS)), "set status"):
            pass

    def list_rules(self) -> list[AuditRule]:
        """``AUDIT_LIST_RULES``: every rule of every filter list, in the kernel's order."""
        return [AuditRule.unpack(body) for mtype, body in self._request(AUDIT_LIST_RULES, b"", "list rules",
                                                                    until=NLMSG_DONE)
                if mtype == AUDIT_LIST_RULES]

    def add_rule(self, rule: AuditRule) -> None:
        """``AUDIT_ADD_RULE`` (appended to its filter list)."""
        for _ in self._request(AUDIT_ADD_RULE, rule.pack(), "add rule"):
            pass

    def delete_rule(self, rule: AuditRule) -> None:
        """``AUDIT_DEL_RULE``: the kernel deletes the rule equal to this one (fields, values, mask, key)."""
        for _ in self._request(AUDIT_DEL_RULE, rule.pack(), "delete rule"):
            pass


def is_portwatch_rule(rule: AuditRule) -> bool:
    """True if ``rule`` carries the key ``portwatch`` (alone or among others)."""
    return PORTWATCH_KEY in rule.keys


def same_rule(a: AuditRule, b: AuditRule) -> bool:
    """True if the two rules select the same records (flags, action, syscalls, fields, strings)."""
    return (a.flags & 0x0F, a.action, a.syscalls, a.fields, a.strings) == \
        (b.flags & 0x0F, b.action, b.syscalls, b.fields, b.strings)


def install_rules(control: AuditControl, wanted: Sequence[AuditRule], optional: Sequence[AuditRule] = (),
                  ) -> tuple[list[AuditRule], int, list[str]]:
    """Make the kernel hold ``wanted`` (and, best-effort, ``optional``), reusing equal rules it has.

    Returns ``(rules now held, how many were reused, notes)``: a rule equal
    to one already listed (a crashed run's) is reused, not added twice; an
    ``optional`` rule the kernel refuses with EINVAL/EOPNOTSUPP is noted and
    skipped. Raises :class:`AuditError` when a ``wanted`` rule is refused
    (the rules added so far are deleted again first).
    """
    present = [r for r in control.list_rules() if is_portwatch_rule(r)]
    held: list[AuditRule] = []
    reused = 0
    notes: list[str] = []
    added: list[AuditRule] = []
    for rule in (*wanted, *optional):
        if any(same_rule(rule, p) for p in present):
            held.append(rule)
            reused += 1
            continue
        try:
            control.add_rule(rule)
        except AuditError as exc:
            if rule in optional and exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                notes.append(f"32-bit audit rules refused by the kernel ({os.strerror(exc.errno)}): "
                             "failures of 32-bit processes are not captured")
                continue
            for done in added:
                try:
                    control.delete_rule(done)
                except OSError:
                    pass
            raise
        added.append(rule)
        held.append(rule)
    return held, reused, list(dict.fromkeys(notes))
