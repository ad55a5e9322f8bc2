"""A real systemd for tests: boot a throwaway systemd-nspawn container, run commands in it.

The container's root is a tmpfs (``--volatile=yes``); only ``/usr`` comes from this
machine, plus whatever the caller binds in. Its systemd therefore never touches this
machine's ``/tmp``, ``/run`` or ``/etc``: booting ``/lib/systemd/systemd`` in a namespace
that shares the real root filesystem would clean ``/tmp`` and more, so never do that.

Usage::

    with Container(binds=[("/work/main", "/work/main")]) as c:
        c.write_file("/etc/systemd/system/x.service", UNIT)
        c.systemctl("daemon-reload", check=True)
        c.systemctl("start", "x.service", check=True)
        c.wait_for(lambda: c.unit_property("x.service", "ActiveState") == "active",
                   timeout=30, what="x.service active", units=["x.service"])

Every process this module starts is the ``systemd-nspawn`` process of a container
(stopped by pid in :meth:`Container.close`) or a short-lived ``nsenter`` run to
completion. Commands inside the container are run through
``nsenter -t INIT_PID -a``, where INIT_PID is the container's systemd (the child of
the nspawn process).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterable, Sequence, TypeVar

T = TypeVar("T")

#: The environment of commands run inside the container: no pager, no colours,
#: nothing inherited from the test process.
INNER_ENV: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_LOG_COLOR": "0",
    "TERM": "dumb",
}

#: Terminal escape sequences in the console output.
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

#: States of ``systemctl is-system-running`` after which boot is over.
BOOTED_STATES = ("running", "degraded")

#: The unit a container boots into. With ``--volatile=yes`` the container's ``/etc`` starts
#: empty, so systemd applies the distribution's presets and every unit installed on this
#: machine would be enabled inside (a podman-restart.service waiting for
#: network-online.target once stalled every boot). Booting this target instead of
#: ``default.target`` starts the early system (journald, tmpfiles, udev-less sysinit) and
#: socket units only: nothing that this machine's packages hook into multi-user.target or
#: timers.target runs, and the tests start the units they need themselves.
BOOT_TARGET = "pwtest-boot.target"
BOOT_TARGET_UNIT = """\
[Unit]
Description=portwatch tests: boot only the early system; tests start their own units
Requires=sysinit.target sockets.target
After=sysinit.target sockets.target
AllowIsolate=yes
"""


def nspawn_available() -> tuple[bool, str]:
    """Whether this process can boot containers with systemd-nspawn, and if not, why."""
    if os.geteuid() != 0:
        return False, "needs root to run systemd-nspawn"
    for binary in ("systemd-nspawn", "nsenter"):
        if shutil.which(binary) is None:
            return False, f"{binary} is not installed (Debian: systemd-container, util-linux)"
    if not os.path.exists("/lib/systemd/systemd"):
        return False, "/lib/systemd/systemd is missing (Debian: systemd)"
    return True, ""


class ContainerError(RuntimeError):
    """The container did not boot, or a command inside it failed (message holds the output)."""


class Container:
    """A booted systemd-nspawn container with a tmpfs root; a context manager.

    ``binds`` are bound read-only and ``binds_rw`` read-write, each as
    ``(path on this machine, path in the container)``. The container has its own
    network namespace (only ``lo``) and a unique machine name (``prefix-XXXXXXXX``).
    Entering the context boots it and waits until its systemd reports
    ``running`` or ``degraded`` (at most ``boot_timeout`` seconds); leaving it powers
    the container off (at most ``stop_timeout`` seconds, then kills it).
    """

    def __init__(self, binds: Iterable[tuple[str, str]] = (),
                 binds_rw: Iterable[tuple[str, str]] = (), *,
                 prefix: str = "pwtest", boot_timeout: float = 120,
                 stop_timeout: float = 60, extra_args: Sequence[str] = ()) -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.binds = list(binds)
        self.binds_rw = list(binds_rw)
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._console_dir: str | None = None
        self.init_pid: int | None = None

    # ----------------------------------------------------------------- lifecycle

    def command(self) -> list[str]:
        """The systemd-nspawn command line that boots this container."""
        args = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
                "-D", "/", "--volatile=yes", "--private-network", "-M", self.name]
        for src, dst in self.binds:
            args.append(f"--bind-ro={_bind_spec(src, dst)}")
        for src, dst in self.binds_rw:
            args.append(f"--bind={_bind_spec(src, dst)}")
        args.append(f"--bind-ro={_bind_spec(self._boot_target_file(), '/etc/systemd/system/' + BOOT_TARGET)}")
        return [*args, *self.extra_args, "-b", "--", "systemd.firstboot=off", f"systemd.unit={BOOT_TARGET}"]

    def _boot_target_file(self) -> str:
        """The :data:`BOOT_TARGET` unit file, written into this container's private temporary folder."""
        if self._console_dir is None:
            self._console_dir = tempfile.mkdtemp(prefix=f"{self.name}-")
        path = os.path.join(self._console_dir, BOOT_TARGET)
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(BOOT_TARGET_UNIT)
        return path

    def start(self) -> None:
        """Boot the container; return once its systemd is up (running or degraded).

        Raises ContainerError (with the console output) if nspawn exits, the init
        process never appears, or boot does not finish within ``boot_timeout``;
        the container is stopped again in that case.
        """
        if self._proc is not None:
            raise ContainerError(f"container {self.name} already started")
        if self._console_dir is None:
            self._console_dir = tempfile.mkdtemp(prefix=f"{self.name}-")
        console = open(self.console_path, "wb")
        try:
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                          stdout=console, stderr=subprocess.STDOUT)
        finally:
            console.close()
        try:
            deadline = time.monotonic() + self.boot_timeout
            self.init_pid = self._find_init(deadline)
            self._wait_booted(deadline)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Power the container off and wait for nspawn (bounded); kill it if needed.

        Safe to call more than once. Kills only this container's own processes, by pid:
        the nspawn process, then (if it is still there) the container's init, whose
        death ends every process in the container's pid namespace.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None and self.init_pid is not None:
            try:
                self.run(["systemctl", "poweroff", "--no-block"], timeout=30)
            except (subprocess.TimeoutExpired, OSError):
                pass
        if not _wait_exit(proc, self.stop_timeout):
            # nspawn forwards SIGTERM to the container as a poweroff request.
            _signal(proc.pid, signal.SIGTERM)
            if not _wait_exit(proc, 15):
                if self.init_pid is not None:
                    _signal(self.init_pid, signal.SIGKILL)
                _signal(proc.pid, signal.SIGKILL)
                _wait_exit(proc, 15)
        self._proc = None
        self.init_pid = None
        if self._console_dir is not None:
            shutil.rmtree(self._console_dir, ignore_errors=True)
            self._console_dir = None

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def console_path(self) -> str:
        """File that receives the nspawn process's output (the container's console)."""
        if self._console_dir is None:
            raise ContainerError(f"container {self.name} not started")
        return os.path.join(self._console_dir, "console.log")

    def console(self, tail: int = 60) -> str:
        """The last ``tail`` lines of the container's console output."""
        try:
            text = Path(self.console_path).read_text(errors="replace")
        except (OSError, ContainerError):
            return ""
        text = _ANSI_RE.sub("", text).replace("\r", "")
        lines = [line for line in text.splitlines() if line.strip()]
        return "\n".join(lines[-tail:])

    def _find_init(self, deadline: float) -> int:
        """Pid of the nspawn process's child (the container's systemd)."""
        assert self._proc is not None
        pid = self._proc.pid
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self._proc.returncode} "
                                     f"before the container started:\n{self.console()}")
            children: list[int] = []
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        children += [int(c) for c in f.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                pass
            for child in children:
                try:
                    exe = os.readlink(f"/proc/{child}/exe")
                except OSError:
                    continue
                if exe.endswith("/systemd"):
                    return child
            time.sleep(0.1)
        raise ContainerError(f"no init process in container {self.name} after "
                             f"{self.boot_timeout}s:\n{self.console()}")

    def _wait_booted(self, deadline: float) -> None:
        """Wait until ``systemctl is-system-running`` answers running or degraded."""
        assert self._proc is not None
        state = ""
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self._proc.returncode} "
                                     f"during boot:\n{self.console()}")
            left = max(1.0, deadline - time.monotonic())
            try:
                # --wait returns at once (with an error) while the bus is not up yet.
                r = self.run(["systemctl", "is-system-running", "--wait"], timeout=left)
                state = r.stdout.strip() or r.stderr.strip()
            except subprocess.TimeoutExpired:
                state = "timeout"
            if state in BOOTED_STATES:
                return
            time.sleep(0.2)
        raise ContainerError(f"container {self.name} not booted after {self.boot_timeout}s "
                             f"(last state {state!r}):\n{self.diagnostics()}")

    # ----------------------------------------------------------------- commands

    def wrap(self, args: Sequence[str]) -> list[str]:
        """``args`` prefixed so that they run inside the container."""
        if self.init_pid is None:
            raise ContainerError(f"container {self.name} is not running")
        return ["nsenter", "-t", str(self.init_pid), "-a", "--", *args]

    def run(self, args: Sequence[str], check: bool = False, timeout: float = 60,
            input: str | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside the container to completion; text output captured.

        The command sees :data:`INNER_ENV` (plus ``env``), the container's root and
        all its namespaces. With ``check``, a non-zero exit raises ContainerError
        holding the command, its exit status and its output.
        """
        full_env = dict(INNER_ENV, **(env or {}))
        r = subprocess.run(self.wrap(args), capture_output=True, text=True, errors="replace",
                           timeout=timeout, input=input, env=full_env,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise ContainerError(f"in {self.name}: {shlex.join(args)} exited {r.returncode}\n"
                                 f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        return r

    def systemctl(self, *args: str, check: bool = False,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``systemctl --no-pager ARGS`` inside the container."""
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def unit_property(self, unit: str, prop: str) -> str:
        """One property of ``unit`` (``systemctl show -P``), e.g. ActiveState, MainPID."""
        return self.systemctl("show", "-P", prop, unit, check=True).stdout.strip()

    def unit_state(self, unit: str) -> tuple[str, str]:
        """``(ActiveState, SubState)`` of ``unit``, e.g. ``("activating", "start")``."""
        out = self.systemctl("show", "-p", "ActiveState", "-p", "SubState", unit,
                             check=True).stdout
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return props.get("ActiveState", ""), props.get("SubState", "")

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Create ``path`` (and its parent directories) inside the container with ``text``."""
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                  "sh", path, format(mode, "o")], input=text, check=True)

    def read_file(self, path: str) -> str:
        """Text of ``path`` inside the container."""
        return self.run(["cat", "--", path], check=True).stdout

    def journal(self, unit: str | None = None, fields: bool = True,
                args: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Journal entries (``journalctl -o json``), oldest first.

        ``unit`` restricts to ``journalctl -u UNIT`` (the unit's own messages and
        systemd's messages about it). With ``fields`` every entry is the full dict of
        journal fields (user fields such as ``PORTWATCH_KIND`` included, trusted
        ``_PID``/``_SYSTEMD_UNIT`` too); without, only ``MESSAGE`` is kept.
        Binary field values (JSON arrays of bytes) are decoded as UTF-8 text.
        ``args`` are appended to the journalctl command line (e.g. ``["-p", "err"]``).
        """
        cmd = ["journalctl", "--no-pager", "-q", "-o", "json"]
        if unit is not None:
            cmd += ["-u", unit]
        cmd += list(args)
        r = self.run(cmd, check=True)
        entries: list[dict[str, Any]] = []
        for line in r.stdout.splitlines():
            line = line.strip()
            if not line:
                continue
            entry = {k: _decode_field(v) for k, v in json.loads(line).items()}
            entries.append(entry if fields else {"MESSAGE": entry.get("MESSAGE", "")})
        return entries

    def journal_text(self, unit: str | None = None, lines: int = 80) -> str:
        """The last ``lines`` journal lines (short format), for failure messages."""
        cmd = ["journalctl", "--no-pager", "-q", "-n", str(lines)]
        if unit is not None:
            cmd += ["-u", unit]
        try:
            r = self.run(cmd, timeout=30)
        except (subprocess.TimeoutExpired, ContainerError) as e:
            return f"(journalctl failed: {e})"
        return r.stdout + r.stderr

    def diagnostics(self, units: Iterable[str] = ()) -> str:
        """Status and journal of ``units`` (or of the whole container), for failure messages."""
        parts: list[str] = []
        try:
            units = list(units)
            for unit in units:
                st = self.systemctl("status", "--full", "-n", "0", unit, timeout=30)
                parts.append(f"--- systemctl status {unit}:\n{st.stdout}{st.stderr}")
                parts.append(f"--- journal of {unit}:\n{self.journal_text(unit)}")
            if not units:
                st = self.systemctl("list-units", "--failed", timeout=30)
                jobs = self.systemctl("list-jobs", timeout=30)
                parts.append(f"--- failed units:\n{st.stdout}{st.stderr}")
                parts.append(f"--- jobs:\n{jobs.stdout}{jobs.stderr}")
                parts.append(f"--- journal:\n{self.journal_text()}")
        except (subprocess.TimeoutExpired, ContainerError, OSError) as e:
            parts.append(f"(diagnostics failed: {e})")
        parts.append(f"--- console of {self.name}:\n{self.console(30)}")
        return "\n".join(parts)

    def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str,
                 units: Iterable[str] = (), interval: float = 0.2) -> T:
        """Poll ``predicate`` until it returns something truthy, and return that.

        Raises AssertionError after ``timeout`` seconds, naming ``what`` and holding
        :meth:`diagnostics` for ``units`` (status and journal), so a failing test
        says what the container was doing. Exceptions from ``predicate`` propagate.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"in container {self.name}: timed out after {timeout}s "
                                     f"waiting for {what}\n{self.diagnostics(units)}")
            time.sleep(interval)


def _bind_spec(src: str, dst: str) -> str:
    """``SRC:DST`` for --bind/--bind-ro; colons in paths are escaped as nspawn wants."""
    if not os.path.exists(src):
        raise ContainerError(f"bind source {src} does not exist")
    return f"{src.replace(':', chr(92) + ':')}:{dst.replace(':', chr(92) + ':')}"


def _decode_field(value: Any) -> Any:
    """A journal JSON field value as text where journalctl gave bytes (a list of ints)."""
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        return bytes(value).decode("utf-8", errors="replace")
    return value


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether ``proc`` exits within ``timeout`` seconds."""
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _signal(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid``, ignoring a process that is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
