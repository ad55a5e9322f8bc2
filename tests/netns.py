"""Network namespaces for tests: create, run processes inside, tear down.

Every process a test starts in a namespace goes through :meth:`NetNS.popen`,
so :meth:`NetNS.close` can stop exactly those processes (by pid) before
deleting the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
ACTORS = [sys.executable, "-m", "tests.actors"]


def netns_available() -> tuple[bool, str]:
    """Whether this process can create network namespaces, and if not, why."""
    if os.geteuid() != 0:
        return False, "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return False, "needs iproute2 (ip)"
    return True, ""


class NetNS:
    """A named network namespace (``ip netns add``) with ``lo`` up."""

    def __init__(self, prefix: str = "pwtest") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self._procs: list[subprocess.Popen[str]] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    def wrap(self, args: Sequence[str]) -> list[str]:
        """``args`` prefixed so that they run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def env(self) -> dict[str, str]:
        """The environment for processes in the namespace (repo on PYTHONPATH)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def run(self, args: Sequence[str], timeout: float = 60, check: bool = False,
            **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in the namespace to completion, capturing text output."""
        return subprocess.run(self.wrap(args), capture_output=True, text=True, timeout=timeout,
                              check=check, env=kw.pop("env", self.env()), cwd=REPO, **kw)

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
        """Start ``args`` in the namespace; stopped by :meth:`close`."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.PIPE)
        proc = subprocess.Popen(self.wrap(args), text=True, env=kw.pop("env", self.env()),
                                cwd=REPO, **kw)
        self._procs.append(proc)
        return proc

    def actor(self, *args: str, timeout: float = 30) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        """Start ``python -m tests.actors ARGS`` in the namespace, wait for its READY line.

        Returns the process (alive, holding its sockets until stopped) and the
        JSON document it printed after ``READY``. Raises RuntimeError if the
        actor exits or prints something else first.
        """
        proc = self.popen([*ACTORS, *args])
        assert proc.stdout is not None
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"actor {args} not ready after {timeout}s")
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            proc.wait(timeout=5)
            raise RuntimeError(f"actor {args} failed (exit {proc.returncode}): {line!r}")
        return proc, json.loads(line[len("READY "):])

    def sysctl(self, key: str, value: str) -> None:
        """Set ``/proc/sys/<key>`` (slash form, e.g. ``net/ipv4/ip_local_port_range``) inside."""
        self.run(["sh", "-c", f"echo '{value}' > /proc/sys/{key}"], check=True)

    def stop(self, proc: subprocess.Popen[str]) -> None:
        """Stop one process started here (SIGTERM, then SIGKILL)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        """Stop every process started here, then delete the namespace."""
        for proc in self._procs:
            self.stop(proc)
        subprocess.run(["ip", "netns", "del", self.name], check=False)
