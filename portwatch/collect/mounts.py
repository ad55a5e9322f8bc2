"""The mount table: which filesystems are mounted where (``/proc/self/mountinfo``).

Job: :func:`parse_mountinfo` (pure) and :func:`read_mountinfo`, used to find
the cgroup2 mount and the nsfs bind mounts of network namespaces. May import
the standard library only.
"""

from __future__ import annotations

from pathlib import Path

from portwatch.lazy import LazyPattern
from portwatch.model.records import NamedTuple

__all__ = ["Mount", "parse_mountinfo", "read_mountinfo"]

_ESCAPE = LazyPattern(r"\\([0-7]{3})")


class Mount(NamedTuple):
    """One line of mountinfo: ``root`` is the mounted object's path inside its
    filesystem (for nsfs: ``net:[4026532...]``), ``mount_point`` where it is
    mounted, ``fstype`` the filesystem type (``cgroup2``, ``nsfs``)."""

    root: str
    mount_point: str
    fstype: str


def _unescape(text: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    if "\\" not in text:
        return text  # no escape (the pattern is compiled only for a table that has one)
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse the text of a ``mountinfo`` file.

    Each line is ``ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] -
    FSTYPE SOURCE SUPEROPTIONS``. Returns the mounts in file order; lines
    that do not have that shape are skipped. Never raises.
    """
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            dash = fields.index("-", 6)
        except ValueError:
            continue
        if dash + 1 >= len(fields):
            continue
        mounts.append(Mount(_unescape(fields[3]), _unescape(fields[4]), fields[dash + 1]))
    return mounts


def read_mountinfo(path: Path = Path("/proc/self/mountinfo")) -> list[Mount]:
    """The mounts listed in ``path``; an empty list when it cannot be read."""
    try:
        return parse_mountinfo(Path(path).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []
