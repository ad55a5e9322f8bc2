"""Reading an HTTP/1.x request head off the wire, and the answers the server core sends by itself.

Job: decide, from the bytes received so far on a connection, whether they are
the start of an HTTP/1.0 or HTTP/1.1 request, a complete request head, or
something else (random bytes, a TLS hello on the plain port, the HTTP/2
preface, an HTTP/0.9 request line), and the raw responses for the cases the
server core answers without a handler (400, 431, the 400 for plain HTTP on the
TLS port, 503 while stopping). Pure functions over bytes; may import the
standard library only.
"""

from __future__ import annotations

import re
from enum import Enum

__all__ = ["HEAD_LIMIT", "Verdict", "examine", "plain_response", "HTTP_TO_HTTPS_RESPONSE"]

#: Largest request head accepted (request line and headers), like Go's 1 MiB
#: default scaled down: a scrape's head is a few hundred bytes.
HEAD_LIMIT = 32 * 1024
_METHOD_LIMIT = 16
_REQUEST_LINE = re.compile(rb"[A-Z]{1,16} [\x21-\x7e]+ HTTP/1\.[01]")


class Verdict(Enum):
    """What the bytes received so far are."""

    INCOMPLETE = "incomplete"  # the start of a request: wait for more
    COMPLETE = "complete"  # a whole head (up to and with the blank line)
    BAD = "bad"  # not an HTTP/1.x request: answer 400 and close
    TOO_LARGE = "too large"  # over HEAD_LIMIT: answer 431 and close


def examine(buffer: bytes) -> tuple[Verdict, int]:
    """Classifies ``buffer`` (what a connection sent so far, leading blank lines allowed).

    Returns the verdict and, for COMPLETE, the length of the head (the bytes
    after it belong to the next request). Never raises.
    """
    start = 0
    while buffer.startswith(b"\r\n", start):
        start += 2
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        line_end = buffer.find(b"\n", start)
    first = buffer[start:] if line_end < 0 else buffer[start:line_end]
    method, space, _ = first.partition(b" ")
    if method and (not (method.isalpha() and method.isupper()) or len(method) > _METHOD_LIMIT):
        return Verdict.BAD, 0
    if not space and len(first) > _METHOD_LIMIT:
        return Verdict.BAD, 0
    if line_end >= 0 and not _REQUEST_LINE.fullmatch(first.rstrip(b"\r")):
        return Verdict.BAD, 0  # HTTP/0.9, HTTP/2 preface, garbage with a space
    for end_mark in (b"\r\n\r\n", b"\n\n"):
        end = buffer.find(end_mark, start)
        if end >= 0:
            length = end + len(end_mark)
            if length > HEAD_LIMIT:
                return Verdict.TOO_LARGE, 0
            return Verdict.COMPLETE, length
    if len(buffer) > HEAD_LIMIT:
        return Verdict.TOO_LARGE, 0
    return Verdict.INCOMPLETE, 0


def plain_response(status: int, reason: str, body: str, extra: str = "") -> bytes:
    """A complete ``HTTP/1.1`` response that closes the connection (text body). Never raises."""
    data = body.encode("utf-8")
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    ).encode("ascii") + data


#: The answer to a plain HTTP request on the TLS port (as Go's net/http gives).
HTTP_TO_HTTPS_RESPONSE = (
    b"HTTP/1.0 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"Client sent an HTTP request to an HTTPS server.\n"
)
