"""The routes of the HTTP endpoint: ``/metrics``, ``/``, ``/-/healthy``, ``/-/ready``.

Job: answer one request. ``/metrics`` renders the registry in the text format,
or OpenMetrics when ``Accept`` asks for it, gzip-compressed when
``Accept-Encoding`` allows it, restricted by ``name[]`` query parameters (as
prometheus_client's own handler does); the whole registry's body is shared by
the scrapes of half a second (:mod:`.render`); a scrape never triggers or waits
for a scan. ``/`` is the index page; ``/-/healthy`` and ``/-/ready`` answer 200 ``OK``
while the checks return true, 503 otherwise. Other paths get 404, methods
other than GET and HEAD 405; with basic-auth users every request needs valid
credentials (401 otherwise; 429 with ``Retry-After`` when the client address
failed too often, see :mod:`.auth`). HTTP/1.1 connections stay open (keep-alive)
unless the client says ``Connection: close``; HTTP/1.0 ones close unless they ask for keep-alive. Requests
are logged at DEBUG on ``portwatch.web`` only. What the routes serve comes from
a :class:`Site`. May import the standard library, prometheus_client,
:mod:`portwatch.web.auth`, :mod:`portwatch.web.render` and :mod:`portwatch.web.server`.
"""

from __future__ import annotations

import gzip
import logging
from http import HTTPStatus
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

import portwatch
from portwatch.model import printable
from portwatch.web.auth import REALM_HEADER, Auth
from portwatch.web.handler import RequestHandler
from portwatch.web.server import client_text

__all__ = ["Handler", "Site", "handler_for"]

log = logging.getLogger("portwatch.web")

_PLAIN_TEXT = "text/plain; charset=utf-8"
# Control characters (and DEL) are escaped before request lines reach the log.


class Site(Protocol):
    """What the routes serve: the registry, the checks, the index page and the users (read per request)."""

    @property
    def auth(self) -> Auth:
        """The basic-auth users in effect."""
        ...

    @property
    def registry(self) -> CollectorRegistry:
        """The registry ``/metrics`` renders."""
        ...

    def exposition(self, encoder: Callable[[CollectorRegistry], bytes], content_type: str, gzipped: bool) -> bytes:
        """The whole registry rendered by ``encoder`` (gzip-compressed if ``gzipped``), shared by the
        scrapes of a short moment (:class:`~portwatch.web.render.RenderCache`); raises what ``encoder`` raises."""
        ...

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """Headers added to every response (``http_server_config.headers``)."""
        ...

    def ready(self) -> bool:
        """``/-/ready``: quick; raising counts as false."""
        ...

    def healthy(self) -> bool:
        """``/-/healthy``: quick; raising counts as false."""
        ...

    def index_page(self) -> str:
        """The HTML of ``/``."""
        ...


def handler_for(site: Site) -> type[Handler]:
    """A :class:`Handler` subclass serving ``site``. Never raises."""
    return type("SiteHandler", (Handler,), {"site": site})


class Handler(RequestHandler):
    """Serves one request (HTTP/1.1 keeps the connection open); the endpoints are :attr:`site`'s."""

    site: Site
    server_version = f"portwatch/{portwatch.__version__}"
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        """The ``Server`` header: ``portwatch/<version>`` (not the Python version)."""
        return self.server_version

    # -- logging

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """Logs at DEBUG on ``portwatch.web`` (never to stderr), control characters escaped."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", client_text(self.client_address), printable(format % args))

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
        # The target as sent: BaseHTTPRequestHandler turns a leading "//" into "/".
        words = self.requestline.split()
        target = words[1] if len(words) == 3 else self.path
        path, _, query = target.partition("?")
        site = self.site
        if path == "/metrics":
            self._metrics(parse_qs(query))
        elif path == "/":
            self._respond(HTTPStatus.OK, site.index_page().encode("utf-8"), content_type="text/html; charset=utf-8")
        elif path == "/-/healthy":
            self._probe(site.healthy, "Healthy")
        elif path == "/-/ready":
            self._probe(site.ready, "Ready")
        else:
            self._respond(HTTPStatus.NOT_FOUND, b"Not Found\n")

    do_HEAD = do_GET

    # -- endpoints

    def _authorized(self) -> bool:
        """True when no users are configured or the credentials are right; otherwise sends 401."""
        auth = self.site.auth
        if not auth.enabled:
            return True
        result = auth.authenticate(self.headers.get("Authorization"), str(self.client_address[0]))
        if result.user is not None:
            return True
        if result.retry_after > 0:
            self.close_connection = True
            self._respond(HTTPStatus.TOO_MANY_REQUESTS, b"Too Many Requests\n",
                          headers={"Retry-After": result.retry_after_header})
            return False
        self._respond(HTTPStatus.UNAUTHORIZED, b"Unauthorized\n", headers={"WWW-Authenticate": REALM_HEADER})
        return False

    def _metrics(self, params: dict[str, list[str]]) -> None:
        """Renders the registry (text format or OpenMetrics; gzip when accepted)."""
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        gzipped = gzip_accepted(self.headers.get("Accept-Encoding", ""))
        try:
            if "name[]" in params:  # a few families: rendered for this request alone
                body = encoder(self.site.registry.restricted_registry(params["name[]"]))
                if gzipped:
                    body = gzip.compress(body)
            else:
                body = self.site.exposition(encoder, content_type, gzipped)
        except Exception:
            log.exception("error rendering /metrics")
            self._respond(HTTPStatus.INTERNAL_SERVER_ERROR, b"error collecting metrics\n")
            return
        headers = {"Vary": "Accept-Encoding"}
        if gzipped:
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
        """Sends a complete response (no body for HEAD); the connection stays open when the client keeps it alive."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        for name, value in self.site.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        elif self.request_version == "HTTP/1.0":
            self.send_header("Connection", "keep-alive")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


