"""The ``webhook`` sink: POST the notification's JSON document (docs/alerting.md) to ``url``.

One request per notification, ``Content-Type: application/json``, with the
configured ``headers`` and, with ``bearer_token_file``, ``Authorization:
Bearer <token>`` (the file is read when the sink is built: at start and at
every reload). TLS certificates are verified unless ``tls_verify: false``.
A 2xx answer is success; see :mod:`portwatch.alerts.http` for what is
retried. The document's ``id`` lets a receiver drop a retry it already got.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from portwatch.alerts.notification import Notification, document
from portwatch.alerts.sinks.base import HTTP_KEYS, HttpSinkConfig, check_http, sink_section, TIMEOUT_KEY
from portwatch.alerts.sinks.core import NamedSink, SinkContext
import portwatch.config.schema as s
from portwatch.config.schema import Key

if TYPE_CHECKING:
    from portwatch.alerts.http import HttpPoster

__all__ = ["SHAPE", "WebhookSink", "WebhookSinkConfig", "build"]


@dataclass(frozen=True, kw_only=True)
class WebhookSinkConfig(HttpSinkConfig):
    """The ``webhook`` sink: a JSON document POSTed to ``url`` per notification.

    ``headers`` are sent as given (their values are never logged);
    ``bearer_token_file`` is read when the sink is built and sent as
    ``Authorization: Bearer ...``.
    """

    url: str
    type: str = "webhook"


SHAPE = sink_section(WebhookSinkConfig, "webhook", [
    Key("url", s.url(), "`http://` or `https://` URL", "where the JSON document is POSTed", required=True),
    TIMEOUT_KEY,
    *HTTP_KEYS,
], checks=[check_http])


class WebhookSink(NamedSink):
    """POSTs each notification's document to one URL."""

    def __init__(self, name: str, config: WebhookSinkConfig, poster: HttpPoster) -> None:
        super().__init__(name)
        self._url = config.url
        self._poster = poster

    def send(self, note: Notification) -> None:
        """POST ``note``'s document. Raises :class:`~portwatch.alerts.sinks.SinkError`."""
        body = json.dumps(document(note), separators=(",", ":")).encode("utf-8")
        self._poster.post(self._url, body)


def build(name: str, config: WebhookSinkConfig, context: SinkContext) -> WebhookSink:
    """The webhook sink ``name``. Raises :class:`~portwatch.alerts.sinks.SinkBuildError`
    when the token or CA file cannot be read."""
    from portwatch.alerts.http import HttpPoster, read_token  # urllib and ssl: loaded only to send

    token = read_token(config.bearer_token_file) if config.bearer_token_file is not None else None
    poster = HttpPoster(config.timeout, config.headers, token, config.tls_verify, config.tls_ca_file)
    return WebhookSink(name, config, poster)
