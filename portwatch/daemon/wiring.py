"""The daemon's dependencies: what it needs of each part, and the real parts it builds by default.

Job: the ``Server`` protocol and the factory types the :class:`~portwatch.daemon.loop.Daemon`
takes as parameters (so tests hand in their own), and the defaults that build
the real collector, alerting engine, HTTP server and pass (:func:`default_pass`:
every selected network namespace, or the own one), and the daemon's side
parts (:class:`Side`, :func:`default_sides`: the socket-destroy listeners).
May import everything below the daemon (collect, scan, alerts, web, config,
model) and :mod:`portwatch.daemon.records`, ``.messages`` and ``.events``.
"""

from __future__ import annotations

import queue
import socket
from pathlib import Path
from typing import Callable, Collection, Mapping, Protocol as TypingProtocol, Sequence

from prometheus_client import CollectorRegistry

from portwatch.alerts import Alerting
from portwatch.collect import CollectError, Collector, Discovery, discover_namespaces
from portwatch.config import Config, WebConfig
from portwatch.config.types import namespace_selected
from portwatch.daemon.events import DaemonEvents
from portwatch.daemon.messages import Message
from portwatch.daemon.records import HOST_KEY
from portwatch.model import RememberedPort, ScanResult
from portwatch.model.results import NamespacesResult
from portwatch.scan import make_source, namespace_names, run_namespaces_scan, run_scan
from portwatch.web import MetricsServer

__all__ = ["ALERTS_STOP_TIMEOUT", "SIDE_STOP_TIMEOUT", "AlertingFactory", "PassFunction", "Remembered",
           "ScanFunction", "Server", "ServerFactory", "Side", "SidesFactory", "default_alerting", "default_collector", "default_pass", "default_scan",
           "default_server", "default_sides", "single_pass"]


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


class Side(TypingProtocol):
    """A part running beside the loop on threads of its own (e.g. the socket-destroy listeners).

    The loop calls, from its thread: :meth:`start` once before the first
    pass, :meth:`after_pass` after each successful pass, :meth:`reload`
    with a configuration that applies, :meth:`stop` at shutdown. A side
    speaks to the loop only by putting messages on the daemon's queue.
    None of them raises.
    """

    def start(self) -> None: ...

    def after_pass(self, result: NamespacesResult) -> None: ...

    def reload(self, config: Config) -> None: ...

    def stop(self, timeout: float = 5.0) -> bool: ...


#: The daemon's sides for a configuration: (config, the daemon's queue, its registry) -> sides.
SidesFactory = Callable[[Config, "queue.SimpleQueue[Message]", CollectorRegistry], Sequence[Side]]
#: Seconds each side gets at SIGTERM to stop.
SIDE_STOP_TIMEOUT = 5.0


def default_sides(config: Config, events: queue.SimpleQueue[Message], registry: CollectorRegistry) -> list[Side]:
    """The real sides: the socket-destroy listeners (:class:`~portwatch.daemon.events.DaemonEvents`)."""
    return [DaemonEvents(config, events, registry)]


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
    each scanned on its own (:func:`portwatch.scan.run_namespaces_scan`);
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
    return result
