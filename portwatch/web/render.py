"""The rendered ``/metrics`` body, shared by the scrapes of one short moment.

Job: :class:`RenderCache`. Rendering the registry costs about 1.5 ms of CPU
for the daemon's few hundred series, most of a scrape's cost; under many
concurrent scrapers (an HA pair, federation, a misconfigured job, a load
test) every one of them would pay it, one at a time under the GIL. A body is
rendered at most once per ``max_age`` seconds for each encoding (text or
OpenMetrics, gzip or not: one body kept for each, whatever parameters a
client's ``Accept`` header varies); scrapes that arrive while one is rendered
wait for it and share it, however long it takes. A scrape therefore shows figures at most ``max_age``
old (:data:`RENDER_MAX_AGE`, half a second: far below any scrape interval).
May import the standard library and prometheus_client.
"""

from __future__ import annotations

import gzip
import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry

__all__ = ["RENDER_MAX_AGE", "RenderCache"]

#: How long one rendered body serves the scrapes that follow it, in seconds.
RENDER_MAX_AGE = 0.5


class RenderCache:
    """Rendered bodies of one registry by encoding, each reused for ``max_age`` seconds. Thread-safe."""

    def __init__(self, registry: CollectorRegistry, max_age: float = RENDER_MAX_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Takes the registry, how long a body is reused, and the clock (seconds). Never raises."""
        self._registry = registry
        self._max_age = max_age
        self._clock = clock
        # (media type, gzip) -> (when its render began, its full content type, body): at most four
        # entries, whatever Accept headers clients send (a parameter they vary replaces the entry)
        self._bodies: dict[tuple[str, bool], tuple[float, str, bytes]] = {}
        self._lock = threading.Lock()  # one render at a time: the scrapes waiting for it share it

    def __len__(self) -> int:
        """How many bodies are kept (one per media type and compression at most)."""
        with self._lock:
            return len(self._bodies)

    def body(self, encoder: Callable[[CollectorRegistry], bytes], content_type: str, gzipped: bool) -> bytes:
        """The registry rendered by ``encoder`` (whose media type is ``content_type``), gzip-compressed if ``gzipped``.

        Raises what ``encoder`` raises (a collector's error); nothing is kept then.
        """
        key = (content_type.partition(";")[0].strip(), gzipped)
        asked = self._clock()  # before the lock: a render that began while this scrape waited serves it
        with self._lock:
            kept = self._bodies.get(key)
            if kept is not None and kept[1] == content_type and asked - kept[0] < self._max_age:
                return kept[2]
            began = self._clock()
            body = encoder(self._registry)
            if gzipped:
                body = gzip.compress(body)
            self._bodies[key] = (began, content_type, body)
            return body
