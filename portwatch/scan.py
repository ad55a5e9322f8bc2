"""The scan engine: collect, detect, attribute on demand, explain, ignore.

One call of :func:`run_scan` is one scan. It touches the kernel only through
the :class:`~portwatch.collect.Collector` it is given and keeps no state, so
the CLI, the daemon and the benchmark all run the same code. It may import
:mod:`portwatch.collect`, :mod:`portwatch.detect`, :mod:`portwatch.config` and
:mod:`portwatch.model`. :func:`make_source` and :class:`FallbackSource` live in
:mod:`portwatch.collect.sources`; they are re-exported here for the daemon and
the CLI.
"""

from __future__ import annotations

import time
from typing import Callable, Collection

from portwatch import detect
from portwatch.collect import Collector
from portwatch.collect.sources import FallbackSource, make_source
from portwatch.config.types import Config
from portwatch.model import RememberedPort, ScanResult

__all__ = ["FallbackSource", "make_source", "run_scan"]

def run_scan(
    config: Config,
    collector: Collector,
    remembered: Collection[RememberedPort] = (),
    clock: Callable[[], float] = time.monotonic,
) -> ScanResult:
    """One scan: snapshot, detect, attribute the sockets findings involve, explain, ignore.

    Owners are looked up only for the sockets that detection or the findings
    need (lazy attribution). Raises :class:`~portwatch.collect.CollectError`
    or ``OSError`` when the kernel's settings or socket table cannot be read,
    :class:`~portwatch.model.SourceUnavailable` when the configured source
    cannot work here (``source: netlink`` without sock_diag), and
    :class:`~portwatch.collect.netlink.NetlinkError` for malformed kernel data.
    """
    started = clock()
    snapshot = collector.snapshot()
    idx = detect.index(snapshot)
    needed = detect.owners_needed(snapshot, config, idx)
    if needed:
        snapshot = collector.attribute(snapshot, needed)
    usage = detect.destination_usage(snapshot, idx.listening)
    findings = detect.detect(snapshot, config, remembered, usage, idx)
    involved = detect.involved_inodes(findings)
    if involved:
        snapshot = collector.attribute(snapshot, involved)
        findings = detect.explain(findings, snapshot)
    kept, ignored = detect.apply_ignores(findings, config.ignore)
    return ScanResult(snapshot=snapshot, findings=tuple(kept), ignored=tuple(ignored),
                      usage=usage, duration=clock() - started, listening=idx.listening)
