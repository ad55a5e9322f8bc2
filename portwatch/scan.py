"""The scan engine: collect, detect, attribute on demand, explain, ignore.

One call of :func:`run_scan` is one scan. It touches the kernel only through
the :class:`~portwatch.collect.Collector` it is given and keeps no state, so
the CLI, the daemon and the benchmark all run the same code.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Collection, Mapping

from portwatch import detect
from portwatch.collect import Collector, PsutilSource
from portwatch.config import SOURCES, Config
from portwatch.model import (
    Destination,
    Finding,
    RememberedPort,
    ScanResult,
    Snapshot,
    SocketSource,
    SocketTable,
    SourceUnavailable,
)

log = logging.getLogger("portwatch.scan")


class FallbackSource:
    """A socket source that uses ``primary`` until it proves unavailable, then ``fallback`` for good.

    The switch is logged once, at warning level, with the reason.
    """

    def __init__(self, primary: SocketSource, fallback: SocketSource,
                 warn: Callable[[str], None] = log.warning) -> None:
        self._primary: SocketSource | None = primary
        self._fallback = fallback
        self._warn = warn

    @property
    def name(self) -> str:
        """The name of the source in use."""
        return (self._primary or self._fallback).name

    def read(self) -> SocketTable:
        """Read from the primary source, or from the fallback once the primary is unavailable."""
        if self._primary is not None:
            try:
                return self._primary.read()
            except SourceUnavailable as exc:
                self._warn(f"{self._primary.name} socket source unavailable ({exc}); "
                           f"using {self._fallback.name} from now on")
                self._primary = None
        return self._fallback.read()


def make_source(name: str, warn: Callable[[str], None] = log.warning) -> SocketSource:
    """The socket source the configuration names: ``auto``, ``netlink`` or ``psutil``.

    ``auto`` is netlink (NETLINK_SOCK_DIAG, fast) falling back to psutil when
    the kernel lacks it. Raises ``ValueError`` for another name.
    """
    if name == "psutil":
        return PsutilSource()
    if name not in ("auto", "netlink"):
        raise ValueError(f"unknown socket source {name!r} (expected one of {', '.join(SOURCES)})")
    from portwatch.collect.netlink import NetlinkSource

    if name == "netlink":
        return NetlinkSource()
    return FallbackSource(NetlinkSource(), PsutilSource(), warn)


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
