"""What a process is: name, command line, user, systemd unit.

Job: :func:`describe_processes` (psutil for the name, command line and user;
``/proc/PID/cgroup`` for the unit) and :func:`systemd_unit_from_cgroup`, the
pure parser of a cgroup file. psutil is imported when a process is described,
not with this module. May import the standard library, psutil and
:mod:`portwatch.model`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from portwatch.model import ProcessInfo
from portwatch.model.records import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable

__all__ = [
    "ProcessFactory", "ProcessHandle", "describe_processes", "systemd_unit_from_cgroup",
    "unit_from_cgroup_path",
]


class ProcessHandle(Protocol):
    """The part of ``psutil.Process`` a description reads.

    Each method may raise ``psutil.NoSuchProcess`` (the process has exited)
    or another ``psutil.Error`` (e.g. ``AccessDenied``).
    """

    def name(self) -> str:
        """The process name."""
        ...

    def cmdline(self) -> list[str]:
        """The command line, one item per argument."""
        ...

    def username(self) -> str:
        """The name of the process's user."""
        ...


#: Opens a process by pid (``psutil.Process`` or a stand-in); raises
#: ``psutil.NoSuchProcess`` or another ``psutil.Error``.
ProcessFactory = Callable[[int], ProcessHandle]


_UNIT_SUFFIXES = (".service", ".scope")


def unit_from_cgroup_path(path: str) -> str | None:
    """The innermost systemd unit (``.service`` or ``.scope``) in a cgroup path; None if none."""
    units = [c for c in path.split("/")
             if any(c.endswith(sfx) and len(c) > len(sfx) for sfx in _UNIT_SUFFIXES)]
    if not units:
        return None
    # A user manager runs in user@UID.service/init.scope: name the service.
    if units[-1] == "init.scope" and len(units) > 1:
        return units[-2]
    return units[-1]


def systemd_unit_from_cgroup(text: str) -> str | None:
    """The systemd unit of a process, from the text of its ``/proc/PID/cgroup``.

    Reads the cgroup v2 line (``0::/system.slice/nginx.service``) first, then
    the v1 ``name=systemd`` hierarchy (``1:name=systemd:/system.slice/x.service``);
    other v1 controllers are ignored (they need not follow units). Returns the
    innermost ``.service`` or ``.scope`` of the path: a user unit under
    ``user@1000.service/app.slice/foo.service`` gives ``foo.service``, a login
    session gives ``session-3.scope``, the user manager itself
    (``user@1000.service/init.scope``) gives ``user@1000.service``. Returns
    ``None`` when no unit is found (root cgroup, slices only, a container's
    cgroup namespace, garbage). Never raises.
    """
    v2: str | None = None
    named: str | None = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "name=systemd" in controllers.split(","):
            named = path
    for candidate in (v2, named):
        if candidate:
            unit = unit_from_cgroup_path(candidate)
            if unit is not None:
                return unit
    return None


def _read_unit(proc_root: Path, pid: int) -> str | None:
    """The unit of ``pid`` from ``proc_root/PID/cgroup``; ``None`` if unreadable."""
    try:
        text = (proc_root / str(pid) / "cgroup").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return systemd_unit_from_cgroup(text)


def _describe_one(pid: int, proc_root: Path, process_factory: ProcessFactory) -> ProcessInfo:
    """Describe one process; see :func:`describe_processes`."""
    import psutil  # its exceptions; already loaded by the time a process is described

    try:
        proc = process_factory(pid)
    except psutil.NoSuchProcess:
        return ProcessInfo(pid=pid, gone=True)
    except psutil.Error:
        return ProcessInfo(pid=pid, unit=_read_unit(proc_root, pid))
    values: dict[str, Any] = {}
    getters: list[tuple[str, Callable[[], Any]]] = [
        ("name", proc.name),
        ("cmdline", lambda: tuple(proc.cmdline())),
        ("user", proc.username),
    ]
    for key, getter in getters:
        try:
            values[key] = getter()
        except psutil.NoSuchProcess:  # includes ZombieProcess: it has exited
            return ProcessInfo(pid=pid, gone=True, **values)
        except psutil.Error:  # AccessDenied and the like: leave this field unknown
            continue
    return ProcessInfo(pid=pid, unit=_read_unit(proc_root, pid), **values)


def describe_processes(pids: Iterable[int], proc_root: Path = Path("/proc"),
                       process_factory: ProcessFactory | None = None,
                       ) -> dict[int, ProcessInfo]:
    """Describe processes: name, command line, user name, systemd unit.

    Takes the pids, the proc mount whose ``PID/cgroup`` gives the unit, and
    the factory that opens a process (a stand-in, or ``None`` for
    ``psutil.Process``, imported only when there is a pid to describe).
    Returns ``{pid: ProcessInfo}`` for every pid given. A process that no
    longer exists (or is a zombie) gets ``gone=True`` with whatever was read
    before; a field the privileges do not allow reading is ``None`` (``()``
    for the command line) while the others are still read; an unreadable
    cgroup file leaves ``unit`` ``None``. Never raises for a process's
    failure. A pid reused by a new process since its socket was seen is
    described as the new process (nothing here can tell).
    """
    wanted = list(dict.fromkeys(pids))
    if not wanted:
        return {}
    factory = process_factory
    if factory is None:
        import psutil  # here, not at module level: a scan with nothing to explain never needs it

        factory = psutil.Process
    root = Path(proc_root)
    return {pid: _describe_one(pid, root, factory) for pid in wanted}
