"""The daemon's HTTP(S) endpoint: ``/metrics``, an index page, health and readiness.

Built on the standard library (:class:`http.server.ThreadingHTTPServer`, :mod:`ssl`)
and prometheus_client's exposition functions, and behaving the way users of
Prometheus exporters (node_exporter and its exporter-toolkit) expect:

``/metrics``
    The registry in the text format, or OpenMetrics when the ``Accept`` header asks
    for it; gzip-compressed when ``Accept-Encoding`` allows it; ``name[]`` query
    parameters restrict the output, as in prometheus_client's own handler. A scrape
    only renders the registry: it never triggers or waits for a scan.
``/``
    A small HTML page: name, version, a link to ``/metrics`` and, if given, the HTML
    returned by ``index_extra()``.
``/-/healthy`` and ``/-/ready``
    200 ``OK`` while ``health()`` / ``ready()`` return true, 503 otherwise.

Other paths get 404, methods other than GET and HEAD get 405. Every response closes
its connection (HTTP/1.0 semantics, like prometheus_client's server).

TLS (``web.tls_cert_file`` + ``web.tls_key_file``): TLS 1.2 or newer; with
``web.tls_client_ca_file`` a client certificate signed by that CA is required. The
handshake runs in the connection's own thread, under a socket timeout, so a stalled
or garbage-speaking client holds one thread for at most ``connection_timeout``
seconds and never blocks ``accept()``. A plain HTTP request sent to the TLS port gets
``400 Client sent an HTTP request to an HTTPS server.`` and nothing else. The
certificate and key files are checked (``stat``) on every new connection and
reloaded when they change (certificate rotation needs no SIGHUP, as with
exporter-toolkit); a changed file that does not load is logged and the previous
certificate stays in use.

Basic auth (``web.basic_auth_users``: user -> bcrypt hash): when users are
configured, every endpoint needs valid credentials, otherwise 401 with
``WWW-Authenticate: Basic realm="portwatch"``. Successful checks are cached for
:data:`AUTH_CACHE_SECONDS`, keyed by the user and a SHA-256 of the supplied password,
so that scrapes do not pay bcrypt's cost each time; the cache belongs to one
configuration and is dropped by :meth:`MetricsServer.update_config`.

Requests are logged at DEBUG level on the ``portwatch.web`` logger only.
"""

from __future__ import annotations

import base64
import binascii
import errno
import gzip
import hashlib
import html
import logging
import os
import re
import selectors
import socket
import socketserver
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs

import bcrypt
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

import portwatch
from portwatch.config import WebConfig
from portwatch.config import parse_listen_address as config_parse_listen_address

__all__ = [
    "AUTH_CACHE_SECONDS",
    "CONNECTION_TIMEOUT",
    "MAX_CONNECTIONS",
    "MetricsServer",
    "WebError",
    "parse_listen_address",
]

log = logging.getLogger("portwatch.web")

#: Seconds a client may stay silent (TLS handshake, request, or while we write)
#: before its connection is dropped.
CONNECTION_TIMEOUT = 15.0
#: Connections handled at once; further ones are closed at once (like
#: node_exporter's ``--web.max-requests``, it protects the host from a flood).
MAX_CONNECTIONS = 64
#: How long a successful basic-auth check is remembered.
AUTH_CACHE_SECONDS = 60.0
_AUTH_CACHE_MAX_ENTRIES = 1024
#: Compared against when the user is unknown, so that an unknown user costs as
#: much time as a wrong password (no user enumeration by timing).
_DUMMY_BCRYPT_HASH = b"$2b$10$9CCkCehCQpK5jTy6/9jlqeqVrK1/TE58WcsZG.KWaek.aGPeRLzVS"
_BCRYPT_HASH_RE = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")  # as config.py accepts
_REALM_HEADER = 'Basic realm="portwatch"'
_PLAIN_TEXT = "text/plain; charset=utf-8"
_TLS_HANDSHAKE_RECORD = 0x16
_HTTP_TO_HTTPS_RESPONSE = (
    b"HTTP/1.0 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"Client sent an HTTP request to an HTTPS server.\n"
)
# Control characters (and DEL) are escaped before request lines reach the log.
_CONTROL_CHARS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}


class WebError(Exception):
    """A configuration or start-up problem of the HTTP endpoint, with a message a person can act on.

    The message names the setting and its value, e.g.
    ``web.listen_address 127.0.0.1:9731: address already in use``.
    """


# --------------------------------------------------------------------------- addresses


def parse_listen_address(value: str) -> tuple[str, int]:
    """Split ``web.listen_address`` into host and port (:func:`portwatch.config.parse_listen_address`).

    Port 0 (any free port) is allowed here. Returns ``(host, port)`` with
    brackets removed; ``host`` is ``""`` for ``:port`` (every address).
    Raises :class:`WebError` naming the value when it is malformed.
    """
    try:
        return config_parse_listen_address(value, any_port=True)
    except ValueError as exc:
        raise WebError(f"web.listen_address {value!r}: {exc}") from None


def _resolve(value: str) -> tuple[socket.AddressFamily, str, int]:
    """Family and numeric host to bind for ``web.listen_address`` ``value``.

    ``:port`` means every address: ``::`` dual-stack when the host has IPv6, else
    ``0.0.0.0``. Raises :class:`WebError` when the value is malformed or its host name
    does not resolve.
    """
    host, port = parse_listen_address(value)
    if host == "":
        if socket.has_dualstack_ipv6():
            return socket.AF_INET6, "::", port
        return socket.AF_INET, "0.0.0.0", port
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as e:
        reason = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise WebError(f"web.listen_address {value}: cannot resolve {host!r}: {reason}") from None
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return family, str(sockaddr[0]), port
    raise WebError(f"web.listen_address {value}: {host!r} has no IPv4 or IPv6 address")


def _bind_error(value: str, e: OSError) -> WebError:
    """The :class:`WebError` for a failed bind of ``web.listen_address`` ``value``."""
    if e.errno == errno.EADDRINUSE:
        reason = "address already in use"
    elif e.errno == errno.EADDRNOTAVAIL:
        reason = "address not available (not an address of this host)"
    elif e.errno == errno.EACCES:
        reason = "permission denied (a port below net.ipv4.ip_unprivileged_port_start needs CAP_NET_BIND_SERVICE)"
    else:
        reason = e.strerror or str(e)
    return WebError(f"web.listen_address {value}: {reason}")


# --------------------------------------------------------------------------- basic auth


class _Auth:
    """Basic-auth users of one configuration, with its own cache of successful checks."""

    def __init__(self, users: Mapping[str, str]) -> None:
        """Takes user -> bcrypt hash. Raises :class:`WebError` naming a user whose hash is malformed."""
        checked: dict[str, bytes] = {}
        for user, hashed in users.items():
            if not isinstance(hashed, str) or not _BCRYPT_HASH_RE.match(hashed):
                raise WebError(f"web.basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nbB USER PASSWORD`)")
            checked[user] = hashed.encode("ascii")
        self._users = checked
        self._cache: dict[tuple[str, bytes], float] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when users are configured (every request must authenticate)."""
        return bool(self._users)

    def check(self, authorization: str | None) -> str | None:
        """Checks an ``Authorization`` header value.

        Takes the header value (None when absent). Returns the authenticated user
        name, or None when the credentials are missing, malformed or wrong. Never raises.
        """
        if authorization is None:
            return None
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
            user_bytes, sep, password = decoded.partition(b":")
            user = user_bytes.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        # bcrypt looks at the first 72 bytes only (htpasswd and older bcrypt
        # libraries truncate silently; bcrypt>=5 raises instead).
        password = password[:72]
        key = (user, hashlib.sha256(password).digest())
        now = time.monotonic()
        with self._lock:
            expires = self._cache.get(key)
        if expires is not None and now < expires:
            return user
        hashed = self._users.get(user)
        try:
            ok = bcrypt.checkpw(password, hashed if hashed is not None else _DUMMY_BCRYPT_HASH)
        except ValueError as e:  # only a hash we accepted but bcrypt does not (should not happen)
            log.error("basic auth: cannot check the password of user %r: %s", user, e)
            return None
        if not ok or hashed is None:
            return None
        with self._lock:
            if len(self._cache) >= _AUTH_CACHE_MAX_ENTRIES:
                self._cache = {k: t for k, t in self._cache.items() if t > now}
                if len(self._cache) >= _AUTH_CACHE_MAX_ENTRIES:
                    self._cache.clear()
            self._cache[key] = now + AUTH_CACHE_SECONDS
        return user


# --------------------------------------------------------------------------- TLS


class _EncryptedKey(Exception):
    """Raised from the password callback: the key file is passphrase-protected."""


def _no_password() -> bytes:
    """Password callback for :meth:`ssl.SSLContext.load_cert_chain`: never prompt on a terminal."""
    raise _EncryptedKey()


def _check_readable(setting: str, path: Path) -> None:
    """Raises :class:`WebError` ``"<setting> <path>: <reason>"`` unless ``path`` is a readable file."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise WebError(f"{setting} {path}: no such file") from None
    except PermissionError:
        raise WebError(f"{setting} {path}: permission denied") from None
    except IsADirectoryError:
        raise WebError(f"{setting} {path}: is a directory, not a file") from None
    except OSError as e:
        raise WebError(f"{setting} {path}: {e.strerror or e}") from None


def _ssl_reason(e: ssl.SSLError) -> str:
    """A short reason from an :class:`ssl.SSLError` (OpenSSL's reason code when it has one)."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.replace("_", " ").lower()
    return str(e)


def _build_ssl_context(config: WebConfig) -> ssl.SSLContext | None:
    """The server TLS context ``config`` asks for, or None when TLS is off.

    Raises :class:`WebError` naming the setting and file that is missing,
    unreadable or does not hold what it should.
    """
    cert, key, ca = config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file
    if cert is None and key is None:
        if ca is not None:
            raise WebError(f"web.tls_client_ca_file {ca}: needs web.tls_cert_file and web.tls_key_file")
        return None
    if cert is None:
        raise WebError(f"web.tls_key_file {key}: needs web.tls_cert_file too")
    if key is None:
        raise WebError(f"web.tls_cert_file {cert}: needs web.tls_key_file too")
    _check_readable("web.tls_cert_file", cert)
    _check_readable("web.tls_key_file", key)
    if ca is not None:
        _check_readable("web.tls_client_ca_file", ca)

    # The certificate alone first, so that a bad certificate and a bad key get
    # different messages (OpenSSL says "PEM lib" for both).
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert))
    except ssl.SSLError as e:
        raise WebError(f"web.tls_cert_file {cert}: bad certificate: {_ssl_reason(e)} (expected PEM)") from None

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key), password=_no_password)
    except _EncryptedKey:
        raise WebError(f"web.tls_key_file {key}: bad key: it is encrypted (passphrase-protected); portwatch needs an unencrypted key") from None
    except ssl.SSLError as e:
        if getattr(e, "reason", None) == "KEY_VALUES_MISMATCH":
            raise WebError(f"web.tls_key_file {key}: bad key: it does not match web.tls_cert_file {cert}") from None
        raise WebError(f"web.tls_key_file {key}: bad key: {_ssl_reason(e)} (expected a PEM private key)") from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except ssl.SSLError as e:
            raise WebError(f"web.tls_client_ca_file {ca}: bad certificate: {_ssl_reason(e)} (expected PEM)") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _file_signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int, int], ...] | None:
    """What identifies the current content of ``paths`` (inode, size, mtime, ctime); None if one cannot be stat'ed."""
    try:
        return tuple(
            (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            for st in (os.stat(p) for p in paths)
        )
    except OSError:
        return None


class _TLS:
    """The TLS context of one configuration; reloads itself when its files change."""

    def __init__(self, config: WebConfig, context: ssl.SSLContext, signature: tuple[tuple[int, int, int, int], ...] | None) -> None:
        """Takes the configuration, the context built from it and the files' signature at build time."""
        self._config = config
        self._paths = tuple(
            p for p in (config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file) if p is not None
        )
        self._context = context
        self._signature = signature
        self._failed_signature: tuple[tuple[int, int, int, int], ...] | None = None
        self._lock = threading.Lock()

    @classmethod
    def build(cls, config: WebConfig) -> _TLS | None:
        """The TLS state for ``config``, None when TLS is off. Raises :class:`WebError` (see :func:`_build_ssl_context`)."""
        paths = tuple(p for p in (config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file) if p is not None)
        signature = _file_signature(paths)
        context = _build_ssl_context(config)
        if context is None:
            return None
        return cls(config, context, signature)

    def context(self) -> ssl.SSLContext:
        """The context for a new connection, reloaded first if a file changed.

        A changed file that fails to load is logged (once per change) and the
        previous context is returned. Never raises.
        """
        signature = _file_signature(self._paths)
        if signature is None or signature == self._signature:
            return self._context
        with self._lock:
            if signature == self._signature or signature == self._failed_signature:
                return self._context
            try:
                context = _build_ssl_context(self._config)
            except WebError as e:
                self._failed_signature = signature
                log.error("TLS files changed but cannot be loaded, still using the previous certificate: %s", e)
                return self._context
            assert context is not None  # the configuration has a certificate and key
            self._context = context
            self._signature = signature
            log.info("TLS files changed: reloaded %s", ", ".join(str(p) for p in self._paths))
            return self._context


@dataclass(frozen=True)
class _State:
    """Everything one configuration decides about request handling, swapped as a whole."""

    config: WebConfig
    auth: _Auth
    tls: _TLS | None


def _build_state(config: WebConfig) -> _State:
    """Validates ``config`` (users, TLS files) into a :class:`_State`. Raises :class:`WebError`."""
    return _State(config=config, auth=_Auth(config.basic_auth_users), tls=_TLS.build(config))


# --------------------------------------------------------------------------- server


class _Connection:
    """A connection being handled: the socket to shut down when the server stops."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class _HTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with TLS in the handler thread, a connection limit and no stderr output."""

    daemon_threads = True
    allow_reuse_address = True  # SO_REUSEADDR only; never SO_REUSEPORT (a second instance must fail to bind)

    def __init__(
        self,
        family: socket.AddressFamily,
        address: tuple[str, int],
        owner: MetricsServer,
        connection_timeout: float,
        max_connections: int,
    ) -> None:
        """Creates and binds (raises OSError) a server for ``owner`` on ``address``."""
        self.address_family = family
        self.owner = owner
        self.connection_timeout = connection_timeout
        self.max_connections = max_connections
        self._connections: dict[socket.socket, _Connection] = {}
        self._connections_changed = threading.Condition()
        self._closing = False
        self._stop_serving = threading.Event()
        super().__init__(address, _Handler, bind_and_activate=False)
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
                log.warning("cannot accept a connection: %s; retrying in 0.1 s", e.strerror)
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
            log.debug("%s: closed at once: %d connections already open", _client(client_address), self.max_connections)
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
        tls = self.owner._state.tls
        if tls is None:
            super().finish_request(request, client_address)
            return
        conn = self._wrap_tls(request, client_address, tls.context())
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
        client = _client(client_address)
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
        client = _client(client_address)
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


def _client(client_address: Any) -> str:
    """``host:port`` of a client address tuple, for logs."""
    try:
        host, port = client_address[0], client_address[1]
    except (TypeError, IndexError):
        return str(client_address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    """Serves one request (the connection closes after it)."""

    server: _HTTPServer
    server_version = f"portwatch/{portwatch.__version__}"
    protocol_version = "HTTP/1.0"

    def version_string(self) -> str:
        """The ``Server`` header: ``portwatch/<version>`` (not the Python version)."""
        return self.server_version

    # -- logging

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """Logs at DEBUG on ``portwatch.web`` (never to stderr), control characters escaped."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", _client(self.client_address), (format % args).translate(_CONTROL_CHARS))

    # -- dispatch

    def parse_request(self) -> bool:
        """Parses the request, then authenticates it and refuses methods other than GET and HEAD.

        Returns True when ``do_GET``/``do_HEAD`` should run; otherwise the response
        (400, 401 or 405) has been sent.
        """
        if not super().parse_request():
            return False
        if not self._authorized():
            return False
        if self.command not in ("GET", "HEAD"):
            self._respond(HTTPStatus.METHOD_NOT_ALLOWED, b"Method Not Allowed\n", headers={"Allow": "GET, HEAD"})
            return False
        return True

    def do_GET(self) -> None:
        """Routes GET (and HEAD) requests."""
        path, _, query = self.path.partition("?")
        owner = self.server.owner
        if path == "/metrics":
            self._metrics(parse_qs(query))
        elif path == "/":
            self._respond(HTTPStatus.OK, owner._index_page().encode("utf-8"), content_type="text/html; charset=utf-8")
        elif path == "/-/healthy":
            self._probe(owner._health, "Healthy")
        elif path == "/-/ready":
            self._probe(owner._ready, "Ready")
        else:
            self._respond(HTTPStatus.NOT_FOUND, b"Not Found\n")

    do_HEAD = do_GET

    # -- endpoints

    def _authorized(self) -> bool:
        """True when no users are configured or the credentials are right; otherwise sends 401."""
        auth = self.server.owner._state.auth
        if not auth.enabled:
            return True
        user = auth.check(self.headers.get("Authorization"))
        if user is not None:
            return True
        self._respond(HTTPStatus.UNAUTHORIZED, b"Unauthorized\n", headers={"WWW-Authenticate": _REALM_HEADER})
        return False

    def _metrics(self, params: dict[str, list[str]]) -> None:
        """Renders the registry (text format or OpenMetrics; gzip when accepted)."""
        registry = self.server.owner._registry
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            target: Any = registry
            if "name[]" in params:
                target = registry.restricted_registry(params["name[]"])
            body = encoder(target)
        except Exception:
            log.exception("error rendering /metrics")
            self._respond(HTTPStatus.INTERNAL_SERVER_ERROR, b"error collecting metrics\n")
            return
        headers = {"Vary": "Accept-Encoding"}
        if gzip_accepted(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        self._respond(HTTPStatus.OK, body, content_type=content_type, headers=headers)

    def _probe(self, check: Callable[[], bool], name: str) -> None:
        """200 ``<name>``-OK when ``check()`` is true, 503 when false or when it raises."""
        try:
            ok = bool(check())
        except Exception:
            log.exception("%s check raised", name.lower())
            ok = False
        if ok:
            self._respond(HTTPStatus.OK, b"OK\n")
        else:
            self._respond(HTTPStatus.SERVICE_UNAVAILABLE, f"Not {name.lower()}\n".encode())

    def _respond(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str = _PLAIN_TEXT,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Sends a complete response (no body for HEAD) and marks the connection for closing."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True


# --------------------------------------------------------------------------- public


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
    ) -> None:
        """Prepares (does not bind) a server.

        Takes the ``web`` configuration, the registry ``/metrics`` renders, the
        readiness and health checks (called per request, must be quick; raising counts
        as false), and an optional function returning trusted HTML for the index page
        (e.g. the latest scan summary; raising omits it).
        Raises :class:`WebError` when the configuration is invalid (listen address,
        TLS files, bcrypt hashes).
        """
        self._family, self._host, self._port = _resolve(config.listen_address)
        self._state = _build_state(config)
        self._registry = registry
        self._ready = ready
        self._health = health
        self._index_extra = index_extra
        self._connection_timeout = connection_timeout
        self._max_connections = max_connections
        self._httpd: _HTTPServer | None = None
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
            httpd = self._bind(self._state.config.listen_address, self._family, self._host, self._port)
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
        On any :class:`WebError` (bad TLS file, bad hash, bad or unbindable address)
        nothing changes: the old configuration keeps serving.
        """
        state = _build_state(config)
        family, host, port = _resolve(config.listen_address)
        with self._lock:
            old = self._state.config.listen_address
            if self._httpd is None or (family, host, port) == (self._family, self._host, self._port):
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

    def _bind(self, value: str, family: socket.AddressFamily, host: str, port: int) -> _HTTPServer:
        """A bound, listening server for ``value``. Raises :class:`WebError`."""
        try:
            return _HTTPServer(family, (host, port), self, self._connection_timeout, self._max_connections)
        except OSError as e:
            raise _bind_error(value, e) from None

    def _serve(self, httpd: _HTTPServer) -> None:
        """Starts the serve loop of ``httpd`` in a daemon thread."""
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve, name="portwatch-web", daemon=True)
        self._thread.start()
        scheme = "https" if self._state.tls is not None else "http"
        host, port = self.address
        log.info("serving on %s://%s/metrics", scheme, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

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

    def _index_page(self) -> str:
        """The HTML of ``/``."""
        extra = ""
        if self._index_extra is not None:
            try:
                extra = self._index_extra()
            except Exception:
                log.exception("index_extra raised; index page shown without it")
        version = html.escape(portwatch.__version__)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>portwatch</title></head>\n"
            "<body>\n<h1>portwatch</h1>\n"
            "<p>Catches the failures caused by the ephemeral port range.</p>\n"
            f"<p>Version {version}</p>\n"
            "<ul>\n<li><a href=\"metrics\">Metrics</a></li>\n"
            "<li><a href=\"-/healthy\">Health</a></li>\n<li><a href=\"-/ready\">Readiness</a></li>\n</ul>\n"
            f"{extra}\n</body>\n</html>\n"
        )
