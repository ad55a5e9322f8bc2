"""The rendered ``/metrics`` body shared by the scrapes of half a second: fewer renders, the same bytes.

Unit tests of :class:`~portwatch.web.render.RenderCache` with an injected
clock, and a real server whose registry holds a collector counting its
collections while real clients scrape it at once.
"""

from __future__ import annotations

import gzip
import threading
import time
from typing import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from portwatch.config import WebConfig
from portwatch.web.render import RENDER_MAX_AGE, RenderCache
from tests.test_web import LOOPBACK, running
from tests.test_web_attacks import simultaneous_scrapes

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class Counting:
    """A collector whose one gauge says how many times it was collected."""

    def __init__(self, fail: bool = False) -> None:
        self.collections = 0
        self.fail = fail
        self.lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            self.collections += 1
            n = self.collections
        if self.fail:
            raise RuntimeError("a collector broke")
        yield GaugeMetricFamily("test_collections", "How many times this collector was collected.", value=n)


def registry_with(collector: Counting) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def test_scrapes_within_the_max_age_share_one_render_and_a_later_one_renders_again() -> None:
    counting = Counting()
    now = [100.0]
    cache = RenderCache(registry_with(counting), max_age=0.5, clock=lambda: now[0])
    first = cache.body(generate_latest, TEXT, False)
    now[0] += 0.49
    assert cache.body(generate_latest, TEXT, False) == first and counting.collections == 1
    now[0] += 0.02
    assert b"test_collections 2.0" in cache.body(generate_latest, TEXT, False)


def test_each_encoding_is_rendered_on_its_own() -> None:
    counting = Counting()
    cache = RenderCache(registry_with(counting), clock=lambda: 0.0)
    text = cache.body(generate_latest, TEXT, False)
    zipped = cache.body(generate_latest, TEXT, True)
    openmetrics = cache.body(generate_openmetrics, OPENMETRICS, False)
    assert counting.collections == 3
    assert b"test_collections 1.0" in text and b"test_collections 2.0" in gzip.decompress(zipped)
    assert openmetrics.endswith(b"# EOF\n")


def test_a_failed_render_is_not_kept() -> None:
    counting = Counting(fail=True)
    cache = RenderCache(registry_with(counting), clock=lambda: 0.0)
    for _ in range(2):
        try:
            cache.body(generate_latest, TEXT, False)
        except RuntimeError as exc:
            assert str(exc) == "a collector broke"
        else:
            raise AssertionError("the collector's error was swallowed")
    assert counting.collections == 2  # the second scrape tried again


def test_concurrent_scrapes_of_a_real_server_share_renders() -> None:
    counting = Counting()
    with running(WebConfig(listen_address=LOOPBACK), registry_with(counting)) as server:
        began = time.monotonic()
        statuses = simultaneous_scrapes(server.address, 40)
        took = time.monotonic() - began
    assert statuses == [200] * 40
    # at most one render per RENDER_MAX_AGE while they ran (not one per scrape)
    assert counting.collections <= 1 + int(took / RENDER_MAX_AGE) + 1 < 40
