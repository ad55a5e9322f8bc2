"""HTTP POST for the webhook and alertmanager sinks: TLS, headers, timeouts, error classes.

Uses the standard library only (``urllib.request``). Requests ignore the
``http_proxy``/``https_proxy`` environment (portwatch talks to the URLs it
is configured with, as Prometheus does) and never follow redirects (a
redirected POST would silently turn into a GET): a 3xx answer is an error.

Errors are classified for the delivery worker (:class:`SinkError`):
connection failures, timeouts, 408, 429 and 5xx are temporary (retried);
every other status is permanent (the notification is dropped and counted).
Messages name the URL without any ``user:password@`` part and never
include header values.
"""

from __future__ import annotations

import email.utils
import http.client
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any, Mapping

from portwatch import __version__
from portwatch.alerts.sinks.core import SinkBuildError, SinkError
from portwatch.config.grammar import redact_url
from portwatch.model.text import os_error_text

__all__ = ["HttpPoster", "read_token", "redact_url"]

USER_AGENT = f"portwatch/{__version__}"
#: At most this much of a response body is read (and then discarded).
MAX_RESPONSE = 64 * 1024
_TEMPORARY_STATUS = frozenset({408, 425, 429})


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace stripped). Raises :class:`SinkBuildError`."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SinkBuildError(f"cannot read bearer_token_file {str(path)!r}: {os_error_text(exc)}") from None
    if not token or any(c in token for c in "\r\n\0"):
        raise SinkBuildError(f"bearer_token_file {str(path)!r} is empty or holds more than one line")
    return token


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: the 3xx answer becomes an HTTPError."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        return None


def _retry_after(headers: Any, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), if any."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


class HttpPoster:
    """POSTs bodies with fixed headers, timeout and TLS settings.

    Takes the timeout (seconds), the extra headers (values secret), an
    optional bearer token, whether to verify TLS and an optional CA file.
    Raises :class:`SinkBuildError` when the CA file cannot be loaded.
    """

    def __init__(self, timeout: float, headers: Mapping[str, str] | None = None, token: str | None = None,
                 tls_verify: bool = True, ca_file: Path | None = None) -> None:
        self.timeout = timeout
        self._headers = {"User-Agent": USER_AGENT, **dict(headers or {})}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        try:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise SinkBuildError(f"cannot load tls_ca_file {str(ca_file)!r}: {exc}") from None
        if not tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context), _NoRedirect())

    def post(self, url: str, body: bytes, content_type: str = "application/json") -> int:
        """POST ``body`` to ``url``; returns the 2xx status. Raises :class:`SinkError` (see module doc)."""
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={**self._headers, "Content-Type": content_type})
        shown = redact_url(url)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read(MAX_RESPONSE)
                status: int = response.status
        except urllib.error.HTTPError as exc:
            code = exc.code
            try:
                exc.read(MAX_RESPONSE)
            except (OSError, http.client.HTTPException):
                pass
            finally:
                exc.close()
            temporary = code >= 500 or code in _TEMPORARY_STATUS
            raise SinkError(f"{shown} answered HTTP {code} {exc.reason}",
                            permanent=not temporary, retry_after=_retry_after(exc.headers, time.time())) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = os_error_text(reason) if isinstance(reason, BaseException) else str(reason)
            raise SinkError(f"cannot reach {shown}: {text}") from None
        except (socket.timeout, TimeoutError):
            raise SinkError(f"{shown} did not answer within {self.timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SinkError(f"{shown}: {type(exc).__name__}: {exc}") from None
        if not 200 <= status < 300:
            raise SinkError(f"{shown} answered HTTP {status}", permanent=True)
        return status
