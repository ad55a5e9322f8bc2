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


def test_clients_varying_the_accept_header_keep_one_body_per_encoding() -> None:
    counting = Counting()
    cache = RenderCache(registry_with(counting), clock=lambda: 0.0)
    for i in range(50):  # a parameter the encoder copies into the content type, different each time
        cache.body(generate_openmetrics, f"{OPENMETRICS}; x={i}", False)
    assert len(cache) == 1 and counting.collections == 50  # replaced, never accumulated
    cache.body(generate_latest, TEXT, True)
    assert len(cache) == 2


def test_scrapes_waiting_for_a_render_slower_than_the_max_age_are_served_by_it() -> None:
    class Slow(Counting):
        def collect(self) -> Iterable[Metric]:
            time.sleep(1.0)  # longer than the max age below
            return super().collect()

    slow = Slow()
    cache = RenderCache(registry_with(slow), max_age=0.5)
    barrier = threading.Barrier(5)

    def one() -> None:
        barrier.wait(10)
        cache.body(generate_latest, TEXT, False)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert slow.collections <= 2  # not one render per waiting scrape (5)
