"""The daemon's dependencies: what it needs of each part, and the real parts it builds by default.

Job: the ``Server`` protocol and the factory types the :class:`~portwatch.daemon.loop.Daemon`
takes as parameters (so tests hand in their own), and the defaults that build
the real collector, alerting engine, HTTP server and scan. May import
everything below the daemon: collect, scan, alerts, web, config, model.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable, Collection, Protocol as TypingProtocol

from prometheus_client import CollectorRegistry

from portwatch.alerts import Alerting
from portwatch.collect import Collector
from portwatch.config import Config, WebConfig
from portwatch.model import RememberedPort, ScanResult
from portwatch.scan import make_source, run_scan
from portwatch.web import MetricsServer

__all__ = ["ALERTS_STOP_TIMEOUT", "AlertingFactory", "ScanFunction", "Server", "ServerFactory",
           "default_alerting", "default_collector", "default_scan", "default_server"]


class Server(TypingProtocol):
    """What the daemon needs of the HTTP server (:class:`portwatch.web.MetricsServer`)."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def update_config(self, config: WebConfig) -> None: ...

    @property
    def address(self) -> tuple[str, int]: ...


ServerFactory = Callable[
    [WebConfig, CollectorRegistry, Callable[[], bool], Callable[[], bool], Callable[[], str]], Server]
ScanFunction = Callable[[Config, Collector, Collection[RememberedPort]], ScanResult]


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
