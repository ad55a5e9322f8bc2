"""Prometheus metrics: a custom collector that renders the latest scan.

:class:`PortwatchMetrics` is a prometheus_client custom collector. The daemon
calls :meth:`~PortwatchMetrics.record_scan`, :meth:`~PortwatchMetrics.record_scan_error`
and :meth:`~PortwatchMetrics.record_reload`; each computes every figure at
once into an immutable :class:`Figures` value and swaps the reference under a
lock. A scrape (:meth:`~PortwatchMetrics.collect`) takes the current reference
and renders it: it never triggers a scan, never waits for one, and always sees
the figures of one scan together with the counters that go with it.

A failed scan keeps the previous scan's figures (ports, sockets, findings,
destinations) and counts the error; ``portwatch_last_scan_success`` goes to 0.

A pass covers one or more network namespaces (:meth:`~PortwatchMetrics.record_pass`):
every series describing one namespace's scan carries a ``netns`` label (the
namespace's key, ``host`` for the host namespace and for a scan of the own
namespace only). At most ``max_series`` namespaces get series: the host's
always, then those with the most findings, then by key; how many were left out
is the gauge ``portwatch_namespaces_left_out``.

Every metric name, label and bound is documented in ``docs/metrics.md``; the
names are a contract with the alerting rules in ``config/prometheus/``.
Labels are bounded: kinds, severities, protocols and states are enums; the
per-listener series are capped at :data:`LISTENER_SERIES_LIMIT`; the
per-destination series at the configured top-K; the namespaces at ``max_series``.
"""

from __future__ import annotations

import math
import platform
import threading
from collections import Counter
from dataclasses import dataclass, replace
from typing import Iterable, Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from portwatch import __version__
from portwatch.model import KERNEL_TCP_STATES, Finding, Kind, NamespaceKind, Protocol, Severity, SocketState
from portwatch.model import ScanResult
from portwatch.model.results import NamespacesResult

__all__ = [
    "DURATION_BUCKETS",
    "HOST_NETNS",
    "LISTENER_SERIES_LIMIT",
    "MAX_NAMESPACE_SERIES",
    "Figures",
    "PortwatchMetrics",
    "ScanFigures",
    "netns_label",
    "scan_figures",
    "shown_results",
]

#: The ``netns`` label of the host namespace (and of a scan of the own namespace only).
HOST_NETNS = NamespaceKind.HOST.value
#: Default of ``namespaces.max_series``: at most this many namespaces get series.
MAX_NAMESPACE_SERIES = 512

#: At most this many ``portwatch_listener_in_ephemeral_range`` series (the
#: lowest (protocol, port) pairs); the full count is in
#: ``portwatch_findings{kind="listener_in_ephemeral_range"}``.
LISTENER_SERIES_LIMIT = 100

#: Upper bounds (seconds) of the ``portwatch_scan_duration_seconds`` buckets.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

#: The (protocol, state) pairs always exported by ``portwatch_sockets`` (0 when
#: none); other pairs appear when seen.
SOCKET_SERIES: tuple[tuple[Protocol, SocketState], ...] = (
    *((Protocol.TCP, st) for st in KERNEL_TCP_STATES.values()),
    (Protocol.UDP, SocketState.ESTABLISHED),
    (Protocol.UDP, SocketState.UNCONN),
)

_UNKNOWN_PROCESS = "unknown"
_MAX_PROCESS_NAMES = 3


@dataclass(frozen=True)
class ScanFigures:
    """What one namespace's scan contributes to the metrics; every sequence is label values + value.

    ``netns`` is the namespace's label (:func:`netns_label`).
    """

    netns: str
    range_low: int
    range_high: int
    usable_ports: int
    reserved_ports: int
    sockets: tuple[tuple[str, str, int], ...]  # protocol, state, count
    findings: tuple[tuple[str, str, int], ...]  # kind, severity, count
    listeners: tuple[tuple[str, str, str], ...]  # protocol, port, process
    destinations: tuple[tuple[str, str, str, float], ...]  # local_ip, remote_ip, remote_port, ratio


@dataclass(frozen=True)
class Figures:
    """Everything a scrape renders; replaced as a whole, never mutated.

    ``duration_buckets`` holds non-cumulative counts, one per bound of
    :data:`DURATION_BUCKETS` plus one for ``+Inf``. ``None`` means "not known
    yet" and omits the series. ``namespaces`` holds one :class:`ScanFigures`
    per namespace shown (at most ``max_series``), ``kinds`` the namespaces
    scanned by kind, ``left_out`` how many scanned were not shown, ``skipped``
    how many were found but could not be read (all of the latest successful pass).
    """

    namespaces: tuple[ScanFigures, ...] | None = None
    kinds: tuple[tuple[str, int], ...] = ()
    left_out: int = 0
    skipped: int = 0
    detected: tuple[tuple[str, int], ...] = tuple((k.value, 0) for k in Kind)
    scans: int = 0
    errors: int = 0
    duration_buckets: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)
    duration_sum: float = 0.0
    last_scan_timestamp: float | None = None
    last_scan_success: bool | None = None
    reload_successful: bool | None = None
    reload_timestamp: float | None = None


def _process_label(finding: Finding) -> str:
    """The ``process`` label of a listener: its distinct process names, sorted, comma-separated.

    At most three names (then ``+N``); ``unknown`` when no owner is known.
    """
    # A process without a name counts as unknown: a pid would start a new series
    # every time the process restarts.
    names = sorted({p.name or _UNKNOWN_PROCESS for p in finding.processes})
    if not names:
        return _UNKNOWN_PROCESS
    shown = ",".join(names[:_MAX_PROCESS_NAMES])
    if len(names) > _MAX_PROCESS_NAMES:
        shown += f",+{len(names) - _MAX_PROCESS_NAMES}"
    return shown


def netns_label(result: ScanResult) -> str:
    """The ``netns`` label of ``result``'s series: its namespace's key, :data:`HOST_NETNS` without one."""
    ns = result.snapshot.namespace
    return HOST_NETNS if ns is None or ns.kind is NamespaceKind.HOST else ns.key


def shown_results(results: Iterable[ScanResult], limit: int) -> tuple[list[ScanResult], int]:
    """The results that get series (at most ``limit``, at least the host's) and how many were left out.

    Ranked: the host namespace first, then the most findings, then by
    label; returned in that order. Pure.
    """
    ranked = sorted(results, key=lambda r: (netns_label(r) != HOST_NETNS, -len(r.findings), netns_label(r)))
    room = max(limit, 1)
    return ranked[:room], max(len(ranked) - room, 0)


def scan_figures(result: ScanResult, top_destinations: int,
                 listener_limit: int = LISTENER_SERIES_LIMIT) -> ScanFigures:
    """The figures of one namespace's scan.

    Takes the scan's result, K of the top-K destinations and the cap of
    listener series. Returns a :class:`ScanFigures`. Pure; never raises for a
    well-formed ScanResult.
    """
    snap = result.snapshot
    st = snap.settings
    counts = snap.state_counts()
    socket_keys = [(p.value, s.value) for p, s in SOCKET_SERIES]
    socket_keys += sorted(set(counts) - set(socket_keys))
    sockets = tuple((p, s, counts.get((p, s), 0)) for p, s in socket_keys)

    per_kind: Counter[tuple[str, str]] = Counter((f.kind.value, f.severity.value) for f in result.findings)
    findings = tuple((k.value, sev.value, per_kind.get((k.value, sev.value), 0)) for k in Kind for sev in Severity)

    listener_findings = sorted(
        (f for f in result.findings
         if f.kind is Kind.LISTENER_IN_EPHEMERAL_RANGE and f.port is not None),
        key=lambda f: (f.protocol.value if f.protocol else "", f.port or 0),
    )
    listeners = tuple(
        (f.protocol.value if f.protocol else "", str(f.port), _process_label(f))
        for f in listener_findings[: max(listener_limit, 0)]
    )

    destinations = tuple(
        (d.local_ip, d.remote_ip, str(d.remote_port), ratio)
        for d, _count, ratio in result.top_destinations(top_destinations)
    )
    return ScanFigures(
        netns=netns_label(result),
        range_low=st.port_range.low,
        range_high=st.port_range.high,
        usable_ports=st.usable_ports,
        reserved_ports=len(st.reserved),
        sockets=sockets,
        findings=findings,
        listeners=listeners,
        destinations=destinations,
    )


def _counted_scan(old: Figures, duration: float, finished_at: float, *, success: bool) -> Figures:
    """``old`` with one more scan counted: its duration observed, its end time and success. Pure."""
    return replace(
        old,
        scans=old.scans + 1,
        duration_buckets=_observe(old.duration_buckets, duration),
        duration_sum=old.duration_sum + duration,
        last_scan_timestamp=finished_at,
        last_scan_success=success,
    )


def _observe(buckets: tuple[int, ...], value: float) -> tuple[int, ...]:
    """``buckets`` with one more observation of ``value`` in the first bucket whose bound holds it."""
    index = len(DURATION_BUCKETS)
    for i, bound in enumerate(DURATION_BUCKETS):
        if value <= bound:
            index = i
            break
    return tuple(n + 1 if i == index else n for i, n in enumerate(buckets))


class PortwatchMetrics(Collector):
    """The daemon's metrics as one custom collector (see the module documentation).

    Thread-safe: the record methods may run in the scan loop while scrapes run
    in the HTTP server's threads.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None,
        *,
        top_destinations: int = 10,
        listener_limit: int = LISTENER_SERIES_LIMIT,
        max_series: int = MAX_NAMESPACE_SERIES,
        version: str = __version__,
        python_version: str = platform.python_version(),
    ) -> None:
        """Create the collector and register it with ``registry`` (unless None).

        Takes the registry, K of the top-K destinations (from
        ``config.metrics.top_destinations``), the cap of listener series (per
        namespace), the cap of namespaces with series (``namespaces.max_series``),
        and the build info labels. Raises ``ValueError`` if a metric name is already
        registered in ``registry``.
        """
        self._lock = threading.Lock()
        self._figures = Figures()
        self._top = max(int(top_destinations), 0)
        self._listener_limit = listener_limit
        self._max_series = max(int(max_series), 1)
        self._version = version
        self._python_version = python_version
        if registry is not None:
            registry.register(self)

    # -- recording (scan loop)

    @property
    def figures(self) -> Figures:
        """The figures a scrape renders now."""
        with self._lock:
            return self._figures

    def set_top_destinations(self, k: int) -> None:
        """Use K (>= 0) for the top-K destinations from the next recorded scan on."""
        self._top = max(int(k), 0)

    def set_max_series(self, n: int) -> None:
        """Show at most ``n`` (>= 1) namespaces from the next recorded pass on."""
        self._max_series = max(int(n), 1)

    def record_scan(self, result: ScanResult, new_findings: Iterable[Finding], finished_at: float) -> None:
        """Record a successful scan of one namespace: :meth:`record_pass` of a pass of that scan alone."""
        self.record_pass(NamespacesResult((result,), duration=result.duration), new_findings, finished_at)

    def record_pass(self, result: NamespacesResult, new_findings: Iterable[Finding], finished_at: float) -> None:
        """Record a successful pass over one or more namespaces.

        Takes the pass's result (its ``duration`` is the pass's), the findings
        that are new in it (keys not active in the previous pass; counted in
        ``portwatch_findings_detected_total``) and the Unix time the pass ended.
        """
        shown, left_out = shown_results(result.results, self._max_series)
        namespaces = tuple(scan_figures(r, self._top, self._listener_limit) for r in shown)
        kinds = Counter(r.snapshot.namespace.kind.value if r.snapshot.namespace is not None
                        else NamespaceKind.HOST.value for r in result.results)
        new_per_kind = Counter(f.kind.value for f in new_findings)
        duration = max(result.duration, 0.0) if math.isfinite(result.duration) else 0.0
        with self._lock:
            old = self._figures
            self._figures = replace(
                _counted_scan(old, duration, finished_at, success=True),
                namespaces=namespaces,
                kinds=tuple((k.value, kinds.get(k.value, 0)) for k in NamespaceKind),
                left_out=left_out,
                skipped=len(result.skipped),
                detected=tuple((k, n + new_per_kind.get(k, 0)) for k, n in old.detected),
            )

    def record_detected(self, new_findings: Iterable[Finding]) -> None:
        """Count findings that appeared between passes (event findings) in ``portwatch_findings_detected_total``."""
        new_per_kind = Counter(f.kind.value for f in new_findings)
        if not new_per_kind:
            return
        with self._lock:
            old = self._figures
            self._figures = replace(old, detected=tuple((k, n + new_per_kind.get(k, 0)) for k, n in old.detected))

    def record_scan_error(self, duration: float, finished_at: float) -> None:
        """Record a failed scan: the previous scan's figures stay; the error is counted.

        Takes how long the failed attempt took (seconds) and the Unix time it ended.
        """
        duration = max(duration, 0.0) if math.isfinite(duration) else 0.0
        with self._lock:
            old = self._figures
            self._figures = replace(_counted_scan(old, duration, finished_at, success=False),
                                    errors=old.errors + 1)

    def record_reload(self, success: bool, at: float) -> None:
        """Record a configuration load (the first one at start-up counts): success, and the Unix time if it succeeded."""
        with self._lock:
            old = self._figures
            self._figures = replace(
                old,
                reload_successful=success,
                reload_timestamp=at if success else old.reload_timestamp,
            )

    # -- rendering (scrapes)

    def describe(self) -> Iterable[Metric]:
        """The metric families this collector exports, without samples (for the registry's name checks)."""
        return list(self._families(Figures(), with_samples=False))

    def collect(self) -> Iterable[Metric]:
        """Render the current figures (called by the registry on each scrape)."""
        with self._lock:
            figures = self._figures
        return list(self._families(figures, with_samples=True))

    def _families(self, f: Figures, with_samples: bool) -> Iterator[Metric]:
        """Every metric family for ``f`` (empty families when ``with_samples`` is False)."""
        build = GaugeMetricFamily("portwatch_build_info", "portwatch build information; always 1.",
                                  labels=["version", "python_version"])
        if with_samples:
            build.add_metric([self._version, self._python_version], 1)
        yield build

        yield from self._scan_families(f.namespaces if with_samples else None)
        yield from self._namespace_families(f if with_samples else None)

        detected = CounterMetricFamily(
            "portwatch_findings_detected_total",
            "Findings that appeared: keys not active in the previous scan (per kind).",
            labels=["kind"])
        scans = CounterMetricFamily("portwatch_scans_total", "Scans attempted, failed ones included.")
        errors = CounterMetricFamily("portwatch_scan_errors_total", "Scans that failed.")
        duration = HistogramMetricFamily("portwatch_scan_duration_seconds",
                                         "Duration of each pass over the selected namespaces, failed ones included.")
        last_ts = GaugeMetricFamily("portwatch_last_scan_timestamp_seconds",
                                    "Unix time the latest scan ended, successful or not.")
        last_ok = GaugeMetricFamily("portwatch_last_scan_success",
                                    "1 if the latest scan succeeded, 0 if it failed.")
        reload_ok = GaugeMetricFamily("portwatch_config_last_reload_successful",
                                      "1 if the latest configuration load (start-up or SIGHUP) succeeded, else 0.")
        reload_ts = GaugeMetricFamily("portwatch_config_last_reload_success_timestamp_seconds",
                                      "Unix time of the latest successful configuration load.")
        if with_samples:
            for kind, n in f.detected:
                detected.add_metric([kind], n)
            scans.add_metric([], f.scans)
            errors.add_metric([], f.errors)
            cumulative, total = [], 0
            for bound, n in zip((*DURATION_BUCKETS, math.inf), f.duration_buckets):
                total += n
                cumulative.append(("+Inf" if math.isinf(bound) else repr(bound), float(total)))
            duration.add_metric([], cumulative, f.duration_sum)
            if f.last_scan_timestamp is not None:
                last_ts.add_metric([], f.last_scan_timestamp)
            if f.last_scan_success is not None:
                last_ok.add_metric([], 1 if f.last_scan_success else 0)
            if f.reload_successful is not None:
                reload_ok.add_metric([], 1 if f.reload_successful else 0)
            if f.reload_timestamp is not None:
                reload_ts.add_metric([], f.reload_timestamp)
        yield from (detected, scans, errors, duration, last_ts, last_ok, reload_ok, reload_ts)

    def _scan_families(self, namespaces: tuple[ScanFigures, ...] | None) -> Iterator[Metric]:
        """The families that describe the latest successful pass, per namespace (no samples before the first)."""
        ns = ["netns"]
        low = GaugeMetricFamily("portwatch_ephemeral_port_range_low",
                                "Low end of net.ipv4.ip_local_port_range.", labels=ns)
        high = GaugeMetricFamily("portwatch_ephemeral_port_range_high",
                                 "High end of net.ipv4.ip_local_port_range.", labels=ns)
        usable = GaugeMetricFamily("portwatch_ephemeral_ports_usable",
                                   "Ports connect() may pick: the range minus reserved ports inside it.", labels=ns)
        reserved = GaugeMetricFamily("portwatch_reserved_ports",
                                     "Ports in net.ipv4.ip_local_reserved_ports (inside the range or not).",
                                     labels=ns)
        sockets = GaugeMetricFamily("portwatch_sockets", "Inet sockets by protocol and state.",
                                    labels=[*ns, "protocol", "state"])
        findings = GaugeMetricFamily("portwatch_findings",
                                     "Active findings of the latest scan, by kind and severity.",
                                     labels=[*ns, "kind", "severity"])
        listeners = GaugeMetricFamily(
            "portwatch_listener_in_ephemeral_range",
            f"Listeners on unreserved ports inside the ephemeral range; always 1 "
            f"(at most {self._listener_limit} series per namespace, lowest ports first).",
            labels=[*ns, "protocol", "port", "process"])
        destinations = GaugeMetricFamily(
            "portwatch_destination_ephemeral_usage_ratio",
            "Share of usable ephemeral ports used towards one destination (top-K destinations).",
            labels=[*ns, "local_ip", "remote_ip", "remote_port"])
        for scan in namespaces or ():
            n = scan.netns
            low.add_metric([n], scan.range_low)
            high.add_metric([n], scan.range_high)
            usable.add_metric([n], scan.usable_ports)
            reserved.add_metric([n], scan.reserved_ports)
            for proto, state, count in scan.sockets:
                sockets.add_metric([n, proto, state], count)
            for kind, sev, count in scan.findings:
                findings.add_metric([n, kind, sev], count)
            for proto, port, process in scan.listeners:
                listeners.add_metric([n, proto, port, process], 1)
            for local_ip, remote_ip, remote_port, ratio in scan.destinations:
                destinations.add_metric([n, local_ip, remote_ip, remote_port], ratio)
        yield from (low, high, usable, reserved, sockets, findings, listeners, destinations)

    def _namespace_families(self, f: Figures | None) -> Iterator[Metric]:
        """How many namespaces the latest successful pass scanned, left out of the series, could not read."""
        scanned = GaugeMetricFamily("portwatch_namespaces",
                                    "Network namespaces scanned by the latest successful pass, by kind.",
                                    labels=["kind"])
        left_out = GaugeMetricFamily(
            "portwatch_namespaces_left_out",
            "Namespaces the latest successful pass scanned but exported no series for (namespaces.max_series).")
        skipped = GaugeMetricFamily("portwatch_namespaces_skipped",
                                    "Namespaces the latest successful pass found but could not read.")
        if f is not None and f.namespaces is not None:
            for kind, n in f.kinds:
                scanned.add_metric([kind], n)
            left_out.add_metric([], f.left_out)
            skipped.add_metric([], f.skipped)
        yield from (scanned, left_out, skipped)

