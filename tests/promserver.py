"""A real Prometheus server for tests.

:class:`PrometheusServer` writes a configuration into a temporary directory (one scrape
job, default ``portwatch``, with static targets; optional rule files), starts
``prometheus`` on ``127.0.0.1:<free port>``, waits (bounded) for ``/-/ready`` and talks to
its HTTP API. It can run inside a network namespace: pass ``wrap=netns.wrap`` and both
the server and every HTTP request to it (a short-lived helper process) run through the
wrapper, so the server sees the daemon's loopback and the test process does not need to
enter the namespace.

Example::

    with PrometheusServer("127.0.0.1:9977", rule_files=[RULES],
                          binary=require_binary("prometheus")) as prom:
        prom.wait_for('up{job="portwatch"} == 1')
        alert = prom.wait_for_alert("PortwatchSelfConnect", state="pending")

The server's listen port is picked outside the ephemeral port range of the namespace it
runs in, so that the server itself never shows up as a ``listener_in_ephemeral_range``
finding of a portwatch under test in the same namespace.

Run as ``python -m tests.promserver get URL`` or ``... free-port``, it is its own helper
for the wrapped (namespace) case.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import yaml

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "config" / "prometheus"
#: The alerting rules portwatch ships.
SHIPPED_RULES = RULES_DIR / "portwatch.rules.yml"

Wrap = Callable[[list[str]], list[str]]
Sample = dict[str, Any]


class PrometheusError(RuntimeError):
    """The server failed to start, answered with an error, or a wait ran out of time."""


class PrometheusAPIError(PrometheusError):
    """The HTTP API answered ``status: error`` (``error_type`` e.g. ``bad_data``)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now and outside this namespace's ephemeral range.

    Prefers ports >= 10000; falls back to ``bind(0)`` when the range leaves no room.
    The port is only checked, not held: a race with another process is possible (the
    caller retries).
    """
    low, high = 32768, 60999
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(x) for x in text.split())
    except (OSError, ValueError):
        pass
    outside = [p for p in range(1024, 65536) if p < low or p > high]
    preferred = [p for p in outside if p >= 10000] or outside
    for port in random.sample(preferred, min(len(preferred), 200)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
        assert isinstance(port, int)
        return port


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url``: (HTTP status, body). Status 0 and the error text when no answer came."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError) as e:
        return 0, f"{type(e).__name__}: {e}"


def _helper(wrap: Wrap, args: list[str], timeout: float) -> str:
    """Run ``python -m tests.promserver ARGS`` through ``wrap``; its stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = wrap([sys.executable, "-m", "tests.promserver", *args])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired as e:
        raise PrometheusError(f"helper {cmd} did not finish within {timeout}s") from e
    if done.returncode != 0:
        raise PrometheusError(f"helper {cmd} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


class PrometheusServer:
    """A Prometheus server process scraping ``targets``; a context manager.

    ``targets``: ``"host:port"`` or several, scraped as job ``job`` every
    ``scrape_interval``. ``rule_files``: paths loaded as ``rule_files`` (evaluated every
    ``evaluation_interval``). ``wrap``: turns a command into the command that runs it
    elsewhere (e.g. ``NetNS.wrap``); the wrapper must exec the command (as ``ip netns
    exec`` does) or forward SIGTERM to it, since :meth:`stop` signals the pid it started. ``workdir``: where config, data and log go (a fresh
    temporary directory, removed on :meth:`stop`, when not given). ``start_timeout``: bound
    on the wait for ``/-/ready``.

    After :meth:`start` (or ``__enter__``): ``port``, ``url``, ``proc``, ``config_path``,
    ``log_path`` are set; ``scrape_targets`` holds the targets. Every wait is bounded and raises :class:`PrometheusError` (with
    the server's log tail) when it runs out.
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        rule_files: Iterable[str | os.PathLike[str]] = (),
        job: str = "portwatch",
        binary: str = "/usr/bin/prometheus",
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        wrap: Wrap | None = None,
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.scrape_targets = [targets] if isinstance(targets, str) else list(targets)
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.job = job
        self.binary = binary
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.wrap = wrap
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="portwatch-prom-"))
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        self.data_path = self.workdir / "data"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL of the server (``http://127.0.0.1:<port>``), valid after :meth:`start`."""
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The Prometheus configuration this server is started with."""
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": self.job, "static_configs": [{"targets": self.scrape_targets}]},
            ],
        }

    def start(self, attempts: int = 3) -> None:
        """Write the config, start the server, and wait until ``/-/ready`` answers 200.

        Retries with another port (up to ``attempts`` times) when the chosen one was taken
        meanwhile. Raises :class:`PrometheusError` if the server exits or is not ready in
        ``start_timeout`` seconds (the server is stopped then).
        """
        if self.proc is not None:
            raise PrometheusError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        for attempt in range(1, attempts + 1):
            self.port = self._free_port()
            shutil.rmtree(self.data_path, ignore_errors=True)
            cmd = [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_path}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
            ]
            if self.wrap is not None:
                cmd = self.wrap(cmd)
            with open(self.log_path, "ab") as log:
                log.write(f"--- attempt {attempt}: {' '.join(cmd)}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, cwd=self.workdir)
            try:
                self._wait_ready()
                return
            except PrometheusError:
                exited = self.proc.poll() is not None
                self._terminate()
                if exited and "address already in use" in self.log_tail() and attempt < attempts:
                    continue
                raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, wait ``timeout``, then SIGKILL) and remove its own workdir."""
        self._terminate(timeout)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's log (stdout and stderr)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ HTTP API

    def get(self, path: str, params: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, str]:
        """GET ``path`` (e.g. ``/api/v1/query``) with query ``params``: (status, body).

        Status 0 means no HTTP answer (connection refused, timeout).
        """
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        if self.wrap is None:
            return http_get(url, timeout)
        out = _helper(self.wrap, ["get", url, str(timeout)], timeout + 10)
        answer = json.loads(out)
        return int(answer["status"]), str(answer["body"])

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """The ``data`` of a ``/api/v1/...`` answer; raises on errors.

        :class:`PrometheusAPIError` for an API error answer, :class:`PrometheusError` when
        there was no parseable answer.
        """
        status, body = self.get(path, params)
        try:
            doc = json.loads(body)
        except ValueError:
            raise PrometheusError(f"GET {path}: HTTP {status}: {body[:500]}") from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            if isinstance(doc, dict) and "errorType" in doc:
                raise PrometheusAPIError(str(doc["errorType"]), str(doc.get("error")))
            raise PrometheusError(f"GET {path}: HTTP {status}: {body[:500]}")
        return doc.get("data")

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """Instant query: a list of ``{"metric": {labels}, "value": [ts, "value"]}``.

        Scalar and string results come back as one sample with empty ``metric``.
        """
        params = {"query": promql}
        if at is not None:
            params["time"] = repr(at)
        data = self.api("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result = data["result"]
        assert isinstance(result, list)
        return result

    def wait_for(self, promql: str, predicate: Callable[[list[Sample]], bool] = bool,
                 timeout: float = 30.0, interval: float = 0.25) -> list[Sample]:
        """Query ``promql`` until ``predicate(result)`` holds; that result.

        The default predicate is "not empty". Raises :class:`PrometheusError` after
        ``timeout`` seconds with the last result; a query the server rejects as invalid
        (``bad_data``) raises at once.
        """
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                result = self.query(promql)
                if predicate(result):
                    return result
                last = result
            except PrometheusAPIError as e:
                if e.error_type == "bad_data":
                    raise
                last = e
            except PrometheusError as e:
                last = e
            if time.monotonic() >= deadline:
                raise PrometheusError(f"{promql!r} did not satisfy the predicate within {timeout}s;"
                                      f" last result: {last!r}\n--- prometheus log:\n{self.log_tail()}")
            time.sleep(interval)

    def alerts(self) -> list[Sample]:
        """Active alerts (``/api/v1/alerts``): dicts with labels, annotations, state, value."""
        alerts = self.api("/api/v1/alerts")["alerts"]
        assert isinstance(alerts, list)
        return alerts

    def wait_for_alert(self, name: str, state: str | Collection[str] = "firing",
                       labels: Mapping[str, str | None] | None = None,
                       timeout: float = 30.0, interval: float = 0.25) -> Sample:
        """Wait until an alert ``name`` with ``labels`` is in ``state``; that alert.

        ``state``: ``"pending"``, ``"firing"``, or a collection of them. ``labels`` must be
        among the alert's labels; a value of ``None`` requires the label to be absent.
        Raises :class:`PrometheusError` after ``timeout`` seconds, listing the alerts seen last.
        """
        states = {state} if isinstance(state, str) else set(state)
        want: dict[str, str | None] = {"alertname": name, **(labels or {})}
        deadline = time.monotonic() + timeout
        seen: list[Sample] = []
        while True:
            seen = self.alerts()
            for alert in seen:
                if alert.get("state") in states and all(alert["labels"].get(k) == v for k, v in want.items()):
                    return alert
            if time.monotonic() >= deadline:
                raise PrometheusError(f"no {sorted(states)} alert {want} within {timeout}s; alerts: {seen!r}"
                                      f"\n--- prometheus log:\n{self.log_tail()}")
            time.sleep(interval)

    def rules(self) -> list[Sample]:
        """Loaded rule groups (``/api/v1/rules``), each with its rules and their alerts."""
        groups = self.api("/api/v1/rules")["groups"]
        assert isinstance(groups, list)
        return groups

    def targets(self) -> list[Sample]:
        """Active scrape targets (``/api/v1/targets``): labels, scrapeUrl, health, lastError."""
        active = self.api("/api/v1/targets")["activeTargets"]
        assert isinstance(active, list)
        return active

    # ------------------------------------------------------------------ internals

    def _free_port(self) -> int:
        if self.wrap is None:
            return pick_free_port()
        return int(_helper(self.wrap, ["free-port"], 30).strip())

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while True:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode} before it was"
                                      f" ready\n--- prometheus log:\n{self.log_tail()}")
            status, body = self.get("/-/ready", timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200]}"
            if time.monotonic() >= deadline:
                raise PrometheusError(f"prometheus not ready within {self.start_timeout}s ({last})"
                                      f"\n--- prometheus log:\n{self.log_tail()}")
            time.sleep(0.1)

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)


def _main(argv: list[str]) -> int:
    """Helper entry point: ``get URL [TIMEOUT]`` prints ``{"status", "body"}``; ``free-port``."""
    if argv[:1] == ["get"] and len(argv) in (2, 3):
        status, body = http_get(argv[1], float(argv[2]) if len(argv) == 3 else 5.0)
        print(json.dumps({"status": status, "body": body}))
        return 0
    if argv == ["free-port"]:
        print(pick_free_port())
        return 0
    print("usage: python -m tests.promserver get URL [TIMEOUT] | free-port", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
