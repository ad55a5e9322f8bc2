"""The port sysctls of a network namespace: the local port range, reserved ports, the privileged limit.

Job: read and parse ``/proc/sys/net/ipv4/ip_local_port_range``,
``ip_local_reserved_ports`` and ``ip_unprivileged_port_start`` into a
:class:`~portwatch.model.KernelSettings`. May import the standard library,
:mod:`portwatch.model` and :mod:`portwatch.collect.errors`.
"""

from __future__ import annotations

import os
from pathlib import Path

from portwatch.collect.errors import CollectError, cause
from portwatch.model import KernelSettings, PortRange

__all__ = [
    "DEFAULT_UNPRIVILEGED_PORT_START",
    "parse_port_range",
    "parse_reserved_ports",
    "read_kernel_settings",
]

#: Value of ``ip_unprivileged_port_start`` assumed when the file does not exist
#: (kernels before 4.11, where ports below 1024 always needed privilege).
DEFAULT_UNPRIVILEGED_PORT_START = 1024

_SYSCTL_DIR = ("sys", "net", "ipv4")
_RANGE_FILE = "ip_local_port_range"
_RESERVED_FILE = "ip_local_reserved_ports"
_UNPRIV_FILE = "ip_unprivileged_port_start"

#: Bytes asked for per read (a sysctl file is read whole by the first).
_READ_SIZE = 65536


def _is_number(text: str) -> bool:
    """True when ``text`` is one or more ASCII digits (what ``[0-9]+`` matches whole)."""
    return text.isascii() and text.isdigit()


def _shorten(text: str, limit: int = 60) -> str:
    """``repr`` of ``text``, cut to about ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _read_text(path: Path | str, missing_ok: bool, dir_fd: int | None = None) -> str | None:
    """The contents of ``path`` (UTF-8, undecodable bytes replaced, newlines as ``\\n``); ``None``
    if it does not exist and ``missing_ok``.

    With ``dir_fd`` (an fd on ``path``'s directory) only its last component
    is looked up, relative to it. Reads with ``os.open``/``os.read``: four
    system calls for a sysctl file where a text file object takes seven,
    once per file and namespace. Raises :class:`CollectError` naming
    ``path`` for any other failure.
    """
    try:
        if dir_fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        else:
            fd = os.open(os.path.basename(path), os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            chunks = [os.read(fd, _READ_SIZE)]
            # a sysctl file gives all it has to the first read: a short one is the end (a
            # regular file too), so the read that would return b"" is left out
            while len(chunks[-1]) == _READ_SIZE:
                chunks.append(os.read(fd, _READ_SIZE))
        finally:
            os.close(fd)
    except FileNotFoundError as exc:
        if missing_ok:
            return None
        raise CollectError(f"{path}: {cause(exc)}") from None
    except OSError as exc:
        raise CollectError(f"{path}: {cause(exc)}") from None
    text = b"".join(chunks).decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def parse_port_range(text: str, source: str) -> PortRange:
    """Parse ``ip_local_port_range`` contents (``"32768\\t60999\\n"``).

    Takes the file's text and ``source``, the name used in error messages
    (normally the file's path). Returns the :class:`PortRange`. Raises
    :class:`CollectError` naming ``source`` unless the text is exactly two
    whitespace-separated integers with ``1 <= low <= high <= 65535``.
    """
    fields = text.split()
    if len(fields) != 2 or not all(_is_number(f) for f in fields):
        raise CollectError(
            f"{source}: expected two port numbers 'LOW HIGH', got {_shorten(text)}")
    low, high = int(fields[0]), int(fields[1])
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise CollectError(f"{source}: port {port} is outside 1..65535")
    if low > high:
        raise CollectError(f"{source}: range start {low} is above its end {high}")
    return PortRange(low, high)


def parse_reserved_ports(text: str, source: str) -> frozenset[int]:
    """Parse ``ip_local_reserved_ports`` contents (the kernel's port-list syntax).

    Accepts ``""`` or ``"\\n"`` (no ports), single ports (``"8080"``), ranges and
    comma-separated lists (``"1-3,8080,9000-9002"``), with whitespace tolerated
    around items and around a range's dash. Ports are 0..65535, as the kernel's
    bitmap allows. Returns every port listed (ranges expanded). Raises
    :class:`CollectError` naming ``source`` for anything else (empty items,
    reversed ranges, non-numbers, ports above 65535).
    """
    body = text.strip()
    if not body:
        return frozenset()
    ports: set[int] = set()
    for item in body.split(","):
        bounds = [b.strip() for b in item.split("-")]
        if not 1 <= len(bounds) <= 2 or not all(_is_number(b) for b in bounds):
            raise CollectError(
                f"{source}: {_shorten(item.strip())} is not a port or a LOW-HIGH range "
                f"(in {_shorten(body)})")
        low, high = int(bounds[0]), int(bounds[-1])
        if high > 65535:
            raise CollectError(f"{source}: port {high} is outside 0..65535")
        if low > high:
            raise CollectError(f"{source}: range {low}-{high} is reversed")
        ports.update(range(low, high + 1))
    return frozenset(ports)


def read_kernel_settings(proc_root: Path = Path("/proc")) -> KernelSettings:
    """Read the port sysctls of the caller's network namespace.

    Takes the proc mount to read (``proc_root/sys/net/ipv4/...``). Returns the
    :class:`KernelSettings`. Fallbacks: a missing ``ip_local_reserved_ports``
    means no reserved ports; a missing ``ip_unprivileged_port_start``
    (kernels before 4.11) means :data:`DEFAULT_UNPRIVILEGED_PORT_START`.
    Raises :class:`CollectError` naming the file when ``ip_local_port_range``
    is missing, when any of the three files exists but cannot be read, or when
    one holds garbage.
    """
    # strings, not Path objects: a pass over many namespaces reads these files in each
    base = os.path.join(os.fspath(proc_root), *_SYSCTL_DIR)
    range_path = f"{base}/{_RANGE_FILE}"
    try:
        # the directory once, each file relative to it: in a namespace other than the one
        # /proc/sys was last looked up in, every component of a path is looked up afresh
        dir_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CollectError(f"{range_path}: {cause(exc)}") from None
    try:
        range_text = _read_text(range_path, False, dir_fd)
        assert range_text is not None
        port_range = parse_port_range(range_text, range_path)
        reserved_path = f"{base}/{_RESERVED_FILE}"
        reserved_text = _read_text(reserved_path, True, dir_fd)
        unpriv_path = f"{base}/{_UNPRIV_FILE}"
        unpriv_text = _read_text(unpriv_path, True, dir_fd)
    finally:
        os.close(dir_fd)
    reserved = (frozenset() if reserved_text is None
                else parse_reserved_ports(reserved_text, reserved_path))
    if unpriv_text is None:
        unpriv = DEFAULT_UNPRIVILEGED_PORT_START
    else:
        value = unpriv_text.strip()
        if not _is_number(value) or int(value) > 65535:
            raise CollectError(
                f"{unpriv_path}: expected a port number 0..65535, got {_shorten(unpriv_text)}")
        unpriv = int(value)
    return KernelSettings(port_range=port_range, reserved=reserved,
                          unprivileged_port_start=unpriv)

