"""Prometheus metrics of the failure capture: failed connect()/bind() calls by kind, and the top destinations and ports.

:class:`FailureMetrics` is a prometheus_client custom collector, registered
beside :class:`~portwatch.output.metrics.PortwatchMetrics`. Whoever reads the
capture calls :meth:`~FailureMetrics.record` with each batch's events (per
namespace) and :meth:`~FailureMetrics.record_capture` with the capture's
state; a scrape renders the counts under a lock, never waiting for a read.

Families (documented in docs/failures.md; names and labels are a contract):

- ``portwatch_failures_total{kind}``: failed calls seen, ``kind`` =
  ``connect_failed`` | ``bind_failed`` (both always exported);
- ``portwatch_connect_failures_by_destination_total{netns, remote_ip, remote_port}``:
  failed connect() calls towards the K destinations with the most;
- ``portwatch_bind_failures_by_port_total{netns, address, port}``: failed
  bind() calls on the K ports with the most;
- ``portwatch_failure_capture_active``: 1 while the capture runs, else 0;
- ``portwatch_failure_capture_lost_total``: times the kernel reported
  dropped audit records (ENOBUFS) to the reader.

Bounds: at most ``top`` series per per-endpoint family (K, like
``metrics.top_destinations``), chosen among at most ``tracked`` endpoints
(the least-failing one is forgotten first, so a burst towards new
destinations cannot grow memory). May import :mod:`portwatch.model` and
prometheus_client.
"""

from __future__ import annotations

import heapq
import threading
from typing import Iterable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from portwatch.model import Kind
from portwatch.model.failures import FailedCall, FailureEvent

__all__ = ["FAILURE_KINDS", "FailureMetrics"]

#: The kind label of each failed call.
FAILURE_KINDS: dict[FailedCall, Kind] = {FailedCall.CONNECT: Kind.CONNECT_FAILED, FailedCall.BIND: Kind.BIND_FAILED}

_Endpoint = tuple[str, str, str]  # netns, ip, port


class FailureMetrics(Collector):
    """The failure counters, top-K bounded. ``FailureMetrics(top=10, tracked=1000)``; thread-safe."""

    def __init__(self, top: int = 10, tracked: int = 1000) -> None:
        if top < 0 or tracked < 1:
            raise ValueError("top must be >= 0 and tracked >= 1")
        self._top = top
        self._tracked = tracked
        self._lock = threading.Lock()
        self._totals = {kind: 0 for kind in FAILURE_KINDS.values()}
        self._endpoints: dict[FailedCall, dict[_Endpoint, int]] = {c: {} for c in FailedCall}
        self._active = False
        self._lost = 0

    def record(self, events: Iterable[FailureEvent], netns: str = "host") -> None:
        """Count ``events`` (failures of the namespace whose key is ``netns``)."""
        with self._lock:
            for e in events:
                self._totals[FAILURE_KINDS[e.call]] += 1
                if e.address is None:
                    continue
                counts = self._endpoints[e.call]
                key = (netns, e.address.ip, str(e.address.port))
                if key not in counts and len(counts) >= self._tracked:
                    del counts[min(counts, key=counts.__getitem__)]
                counts[key] = counts.get(key, 0) + 1

    def record_capture(self, active: bool, lost_total: int) -> None:
        """The capture's state: running or not, ENOBUFS reported so far (a count that only grows)."""
        with self._lock:
            self._active = active
            self._lost = max(self._lost, lost_total)

    def set_top(self, k: int) -> None:
        """Use K (>= 0) endpoints per family from the next scrape on."""
        with self._lock:
            self._top = max(int(k), 0)

    def describe(self) -> Iterable[Metric]:
        """The families, without samples."""
        return list(self._families(with_samples=False))

    def collect(self) -> Iterable[Metric]:
        """The families with the current counts (one scrape)."""
        return list(self._families(with_samples=True))

    def _families(self, with_samples: bool) -> Iterator[Metric]:
        totals = CounterMetricFamily("portwatch_failures_total",
                                     "Failed connect() (EADDRNOTAVAIL) and bind() (EADDRINUSE) calls seen.",
                                     labels=["kind"])
        connects = CounterMetricFamily(
            "portwatch_connect_failures_by_destination_total",
            "Failed connect() calls (EADDRNOTAVAIL) towards the destinations with the most (top-K).",
            labels=["netns", "remote_ip", "remote_port"])
        binds = CounterMetricFamily(
            "portwatch_bind_failures_by_port_total",
            "Failed bind() calls (EADDRINUSE) on the ports with the most (top-K).",
            labels=["netns", "address", "port"])
        active = GaugeMetricFamily("portwatch_failure_capture_active",
                                   "1 while the failure capture (audit) runs, else 0.")
        lost = CounterMetricFamily("portwatch_failure_capture_lost",
                                   "Times the kernel reported dropped audit records (ENOBUFS) to the reader.")
        if with_samples:
            with self._lock:
                for kind, n in self._totals.items():
                    totals.add_metric([kind.value], n)
                for family, call in ((connects, FailedCall.CONNECT), (binds, FailedCall.BIND)):
                    counts = self._endpoints[call]
                    for key in heapq.nsmallest(self._top, counts, key=lambda k: (-counts[k], k)):
                        family.add_metric(list(key), counts[key])
                active.add_metric([], 1 if self._active else 0)
                lost.add_metric([], self._lost)
        yield from (totals, connects, binds, active, lost)
