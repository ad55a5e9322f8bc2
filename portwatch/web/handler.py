"""The base of the request handlers the server core runs: one request, its head already read.

Job: :class:`RequestHandler`, a :class:`~http.server.BaseHTTPRequestHandler`
that reads the request head from the bytes the core's loop received and
writes straight to the socket, so the core's workers only ever see complete
request heads. May import the standard library only.
"""

from __future__ import annotations

import io
import socket
from http.server import BaseHTTPRequestHandler

__all__ = ["RequestHandler"]


class RequestHandler(BaseHTTPRequestHandler):
    """Base of the handler classes the core runs: one request per instance, head already read.

    The core constructs it with a ``(socket, head bytes)`` pair as the request;
    after :meth:`handle`, ``close_connection`` says whether the connection ends.
    """

    def setup(self) -> None:
        """Reads the head from the bytes the loop received; writes go straight to the socket."""
        sock, head = self.request
        self.connection = sock
        self.rfile = io.BytesIO(head)
        self.wfile = _SocketWriter(sock)  # type: ignore[assignment]

    def handle(self) -> None:
        """Handles exactly one request."""
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        """Nothing to flush: every write went to the socket."""


class _SocketWriter:
    """``wfile`` over a socket: each write is a ``sendall``."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def write(self, data: bytes) -> int:
        """Sends all of ``data``. Raises OSError."""
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered."""
