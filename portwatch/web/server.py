"""The server core of the HTTP endpoint: one event loop for connections, a bounded pool for requests.

Job: a :class:`ConnectionServer` over one or more listening sockets. One
thread (:meth:`ConnectionServer.serve`) accepts, does TLS handshakes without
blocking and reads request heads, all with ``selectors``; a connection that
is idle or slow costs a descriptor and a few hundred bytes, never a thread.
Each connection has a deadline, not a per-read timeout: the TLS handshake and
the request head together must arrive within ``connection_timeout`` seconds
of the accept (or of the previous response on a kept-alive connection, which
may first stay idle for ``idle_timeout``). Only complete request heads reach
the ``workers`` threads of the pool, which run the handler class (a
:class:`RequestHandler`) and hand kept-alive connections back to the loop
(HTTP/1.1 keep-alive). Bytes that are not an HTTP/1.x request (random bytes,
a TLS hello on the plain port, the HTTP/2 preface, HTTP/0.9) get an
``HTTP/1.1 400`` at once; on the TLS port, plain HTTP gets ``400 Client sent
an HTTP request to an HTTPS server.`` and other garbage is closed silently.
At most ``max_connections`` are open at once (further ones are closed at
once); running out of descriptors pauses accepting briefly instead of
spinning; :meth:`ConnectionServer.close_connections` shuts down the open
connections at stop. May import the standard library, :mod:`portwatch.model`,
:mod:`portwatch.web.head` and :mod:`portwatch.web.handler`; nothing else of portwatch.
"""

from __future__ import annotations

import errno
import logging
import queue
import selectors
import socket
import ssl
import sys
import threading
import time
from typing import Any, Callable

from portwatch.model.text import host_port, os_error_text
from portwatch.web.handler import RequestHandler
from portwatch.web.head import HTTP_TO_HTTPS_RESPONSE, Verdict, examine, plain_response

__all__ = ["CONNECTION_TIMEOUT", "IDLE_TIMEOUT", "MAX_CONNECTIONS", "WORKERS", "ConnectionServer", "client_text"]

log = logging.getLogger("portwatch.web")

#: Seconds from accept (or from the previous response) to a complete request
#: head, TLS handshake included; also the longest a response write may block.
CONNECTION_TIMEOUT = 15.0
#: Seconds a kept-alive connection may wait for its next request.
IDLE_TIMEOUT = 120.0
#: Connections open at once; further ones are closed at once.
MAX_CONNECTIONS = 4096
#: Threads answering complete requests.
WORKERS = 8

_TLS_HANDSHAKE_RECORD = 0x16
_SWEEP_SECONDS = 0.25
_DRAIN_SECONDS = 1.0
_BAD_REQUEST = plain_response(400, "Bad Request", "Bad Request: not an HTTP/1.x request\n")
_TOO_LARGE = plain_response(431, "Request Header Fields Too Large", "Request Header Fields Too Large\n")

# connection states
_PEEK, _HANDSHAKE, _HEAD, _WORKING, _DRAIN, _WRITE = range(6)


def client_text(client_address: Any) -> str:
    """``host:port`` of a client address tuple, for logs. Never raises."""
    try:
        host, port = client_address[0], client_address[1]
    except (TypeError, IndexError):
        return str(client_address)
    return host_port(str(host), port)


class _Conn:
    """One connection: its socket, what it sent so far, its state and deadline."""

    __slots__ = ("sock", "address", "state", "buffer", "deadline", "events", "context", "out", "keep")

    def __init__(self, sock: socket.socket, address: Any, context: ssl.SSLContext | None, deadline: float) -> None:
        self.sock = sock
        self.context = context
        state = _PEEK if context is not None else _HEAD
        self.address = address
        self.state = state
        self.buffer = b""
        self.out = b""  # the part of a response still to send
        self.keep = False  # whether the connection stays open after it
        self.deadline = deadline
        self.events = selectors.EVENT_READ


class ConnectionServer:
    """Serves HTTP(S) on listening sockets with a selector loop and a pool of worker threads."""

    def __init__(
        self,
        listeners: list[socket.socket],
        handler: type[RequestHandler],
        tls_context: Callable[[], ssl.SSLContext | None],
        connection_timeout: float = CONNECTION_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        workers: int = WORKERS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        """Takes bound, listening sockets (owned from now on), the handler class, a function
        giving the TLS context for a new connection (None: plain HTTP; called per connection,
        must not raise), the head deadline, the connection cap, the pool size and the
        keep-alive idle timeout. Starts the worker threads. Never raises.
        """
        self.listeners = listeners
        for sock in listeners:
            sock.setblocking(False)
        self._handler = handler
        self._tls_context = tls_context
        self.connection_timeout = connection_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._lock = threading.Condition()
        self._open: set[_Conn] = set()
        self._closing = False
        self._stop = threading.Event()
        self._returned: queue.SimpleQueue[_Conn] = queue.SimpleQueue()
        self._work: queue.SimpleQueue[_Conn | None] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._workers = [threading.Thread(target=self._work_loop, name="portwatch-web-worker", daemon=True)
                         for _ in range(workers)]
        for thread in self._workers:
            thread.start()

    @property
    def open_connections(self) -> int:
        """Connections open now (being read, answered or kept alive)."""
        with self._lock:
            return len(self._open)

    @property
    def server_address(self) -> tuple[str, int]:
        """``(host, port)`` of the first listening socket."""
        host, port = self.listeners[0].getsockname()[:2]
        return str(host), int(port)

    # -- the loop thread

    def serve(self) -> None:
        """Runs the loop until :meth:`stop_serving` (the serve thread's body); closes the loop's connections on exit."""
        sel = self._selector
        for sock in self.listeners:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        next_sweep = time.monotonic() + _SWEEP_SECONDS
        paused_until = 0.0
        try:
            while not self._stop.is_set():
                for key, mask in sel.select(_SWEEP_SECONDS):
                    if key.fileobj is self._wake_r:
                        self._take_returned()
                    elif key.data is None:
                        if not self._accept(key.fileobj):  # type: ignore[arg-type]
                            paused_until = time.monotonic() + 0.1
                            for sock in self.listeners:
                                sel.unregister(sock)
                    else:
                        self._step(key.data, mask)
                now = time.monotonic()
                if paused_until and now >= paused_until:
                    paused_until = 0.0
                    for sock in self.listeners:
                        sel.register(sock, selectors.EVENT_READ, None)
                if now >= next_sweep:
                    next_sweep = now + _SWEEP_SECONDS
                    self._sweep(now)
        finally:
            with self._lock:
                self._closing = True
                mine = [c for c in self._open if c.state != _WORKING]
            for conn in mine:
                self._close(conn)
            self._selector.close()

    def _accept(self, listener: socket.socket) -> bool:
        """Accepts what waits on ``listener``; False when out of descriptors or memory (pause accepting)."""
        for _ in range(64):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept a connection: %s; retrying in 0.1 s", os_error_text(e))
                    return False
                log.debug("accept failed: %s", os_error_text(e))
                return True
            sock.setblocking(False)
            with self._lock:
                refuse = self._closing or len(self._open) >= self.max_connections
                tls = None if refuse else self._tls_context()
                conn = _Conn(sock, address, tls, time.monotonic() + self.connection_timeout)
                if not refuse:
                    self._open.add(conn)
            if refuse:
                log.debug("%s: closed at once: %d connections already open", client_text(address), self.max_connections)
                sock.close()
                continue
            self._selector.register(sock, selectors.EVENT_READ, conn)
        return True

    def _step(self, conn: _Conn, mask: int) -> None:
        """Advances ``conn`` after its socket became ready."""
        try:
            if conn.state == _PEEK:
                self._peek(conn)
            elif conn.state == _HANDSHAKE:
                self._handshake(conn)
            elif conn.state == _HEAD:
                self._read_head(conn)
            elif conn.state == _WRITE:
                self._write(conn)
            elif conn.state == _DRAIN:
                if not conn.sock.recv(4096):
                    self._close(conn)
        except OSError as e:
            log.debug("%s: connection error: %s", client_text(conn.address), e)
            self._close(conn)

    def _peek(self, conn: _Conn) -> None:
        """TLS port: a handshake record starts the handshake; plain HTTP gets the 400; else closes."""
        first = conn.sock.recv(1, socket.MSG_PEEK)
        if not first:
            self._close(conn)
        elif first[0] == _TLS_HANDSHAKE_RECORD:
            context = conn.context
            assert context is not None
            self._selector.unregister(conn.sock)
            conn.sock = context.wrap_socket(conn.sock, server_side=True, do_handshake_on_connect=False)
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            conn.events = selectors.EVENT_READ
            conn.state = _HANDSHAKE
            self._handshake(conn)
        elif first.isalpha():
            log.debug("%s: plain HTTP request to the TLS port", client_text(conn.address))
            self._reply_and_drain(conn, HTTP_TO_HTTPS_RESPONSE)
        else:
            log.debug("%s: not a TLS handshake (first byte 0x%02x)", client_text(conn.address), first[0])
            self._close(conn)

    def _handshake(self, conn: _Conn) -> None:
        """One step of the non-blocking TLS handshake."""
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as e:
            log.debug("%s: TLS handshake failed: %s", client_text(conn.address), e)
            self._close(conn)
            return
        conn.state = _HEAD
        self._want(conn, selectors.EVENT_READ)
        self._read_head(conn)

    def _want(self, conn: _Conn, events: int) -> None:
        """Waits for ``events`` on ``conn``'s socket."""
        if conn.events != events:
            conn.events = events
            self._selector.modify(conn.sock, events, conn)

    def _read_head(self, conn: _Conn) -> None:
        """Reads what is there; a complete head goes to the pool, garbage gets a 400."""
        while True:
            try:
                chunk = conn.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            except ssl.SSLWantWriteError:
                self._want(conn, selectors.EVENT_WRITE)
                return
            if not chunk:
                self._close(conn)
                return
            conn.buffer += chunk
            if len(conn.buffer) > 65536:
                break
        self._want(conn, selectors.EVENT_READ)
        self._dispatch(conn)

    def _dispatch(self, conn: _Conn) -> None:
        """Acts on ``conn.buffer``: wait, answer 400/431, or hand a complete head to the pool."""
        verdict, length = examine(conn.buffer)
        if verdict is Verdict.INCOMPLETE:
            return
        if verdict is Verdict.BAD:
            log.debug("%s: not an HTTP/1.x request: %r", client_text(conn.address), conn.buffer[:32])
            self._reply_and_drain(conn, _BAD_REQUEST)
            return
        if verdict is Verdict.TOO_LARGE:
            self._reply_and_drain(conn, _TOO_LARGE)
            return
        self._selector.unregister(conn.sock)
        conn.state = _WORKING
        self._work.put(conn)

    def _reply_and_drain(self, conn: _Conn, response: bytes) -> None:
        """Sends ``response`` (best effort), half-closes and reads until the client closes (bounded)."""
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(_DRAIN_SECONDS)
            conn.sock.sendall(response)
            if isinstance(conn.sock, ssl.SSLSocket):
                self._close(conn)
                return
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            self._close(conn)
            return
        conn.state = _DRAIN
        conn.deadline = time.monotonic() + _DRAIN_SECONDS
        self._want(conn, selectors.EVENT_READ)

    def _take_returned(self) -> None:
        """Registers the kept-alive connections the workers handed back."""
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                conn = self._returned.get_nowait()
            except queue.Empty:
                return
            conn.state = _WRITE if conn.out else _HEAD
            conn.events = selectors.EVENT_WRITE if conn.out else selectors.EVENT_READ
            try:
                self._selector.register(conn.sock, conn.events, conn)
            except (OSError, ValueError):
                self._close(conn)
                continue
            if conn.state == _HEAD and conn.buffer:  # a pipelined request already arrived
                self._dispatch(conn)

    def _write(self, conn: _Conn) -> None:
        """Sends more of ``conn.out``; when all is sent, waits for the next request or closes."""
        if not _send_some(conn):
            self._want(conn, selectors.EVENT_WRITE)
            return
        if not conn.keep:
            self._close(conn)
            return
        conn.state = _HEAD
        conn.deadline = time.monotonic() + self.idle_timeout
        self._want(conn, selectors.EVENT_READ)
        if conn.buffer:
            self._dispatch(conn)

    def _sweep(self, now: float) -> None:
        """Closes the connections past their deadline."""
        with self._lock:
            late = [c for c in self._open if c.state != _WORKING and c.deadline <= now]
        for conn in late:
            log.debug("%s: closed: no complete request in time", client_text(conn.address))
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        """Closes ``conn`` and forgets it (loop thread, or a worker for a connection it holds)."""
        if conn.state != _WORKING:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError, RuntimeError):
                pass
        try:
            conn.sock.close()
        except OSError:
            pass
        with self._lock:
            self._open.discard(conn)
            self._lock.notify_all()

    # -- the worker threads

    def _work_loop(self) -> None:
        """Answers complete requests until a None arrives."""
        while True:
            conn = self._work.get()
            if conn is None:
                return
            try:
                conn.keep, conn.out = self._answer(conn)
                sent = _send_some(conn)
            except Exception as e:
                if not isinstance(e, OSError):
                    log.exception("%s: error while handling a request", client_text(conn.address))
                conn.keep, sent = False, True
            with self._lock:
                closing = self._closing
            if closing or (sent and not conn.keep):
                self._close(conn)
                continue
            # The rest of the response, or the wait for the next request, is the loop's.
            conn.deadline = time.monotonic() + (self.idle_timeout if sent else self.connection_timeout)
            self._returned.put(conn)
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass

    def _answer(self, conn: _Conn) -> tuple[bool, bytes]:
        """Runs the handler on the head in ``conn.buffer``: (whether the connection stays open, the response)."""
        _, length = examine(conn.buffer)
        head, conn.buffer = conn.buffer[:length], conn.buffer[length:]
        handler = self._handler((conn.sock, head), conn.address, self)  # type: ignore[arg-type]
        headers = getattr(handler, "headers", None)
        keep = not handler.close_connection and headers is not None
        if keep and headers is not None:
            body = str(headers.get("Content-Length", "0")).strip()
            keep = body in ("", "0") and "Transfer-Encoding" not in headers
        return keep, handler.response()

    # -- stopping

    def stop_serving(self) -> None:
        """Makes :meth:`serve` return (from any thread)."""
        self._stop.set()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def server_close(self) -> None:
        """Closes the listening sockets and stops the workers once they are done."""
        for sock in self.listeners:
            sock.close()
        for _ in self._workers:
            self._work.put(None)

    def close_connections(self, deadline: float) -> None:
        """Refuses new connections, shuts down open ones and waits (until ``deadline``, monotonic) for them to close."""
        with self._lock:
            self._closing = True
            for conn in self._open:
                try:
                    # shutdown(2) on the descriptor; SSLSocket.shutdown would also
                    # drop its SSL object under the feet of a worker.
                    socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
                except OSError:
                    pass
        while True:
            self._close_returned()
            with self._lock:
                remaining = deadline - time.monotonic()
                if not self._open:
                    break
                if remaining <= 0:
                    log.debug("stop: %d connection(s) still open", len(self._open))
                    break
                self._lock.wait(min(remaining, 0.05))
        self._wake_r.close()
        self._wake_w.close()

    def _close_returned(self) -> None:
        """Closes the connections workers handed back after the loop stopped."""
        while True:
            try:
                conn = self._returned.get_nowait()
            except queue.Empty:
                return
            conn.state = _WORKING  # not in the selector
            self._close(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Logs an exception from a request instead of printing it to stderr."""
        client = client_text(client_address)
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("%s: connection error", client, exc_info=True)
        else:
            log.exception("%s: error while handling a request", client)


def _send_some(conn: _Conn) -> bool:
    """Sends what the non-blocking socket takes of ``conn.out``; True when all is sent. Raises OSError."""
    while conn.out:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return False
        conn.out = conn.out[sent:]
    return True
