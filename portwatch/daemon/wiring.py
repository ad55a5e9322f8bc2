"""The daemon's dependencies: what it needs of each part, and the real parts it builds by default.

Job: the ``Server`` protocol and the factory types the :class:`~portwatch.daemon.loop.Daemon`
takes as parameters (so tests hand in their own), and the defaults that build
the real collector, alerting engine, HTTP server and pass (:func:`default_pass`:
every selected network namespace, or the own one), and the daemon's side
threads (:class:`SideThread`, run together by :class:`SideThreads`; the
defaults are the failure capture's, :class:`~portwatch.daemon.failures.FailureThread`,
and the socket-destroy listeners, :class:`~portwatch.daemon.events.DaemonEvents`).
May import everything below the daemon (collect, scan, alerts, web, config,
model) and :mod:`portwatch.daemon.records`, ``.messages``, ``.failures`` and ``.events``.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Callable, Collection, Mapping, Protocol as TypingProtocol, Sequence

from prometheus_client import CollectorRegistry

from portwatch.alerts import Alerting
from portwatch.collect import CollectError, Collector, Discovery, discover_namespaces
from portwatch.config import Config, WebConfig
from portwatch.config.types import namespace_selected
from portwatch.daemon.events import DaemonEvents
from portwatch.daemon.failures import FailureThread
from portwatch.daemon.messages import Message
from portwatch.daemon.records import HOST_KEY
from portwatch.model import RememberedPort, ScanResult
from portwatch.model.records import replace
from portwatch.model.results import NamespacesResult
from portwatch.scan import make_source, namespace_names, run_namespaces_scan, run_scan
from portwatch.web import MetricsServer

__all__ = ["ALERTS_STOP_TIMEOUT", "AlertingFactory", "PassFunction", "Remembered", "ScanFunction", "Server",
           "ServerFactory", "SideThread", "SideThreadFactory", "SideThreads", "DEFAULT_SIDE_THREADS", "default_alerting", "default_collector", "default_pass", "default_scan",
           "default_server", "single_pass"]


class Server(TypingProtocol):
    """What the daemon needs of the HTTP server (:class:`portwatch.web.MetricsServer`)."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def update_config(self, config: WebConfig) -> None: ...

    @property
    def address(self) -> tuple[str, int]: ...


ServerFactory = Callable[
    [WebConfig, CollectorRegistry, Callable[[], bool], Callable[[], bool], Callable[[], str]], Server]
#: One scan of the own namespace: (config, collector, remembered ports) -> result.
ScanFunction = Callable[[Config, Collector, Collection[RememberedPort]], ScanResult]
#: Remembered ports by namespace key (the host's under :data:`~portwatch.daemon.records.HOST_KEY`).
Remembered = Mapping[str, Collection[RememberedPort]]
#: One pass: (config, collector, remembered ports by namespace) -> every namespace's result.
PassFunction = Callable[[Config, Collector, Remembered], NamespacesResult]


def default_collector(config: Config) -> Collector:
    """A collector reading the socket source ``config.source`` names. Raises ValueError for an unknown one."""
    return Collector(make_source(config.source))


#: Seconds the alert sinks get at SIGTERM to deliver what is queued (the rest is saved).
ALERTS_STOP_TIMEOUT = 5.0

AlertingFactory = Callable[[Config, Path, CollectorRegistry], Alerting]


def default_alerting(config: Config, state_dir: Path, registry: CollectorRegistry) -> Alerting:
    """The alerting engine of ``config.alerts``, keeping its state in ``state_dir``.

    Raises ``ValueError`` (:class:`~portwatch.alerts.SinkBuildError`) when a sink cannot be built.
    """
    return Alerting(config.alerts, state_dir, socket.gethostname(), registry)


def default_server(web: WebConfig, registry: CollectorRegistry, ready: Callable[[], bool],
                   health: Callable[[], bool], index_extra: Callable[[], str]) -> Server:
    """The real HTTP server (not bound yet). Raises :class:`WebError`."""
    return MetricsServer(web, registry, ready, health=health, index_extra=index_extra)


def default_scan(config: Config, collector: Collector, remembered: Collection[RememberedPort]) -> ScanResult:
    """One real scan (:func:`portwatch.scan.run_scan`) with ``config``'s settings."""
    return run_scan(config, collector, remembered)


def single_pass(scan: ScanFunction) -> PassFunction:
    """A pass that is one ``scan`` of the own namespace, given the host's remembered ports."""
    def one(config: Config, collector: Collector, remembered: Remembered) -> NamespacesResult:
        result = scan(config, collector, remembered.get(HOST_KEY, ()))
        return NamespacesResult((result,), duration=result.duration)
    return one


def default_pass(config: Config, collector: Collector, remembered: Remembered,
                 discover: Callable[[], Discovery] = discover_namespaces) -> NamespacesResult:
    """One real pass with ``config``'s settings.

    ``namespaces.scan: own``: one :func:`portwatch.scan.run_scan` of the own
    namespace, as before namespaces (keys and services as the host's).
    ``all``: the namespaces ``discover()`` finds now (every pass, so new ones
    are scanned and gone ones dropped) that ``include``/``exclude`` select,
    each scanned on its own (:func:`portwatch.scan.run_namespaces_scan`;
    the others' inodes in the result's ``left_out``);
    without the capability to enter others, discovery returns the own one
    with a note. Raises what the scan raises, and
    :class:`~portwatch.collect.CollectError` when namespaces were selected
    but none could be read (a failed pass: the previous figures stay).
    """
    if config.namespaces.scan == "own":
        return single_pass(default_scan)(config, collector, remembered)
    discovery = discover()
    selected = tuple(ns for ns in discovery.namespaces if namespace_selected(config.namespaces, namespace_names(ns)))
    result = run_namespaces_scan(config, collector, discovery, selected, remembered)
    if selected and not result.results and result.skipped:
        raise CollectError("no network namespace could be read: " + "; ".join(result.notes))
    chosen = {ns.inode for ns in selected}
    left_out = tuple(ns.inode for ns in discovery.namespaces if ns.inode not in chosen)
    return replace(result, left_out=left_out) if left_out else result


class SideThread(TypingProtocol):
    """A thread the daemon runs beside its loop (event listeners, the failure capture).

    Built by a :data:`SideThreadFactory` when the daemon is built; the loop
    calls :meth:`start` before the first pass, :meth:`passed` after every
    successful pass (``result`` is immutable: keep the reference), and
    :meth:`reconfigure` after every successful reload (start or stop what
    the new configuration asks for), all from the loop's thread, and
    :meth:`stop` once when the daemon ends, however it ends. The thread
    reports by posting messages (:mod:`.messages`) on the daemon's queue.
    None of the methods may block for long; :meth:`stop` at most ``timeout``.
    """

    name: str

    def start(self) -> None: ...

    def passed(self, result: NamespacesResult) -> None: ...

    def reconfigure(self, config: Config) -> None: ...

    def stop(self, timeout: float = 5.0) -> bool: ...


#: Builds a side thread: (configuration, post a message on the daemon's queue, metrics registry) -> thread.
SideThreadFactory = Callable[[Config, Callable[[Message], None], CollectorRegistry], SideThread]

#: The side threads of ``portwatch run``.
DEFAULT_SIDE_THREADS: tuple[SideThreadFactory, ...] = (FailureThread, DaemonEvents)

#: Seconds all side threads together get to stop when the daemon ends.
SIDE_THREADS_STOP_TIMEOUT = 5.0

_log = logging.getLogger("portwatch.daemon")


class SideThreads:
    """The daemon's side threads, each call passed to all of them; one thread's error is logged, never raised."""

    def __init__(self, factories: Sequence[SideThreadFactory], config: Config, post: Callable[[Message], None],
                 registry: CollectorRegistry) -> None:
        self.threads = [factory(config, post, registry) for factory in factories]

    def _each(self, what: str, call: Callable[[SideThread], object]) -> None:
        for thread in self.threads:
            try:
                call(thread)
            except Exception:
                _log.exception("side thread %s: error in %s (the daemon goes on)", thread.name, what)

    def start(self) -> None:
        self._each("start", lambda t: t.start())

    def passed(self, result: NamespacesResult) -> None:
        self._each("passed", lambda t: t.passed(result))

    def reconfigure(self, config: Config) -> None:
        self._each("reconfigure", lambda t: t.reconfigure(config))

    def stop(self, timeout: float = SIDE_THREADS_STOP_TIMEOUT) -> None:
        """Stop every thread within ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        self._each("stop", lambda t: t.stop(max(deadline - time.monotonic(), 0.1)))
