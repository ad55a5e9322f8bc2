"""The HTTP(S) endpoint as the daemon uses it: :class:`MetricsServer` (start, stop, reload).

Job: put the pieces together for one configuration at a time: the listen
addresses (:mod:`.address`; or the sockets systemd passes, :mod:`.activation`),
the settings (:mod:`.settings`, from portwatch.yaml's ``web:`` or a web
configuration file, :mod:`.webconfig`, re-checked on each new connection),
basic auth (:mod:`.auth`), TLS with rotation (:mod:`.tls`), the routes
(:mod:`.routes`) and the server core (:mod:`.server`). A SIGHUP swaps users
and TLS for new connections; a new listen address is bound before the old
listener is closed. May import the standard library, prometheus_client,
:mod:`portwatch.config` types, :mod:`portwatch.output` and the modules of
:mod:`portwatch.web`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from prometheus_client import CollectorRegistry

import portwatch
from portwatch.config import WebConfig
from portwatch.model.text import host_port
from portwatch.output.status import index_page
from portwatch.web.activation import listen_fds
from portwatch.web.address import BACKLOG, WebError, bind_error, bind_listener, raise_descriptor_limit, resolve
from portwatch.web.auth import Auth, FailureLimit
from portwatch.web.render import RenderCache
from portwatch.web.routes import handler_for
from portwatch.web.server import CONNECTION_TIMEOUT, MAX_CONNECTIONS, WORKERS, ConnectionServer
from portwatch.web.settings import WebOptions, WebSettings, settings_from_config
from portwatch.web.tls import TLS
from portwatch.web.webconfig import WebConfigFile

__all__ = ["MetricsServer"]

log = logging.getLogger("portwatch.web")


@dataclass(frozen=True)
class _State:
    """Everything one configuration decides about request handling, swapped as a whole."""

    config: WebConfig
    settings: WebSettings
    auth: Auth
    tls: TLS | None


def _build_state(config: WebConfig, settings: WebSettings, limit: FailureLimit) -> _State:
    """The users (counting failures in ``limit``) and TLS context of ``settings``. Raises :class:`WebError` when a TLS file cannot be loaded."""
    return _State(config=config, settings=settings, auth=Auth(settings.basic_auth_users, limit),
                  tls=TLS.build(settings.tls))


class MetricsServer:
    """The HTTP(S) server of the daemon (see the module documentation for the endpoints)."""

    def __init__(
        self,
        config: WebConfig,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        health: Callable[[], bool] = lambda: True,
        index_extra: Callable[[], str] | None = None,
        *,
        connection_timeout: float = CONNECTION_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        backlog: int = BACKLOG,
        workers: int = WORKERS,
        options: WebOptions = WebOptions(),
    ) -> None:
        """Prepares (does not bind) a server.

        Takes the ``web`` configuration, the registry ``/metrics`` renders, the
        readiness and health checks (called per request, must be quick; raising counts
        as false), and an optional function returning trusted HTML for the index page
        (e.g. the latest scan summary; raising omits it).
        ``options`` are the command line's (extra listen addresses, a web
        configuration file, systemd's sockets).
        Raises :class:`WebError` when a listen address does not resolve, the
        TLS files cannot be loaded, or the web configuration file is unusable
        (or set beside ``web:``'s TLS or users).
        """
        self._options = options
        self._primary = options.listen_addresses[0] if options.listen_addresses else config.listen_address
        self._family, self._host, self._port = resolve(self._primary)
        self._extra = [(value, *resolve(value)) for value in options.listen_addresses[1:]]
        self._failures = FailureLimit()
        self._file: WebConfigFile | None = None
        if options.config_file is not None:
            if config.tls_cert_file is not None or config.tls_key_file is not None or config.basic_auth_users:
                raise WebError(f"--web.config.file {options.config_file}: portwatch.yaml's web: sets TLS files "
                               "or basic_auth_users too; keep them in one place")
            self._file = WebConfigFile(options.config_file)
        self._state = _build_state(config, self._settings(config), self._failures)
        self._site = _Site(self, registry, ready, health, index_extra)
        self._connection_timeout = connection_timeout
        self._max_connections = max_connections
        self._backlog = backlog
        self._workers = workers
        self._httpd: ConnectionServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # start/stop/update_config

    def start(self) -> None:
        """Binds ``web.listen_address`` and serves in a daemon thread.

        Raises :class:`WebError` naming the address when it cannot be bound (e.g.
        ``web.listen_address 127.0.0.1:9731: address already in use``), and
        RuntimeError when already started.
        """
        with self._lock:
            if self._httpd is not None:
                raise RuntimeError("MetricsServer already started")
            raise_descriptor_limit()
            if self._options.systemd_socket:
                httpd = self._server(listen_fds())
            else:
                listeners = [self._listener(self._primary, self._family, self._host, self._port)]
                try:
                    for value, family, host, port in self._extra:
                        listeners.append(self._listener(value, family, host, port))
                except WebError:
                    for sock in listeners:
                        sock.close()
                    raise
                httpd = self._server(listeners)
            self._serve(httpd)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` (the real port when ``:0`` was configured). Raises RuntimeError before :meth:`start`."""
        httpd = self._httpd
        if httpd is None:
            raise RuntimeError("MetricsServer not started")
        host, port = httpd.server_address[:2]
        return str(host), int(port)

    @property
    def open_connections(self) -> int:
        """Client connections open now (0 when not started)."""
        httpd = self._httpd
        return httpd.open_connections if httpd is not None else 0

    @property
    def config(self) -> WebConfig:
        """The configuration in effect."""
        return self._state.config

    def stop(self, timeout: float = 5.0) -> None:
        """Stops serving: closes the listening socket, shuts down open connections and joins the threads.

        Waits at most about ``timeout`` seconds for the serve thread and the
        connection threads. Does nothing when not started.
        """
        with self._lock:
            self._shutdown(timeout)

    def update_config(self, config: WebConfig) -> None:
        """Applies a new ``web`` configuration (SIGHUP) without dropping the server.

        New users and TLS files take effect for new connections; the cache of
        successful password checks starts empty. When ``listen_address`` changed, the
        new address is bound first and the old listener is closed after it; if the new
        address cannot be bound (e.g. it overlaps the old one: same port, wildcard
        address), :class:`WebError` says so and that a restart is needed.
        On any :class:`WebError` (bad TLS file, bad or unbindable address)
        nothing changes: the old configuration keeps serving.
        """
        state = _build_state(config, self._settings(config), self._failures)
        family, host, port = resolve(config.listen_address)
        with self._lock:
            old = self._state.config.listen_address
            fixed = self._options.systemd_socket or bool(self._options.listen_addresses)
            if self._httpd is None or fixed or (family, host, port) == (self._family, self._host, self._port):
                self._state = state
                self._family, self._host, self._port = family, host, port
                return
            try:
                httpd = self._bind(config.listen_address, family, host, port)
            except WebError as e:
                raise WebError(f"{e} (still serving on {old}; restart portwatch to move there)") from None
            self._shutdown(timeout=5.0)
            self._state = state
            self._family, self._host, self._port = family, host, port
            self._serve(httpd)
            log.info("now serving on %s (moved from %s)", config.listen_address, old)

    # -- internals (called with self._lock held)

    def _settings(self, config: WebConfig) -> WebSettings:
        """The settings in effect: the web configuration file's, or ``config``'s. Raises :class:`WebError`."""
        if self._file is not None:
            return self._file.current()
        return settings_from_config(config)

    def _listener(self, value: str, family: socket.AddressFamily, host: str, port: int) -> socket.socket:
        """A listening socket for ``value``. Raises :class:`WebError`."""
        try:
            return bind_listener(family, (host, port), self._backlog)
        except OSError as e:
            raise bind_error(value, e) from None

    def _bind(self, value: str, family: socket.AddressFamily, host: str, port: int) -> ConnectionServer:
        """A bound, listening server for ``value``. Raises :class:`WebError`."""
        return self._server([self._listener(value, family, host, port)])

    def _server(self, listeners: list[socket.socket]) -> ConnectionServer:
        """A server on ``listeners``. Never raises."""
        return ConnectionServer(listeners, handler_for(self._site), self._tls_context,
                                self._connection_timeout, self._max_connections, self._workers)

    def _serve(self, httpd: ConnectionServer) -> None:
        """Starts the serve loop of ``httpd`` in a daemon thread."""
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve, name="portwatch-web", daemon=True)
        self._thread.start()
        scheme = "https" if self._state.tls is not None else "http"
        for listener in httpd.listeners:
            host, port = listener.getsockname()[:2]
            log.info("serving on %s://%s/metrics", scheme, host_port(str(host), int(port)))

    def _shutdown(self, timeout: float) -> None:
        """Stops the current server, if any (see :meth:`stop`)."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        deadline = time.monotonic() + timeout
        httpd.stop_serving()
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        httpd.server_close()
        httpd.close_connections(deadline)
        self._httpd = None
        self._thread = None

    def _tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for a new connection (None: plain HTTP), reloaded when its files changed.

        With a web configuration file, first picks up the file's changes (a
        change that does not load is logged and the previous settings stay).
        """
        state = self._state
        if self._file is not None:
            settings = self._file.current()
            if settings is not state.settings:
                try:
                    state = _build_state(state.config, settings, self._failures)
                except WebError as e:
                    log.error("web config file changed but cannot be used, keeping the previous settings: %s", e)
                    state = replace(state, settings=settings)
                self._state = state
        tls = state.tls
        return tls.context() if tls is not None else None


class _Site:
    """What the routes serve for one :class:`MetricsServer` (its users follow :meth:`MetricsServer.update_config`)."""

    def __init__(self, owner: MetricsServer, registry: CollectorRegistry, ready: Callable[[], bool],
                 health: Callable[[], bool], index_extra: Callable[[], str] | None) -> None:
        self._owner = owner
        self._registry = registry
        self._rendered = RenderCache(registry)
        self._ready = ready
        self._health = health
        self._index_extra = index_extra

    @property
    def auth(self) -> Auth:
        """The users of the configuration in effect."""
        return self._owner._state.auth

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """Headers added to every response."""
        return self._owner._state.settings.headers

    @property
    def registry(self) -> CollectorRegistry:
        """The registry ``/metrics`` renders."""
        return self._registry

    def exposition(self, encoder: Callable[[CollectorRegistry], bytes], content_type: str, gzipped: bool) -> bytes:
        """The registry's body, shared by the scrapes of :data:`~portwatch.web.render.RENDER_MAX_AGE` seconds."""
        return self._rendered.body(encoder, content_type, gzipped)

    def ready(self) -> bool:
        """The readiness check given to the server."""
        return self._ready()

    def healthy(self) -> bool:
        """The health check given to the server."""
        return self._health()

    def index_page(self) -> str:
        """The HTML of ``/`` (without the extra part when ``index_extra`` raises)."""
        extra = ""
        if self._index_extra is not None:
            try:
                extra = self._index_extra()
            except Exception:
                log.exception("index_extra raised; index page shown without it")
        return index_page(portwatch.__version__, extra)
