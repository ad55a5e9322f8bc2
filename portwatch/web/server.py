"""The server core of the HTTP endpoint: accepting, TLS handshakes, the connection cap, graceful stop.

Job: a bound, listening :class:`ConnectionServer` that accepts in one thread
and handles each connection in its own thread with any
:class:`~http.server.BaseHTTPRequestHandler` class. The TLS handshake runs in
the connection's thread under a socket timeout, so a stalled or
garbage-speaking client holds one thread for at most ``connection_timeout``
seconds and never blocks ``accept()``; a plain HTTP request sent to the TLS
port gets ``400 Client sent an HTTP request to an HTTPS server.`` and nothing
else. At most ``max_connections`` connections are handled at once (further
ones are closed at once); running out of descriptors pauses accepting briefly
instead of spinning; :meth:`ConnectionServer.close_connections` shuts down
the open connections at stop. What a request gets (routes, auth) and which
TLS context a connection uses are the caller's. May import the standard
library and :mod:`portwatch.model`; nothing else of portwatch.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import socketserver
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from portwatch.model.text import host_port, os_error_text

__all__ = ["CONNECTION_TIMEOUT", "MAX_CONNECTIONS", "ConnectionServer", "client_text"]

log = logging.getLogger("portwatch.web")

#: Seconds a client may stay silent (TLS handshake, request, or while we write)
#: before its connection is dropped.
CONNECTION_TIMEOUT = 15.0
#: Connections handled at once; further ones are closed at once (like
#: node_exporter's ``--web.max-requests``, it protects the host from a flood).
MAX_CONNECTIONS = 64

_TLS_HANDSHAKE_RECORD = 0x16
_HTTP_TO_HTTPS_RESPONSE = (
    b"HTTP/1.0 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"Client sent an HTTP request to an HTTPS server.\n"
)


def client_text(client_address: Any) -> str:
    """``host:port`` of a client address tuple, for logs. Never raises."""
    try:
        host, port = client_address[0], client_address[1]
    except (TypeError, IndexError):
        return str(client_address)
    return host_port(str(host), port)


class _Connection:
    """A connection being handled: the socket to shut down when the server stops."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class ConnectionServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with TLS in the handler thread, a connection limit and no stderr output."""

    daemon_threads = True
    allow_reuse_address = True  # SO_REUSEADDR only; never SO_REUSEPORT (a second instance must fail to bind)

    def __init__(
        self,
        family: socket.AddressFamily,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        tls_context: Callable[[], ssl.SSLContext | None],
        connection_timeout: float = CONNECTION_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """Creates and binds a server on ``address`` (raises OSError).

        Takes the address family and ``(host, port)``, the request handler
        class, a function giving the TLS context for a new connection (None:
        plain HTTP; called per connection, must not raise), the connection
        timeout and the connection cap.
        """
        self.address_family = family
        self._tls_context = tls_context
        self.connection_timeout = connection_timeout
        self.max_connections = max_connections
        self._connections: dict[socket.socket, _Connection] = {}
        self._connections_changed = threading.Condition()
        self._closing = False
        self._stop_serving = threading.Event()
        super().__init__(address, handler, bind_and_activate=False)
        self._wake_r, self._wake_w = socket.socketpair()
        self.timeout = 0  # handle_request() returns at once when no connection waits
        try:
            if family == socket.AF_INET6:
                # "::" serves IPv4 too; an explicit IPv6 address is IPv6 only anyway.
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def serve(self) -> None:
        """Accepts connections until :meth:`stop_serving` (the serve thread's body).

        Unlike ``serve_forever`` it sleeps in ``select`` with no poll interval and
        wakes at once when stopped.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop_serving.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self.socket and not self._stop_serving.is_set():
                        self.handle_request()

    def stop_serving(self) -> None:
        """Makes :meth:`serve` return (from any thread)."""
        self._stop_serving.set()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def server_close(self) -> None:
        """Closes the listening socket and the wake-up pair."""
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()

    def get_request(self) -> tuple[Any, Any]:
        """Accepts; when out of descriptors or memory, logs and pauses briefly instead of spinning."""
        try:
            return super().get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.warning("cannot accept a connection: %s; retrying in 0.1 s", os_error_text(e))
                self._stop_serving.wait(0.1)
            raise

    def server_bind(self) -> None:
        """Binds without HTTPServer's reverse DNS lookup of the address (socket.getfqdn)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Starts a thread for the connection, or closes it at once when over the limit or closing."""
        with self._connections_changed:
            refuse = self._closing or len(self._connections) >= self.max_connections
            if not refuse:
                self._connections[request] = _Connection(request)
        if refuse:
            log.debug("%s: closed at once: %d connections already open", client_text(client_address), self.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Handles the connection (in its thread), then forgets it."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Sets the socket timeout, does the TLS handshake if TLS is on, then handles HTTP."""
        request.settimeout(self.connection_timeout)
        context = self._tls_context()
        if context is None:
            super().finish_request(request, client_address)
            return
        conn = self._wrap_tls(request, client_address, context)
        if conn is None:
            return
        with self._connections_changed:
            entry = self._connections.get(request)
            if entry is not None:
                entry.sock = conn
            if self._closing:  # close_connections() ran during the handshake
                self.shutdown_request(conn)
                return
        try:
            super().finish_request(conn, client_address)
        finally:
            self.shutdown_request(conn)

    def _wrap_tls(self, raw: socket.socket, client_address: Any, context: ssl.SSLContext) -> ssl.SSLSocket | None:
        """The TLS socket over ``raw`` after a successful handshake; None (logged at debug) otherwise."""
        client = client_text(client_address)
        try:
            first = raw.recv(1, socket.MSG_PEEK)
        except OSError as e:
            log.debug("%s: no TLS handshake: %s", client, e)
            return None
        if not first:
            return None
        if first[0] != _TLS_HANDSHAKE_RECORD:
            if first.isalpha():  # an HTTP method: plain HTTP to the TLS port
                log.debug("%s: plain HTTP request to the TLS port", client)
                _reply_and_drain(raw, _HTTP_TO_HTTPS_RESPONSE)
            else:
                log.debug("%s: not a TLS handshake (first byte 0x%02x)", client, first[0])
            return None
        try:
            return context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log.debug("%s: TLS handshake failed: %s", client, e)
            return None

    def _forget(self, request: socket.socket) -> None:
        """Drops ``request`` from the open connections."""
        with self._connections_changed:
            self._connections.pop(request, None)
            self._connections_changed.notify_all()

    def close_connections(self, deadline: float) -> None:
        """Refuses new connections, shuts down open ones and waits (until ``deadline``, monotonic) for their threads."""
        with self._connections_changed:
            self._closing = True
            for entry in self._connections.values():
                try:
                    # shutdown(2) on the descriptor; SSLSocket.shutdown would also
                    # drop its SSL object under the feet of the handler thread.
                    socket.socket.shutdown(entry.sock, socket.SHUT_RDWR)
                except OSError:
                    pass
            while self._connections:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.debug("stop: %d connection thread(s) still running", len(self._connections))
                    break
                self._connections_changed.wait(remaining)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Logs an exception from a connection's thread instead of printing it to stderr."""
        client = client_text(client_address)
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("%s: connection error", client, exc_info=True)
        else:
            log.exception("%s: error while handling a request", client)


def _reply_and_drain(sock: socket.socket, response: bytes) -> None:
    """Sends ``response``, half-closes, and reads what the client sent (bounded) so it gets the reply, not a reset."""
    try:
        sock.sendall(response)
        sock.shutdown(socket.SHUT_WR)
        for _ in range(16):
            if not sock.recv(4096):
                break
    except OSError:
        pass


