"""The configuration every sink shares, written once: the type key, queue and retry keys, HTTP keys.

A sink module builds its section with :func:`sink_section` (its own keys,
then the shared ones); the HTTP sinks (webhook, alertmanager) subclass
:class:`HttpSinkConfig` and add :data:`HTTP_KEYS`.

May import: :mod:`portwatch.config.types`, :mod:`portwatch.config.grammar`,
:mod:`portwatch.config.schema` and the standard library (pure: the config
loader imports every sink's shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import portwatch.config.schema as s
from portwatch.config.grammar import header_name
from portwatch.config.schema import Key, MapOf, Section, SectionCheck
from portwatch.config.types import SinkConfig

__all__ = ["HTTP_KEYS", "RETRY_KEYS", "TIMEOUT_KEY", "HttpSinkConfig", "check_http", "sink_section"]


@dataclass(frozen=True, kw_only=True)
class HttpSinkConfig(SinkConfig):
    """What the HTTP sinks share: ``timeout`` (seconds), extra ``headers`` (values secret),
    ``bearer_token_file`` (read when the sink is built), TLS verification and CA file."""

    timeout: float = 10.0
    headers: Mapping[str, str] = field(default_factory=dict)
    bearer_token_file: Path | None = None
    tls_verify: bool = True
    tls_ca_file: Path | None = None


def _check_retry(sink: Any, given: frozenset[object]) -> Iterator[tuple[str, str]]:
    """``retry_max_delay`` must not be below ``retry_initial_delay``."""
    if sink is not None and sink.retry_max_delay < sink.retry_initial_delay:
        yield ("retry_max_delay",
               f"must be >= retry_initial_delay ({sink.retry_initial_delay:g}s), got {sink.retry_max_delay:g}s")


def check_http(sink: Any, given: frozenset[object]) -> Iterator[tuple[str, str]]:
    """A bearer token file and an ``Authorization`` header exclude each other."""
    if sink is not None and sink.bearer_token_file is not None and any(
            h.lower() == "authorization" for h in sink.headers):
        yield "headers", "sets Authorization, and so does bearer_token_file: use one of them"


#: How long one delivery attempt may take (the webhook, alertmanager and exec sinks have it).
TIMEOUT_KEY = Key("timeout", s.duration(0.1), "duration, at least `100ms`",
                  "one attempt fails after this long (an exec command is killed)")


HTTP_KEYS: tuple[Key, ...] = (
    Key("headers", MapOf(header_name, s.header_value()), "mapping header → string",
        "HTTP headers added to every request; values are never logged or shown in errors"),
    Key("bearer_token_file", s.absolute_path(), "absolute path", "a file holding a token sent as"
        " `Authorization: Bearer <token>`; read at start and at every reload, never logged",
        preflight="readable"),
    Key("tls_verify", s.boolean(), "`true` or `false`",
        "verify the server's certificate and name for `https://`"),
    Key("tls_ca_file", s.absolute_path(), "absolute path",
        "verify the server's certificate against this CA bundle (PEM)", default="system CAs",
        preflight="readable"),
)

RETRY_KEYS: tuple[Key, ...] = (
    Key("queue_size", s.integer(1, 1_000_000), "integer 1..1000000", "most notifications waiting for"
        " delivery; see alerting.md for what is dropped first when it is full"),
    Key("retry_initial_delay", s.duration(0.01), "duration, at least `10ms`", "the first wait after a"
        " failed attempt; doubled after every further failure, with jitter"),
    Key("retry_max_delay", s.duration(0.01), "duration, at least `10ms`",
        "the longest wait between attempts; must be >= `retry_initial_delay`"),
)


def sink_section(cls: type[SinkConfig], sink_type: str, keys: Sequence[Key],
                 checks: Sequence[SectionCheck] = ()) -> Section:
    """The section of one sink type: ``type``, the sink's ``keys``, the retry keys, and the checks."""
    type_key = Key("type", s.choice([sink_type]), "", "what the sink is", required=True)
    return Section(cls, [type_key, *keys, *RETRY_KEYS], checks=[*checks, _check_retry])
