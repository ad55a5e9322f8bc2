"""Real alert receivers for tests: an Alertmanager process and an HTTP webhook receiver.

:class:`Alertmanager` runs ``/usr/bin/prometheus-alertmanager`` (clustering
off, storage and config in a directory of the test) on a loopback port,
waits (bounded) for ``/-/ready`` and reads ``/api/v2/alerts``. It takes the
function that starts the process and the one that fetches a URL, so the
same harness runs Alertmanager in the test's namespace or, through
:class:`tests.netns.NetNS`, inside another one. It is stopped by its pid.

:class:`Receiver` is an HTTP server (``http.server``) in the test process,
on 127.0.0.1: it records every request (path, headers, body) and answers
200 unless told otherwise (:meth:`Receiver.answer` queues statuses such as
500; :meth:`Receiver.hold` makes requests wait until released). It can be
stopped (the port then refuses connections) and restarted on the same port.

Every wait is bounded by a deadline and fails with a message saying what
was awaited; none asserts anything about speed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import pytest

from tests.conftest import require_binary

#: Upper bound of every wait loop (seconds); never an assertion about speed.
WAIT = 60.0

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = WAIT, interval: float = 0.05,
             explain: Callable[[], str] | None = None) -> T:
    """Poll ``check`` until it returns something truthy and return it; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}"
                        + (f"\n{explain()}" if explain is not None else ""))
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (bound to 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- webhook receiver


@dataclass
class Request:
    """One request the receiver got, and the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass
class _Control:
    statuses: deque[int] = field(default_factory=deque)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)


def _handler(control: _Control) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            control.arrived.set()
            control.release.wait(WAIT)
            with control.lock:
                status = control.statuses.popleft() if control.statuses else 200
                control.requests.append(Request(self.command, self.path,
                                                {k.lower(): v for k, v in self.headers.items()}, body, status))
            payload = b'{"status":"ok"}' if status < 300 else b'{"error":"test receiver says no"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _QuietServer(ThreadingHTTPServer):
    """Does not print a traceback for a client that fails the TLS handshake (a test makes them on purpose)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class Receiver:
    """A real HTTP(S) server on 127.0.0.1 recording POSTs (see the module documentation)."""

    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self._control = _Control()
        self._control.release.set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tls = tls
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Listen (again) on the receiver's port."""
        assert self._server is None, "already running"
        server = _QuietServer(("127.0.0.1", self.port), _handler(self._control))
        server.daemon_threads = True
        if self._tls is not None:
            server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"receiver-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: connections to the port are refused until :meth:`start`."""
        if self._server is None:
            return
        self._control.release.set()
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(WAIT)
        self._server = None

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with these statuses (then 200 again)."""
        with self._control.lock:
            self._control.statuses.extend(statuses)

    def hold(self) -> None:
        """Make requests wait (after their body was read) until :meth:`release`."""
        self._control.arrived.clear()
        self._control.release.clear()

    def wait_arrived(self) -> None:
        """Wait until a request is being held."""
        if not self._control.arrived.wait(WAIT):
            pytest.fail("no request reached the receiver")

    def release(self) -> None:
        self._control.release.set()

    @property
    def requests(self) -> list[Request]:
        with self._control.lock:
            return list(self._control.requests)

    def accepted(self) -> list[Request]:
        """The requests answered 2xx."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def wait_accepted(self, count: int, what: str = "") -> list[Request]:
        """Wait until at least ``count`` requests were answered 2xx; returns them all."""
        return wait_for(f"{count} accepted request(s) {what}".strip(),
                        lambda: (got if len(got := self.accepted()) >= count else None),
                        explain=lambda: f"requests so far: {[(r.path, r.status) for r in self.requests]}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()


# --------------------------------------------------------------------------- Alertmanager


AM_BINARY = "prometheus-alertmanager"


def _local_fetch(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=10) as r:
            return bytes(r.read())
    except (OSError, urllib.error.URLError):
        return None


def am_config(receiver_url: str | None = None) -> str:
    """An Alertmanager configuration: everything to one receiver, flushed at once.

    With ``receiver_url``, Alertmanager posts its notifications (firing and
    resolved) to that webhook; otherwise it notifies nobody.
    """
    lines = [
        "route:",
        "  receiver: test",
        "  group_by: ['...']",
        "  group_wait: 0s",
        "  group_interval: 1s",
        "  repeat_interval: 1h",
        "receivers:",
        "  - name: test",
    ]
    if receiver_url is not None:
        lines += [
            "    webhook_configs:",
            f"      - url: {receiver_url}/alertmanager",
            "        send_resolved: true",
        ]
    return "\n".join(lines) + "\n"


class Alertmanager:
    """A real Alertmanager on ``127.0.0.1:port`` (see the module documentation).

    ``popen`` starts the process (default: ``subprocess.Popen`` here; pass
    ``NetNS.popen`` to run it in a namespace) and ``fetch`` GETs a URL
    returning the body or None (pass one that runs inside that namespace).
    """

    def __init__(self, workdir: Path, port: int | None = None, receiver_url: str | None = None,
                 popen: Callable[..., subprocess.Popen[Any]] | None = None,
                 fetch: Callable[[str], bytes | None] = _local_fetch) -> None:
        self.binary = require_binary(AM_BINARY)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.config = workdir / "alertmanager.yml"
        self.config.write_text(am_config(receiver_url))
        self.log = workdir / "alertmanager.log"
        self._popen = popen
        self._fetch = fetch
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        return [self.binary, f"--config.file={self.config}", f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
                "--log.level=debug"]

    def start(self) -> Alertmanager:
        """Start it and wait (bounded) until ``/-/ready`` answers."""
        log = open(self.log, "w")
        try:
            if self._popen is None:
                self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            else:
                self.proc = self._popen(self.args(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"alertmanager exited with {self.proc.returncode}:\n{self.log.read_text()}")
            return self._fetch(f"{self.url}/-/ready") is not None

        wait_for("alertmanager /-/ready", ready, explain=lambda: self.log.read_text()[-3000:])
        return self

    def alerts(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: the active alerts (resolved ones are not listed)."""
        body = self._fetch(f"{self.url}/api/v2/alerts")
        if body is None:
            pytest.fail(f"cannot GET {self.url}/api/v2/alerts:\n{self.log.read_text()[-3000:]}")
        result: list[dict[str, Any]] = json.loads(body)
        return result

    def find(self, **labels: str) -> list[dict[str, Any]]:
        """The active alerts having every label given."""
        return [a for a in self.alerts() if all(a["labels"].get(k) == v for k, v in labels.items())]

    def stop(self) -> None:
        """SIGTERM by pid (SIGKILL after a bounded wait)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=WAIT / 2)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=WAIT / 2)


def start_alertmanagers(workdir: Path, count: int = 1, receiver_url: str | None = None) -> Sequence[Alertmanager]:
    """``count`` started Alertmanagers in subdirectories of ``workdir``."""
    return [Alertmanager(workdir / f"am{i}", receiver_url=receiver_url).start() for i in range(count)]
