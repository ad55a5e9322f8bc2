"""The base of the request handlers the server core runs: one request, its head already read.

Job: :class:`RequestHandler`, a :class:`~http.server.BaseHTTPRequestHandler`
that reads the request head from the bytes the core's loop received and
collects its response for the core to send, so the core's workers only ever
see complete request heads and never wait for a slow reader. May import the standard library only.
"""

from __future__ import annotations

import io
from http.server import BaseHTTPRequestHandler

__all__ = ["RequestHandler"]


class RequestHandler(BaseHTTPRequestHandler):
    """Base of the handler classes the core runs: one request per instance, head already read.

    The core constructs it with a ``(socket, head bytes)`` pair as the request;
    after :meth:`handle`, ``close_connection`` says whether the connection ends.
    """

    def setup(self) -> None:
        """Reads the head from the bytes the loop received; the response is collected, not sent."""
        sock, head = self.request
        self.connection = sock
        self.rfile = io.BytesIO(head)
        self.wfile = _Collector()  # type: ignore[assignment]

    def handle(self) -> None:
        """Handles exactly one request."""
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        """Nothing to flush: the core sends :meth:`response`."""

    def response(self) -> bytes:
        """Everything the handler wrote: the response the core sends (without blocking a worker)."""
        collector = self.wfile
        assert isinstance(collector, _Collector)
        return b"".join(collector.chunks)


class _Collector:
    """``wfile`` that keeps what is written."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        """Keeps ``data``."""
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing to do."""
