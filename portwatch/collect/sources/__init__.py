"""The socket sources, registered once: their names, how each is built, the fallback between them.

Job: :data:`SOURCES`, the one registry of socket sources, from which
:data:`SOURCE_NAMES` (the values the configuration's ``source`` key allows)
and :func:`make_source` are derived; and :class:`FallbackSource`. Each entry
builds its source lazily, so importing this package imports neither psutil
nor the netlink modules. Adding a source is one module here plus one entry.
May import the standard library, :mod:`portwatch.model` and (inside the
factories only) its own source modules.
"""

from __future__ import annotations

from collections.abc import Callable

from portwatch.model import KernelSettings, SocketCounts, SocketSource, SocketTable, SourceUnavailable
from portwatch.model.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

__all__ = ["SOURCES", "SOURCE_NAMES", "FallbackSource", "SourceEntry", "make_source", "read_counted"]


def _warn(message: str) -> None:
    """Log the fallback warning under the logger it has always had (``portwatch.scan``); logging
    is imported only then, so a scan that does not fall back never loads it."""
    import logging

    logging.getLogger("portwatch.scan").warning(message)


#: Receives a one-line warning (the fallback's switch).
Warn = Callable[[str], None]


class FallbackSource:
    """A socket source that uses ``primary`` until it proves unavailable, then ``fallback`` for good.

    The switch is logged once, at warning level, with the reason.
    """

    def __init__(self, primary: SocketSource, fallback: SocketSource,
                 warn: Warn = _warn) -> None:
        """Take the preferred source, the one to use once it is unavailable, and
        where to say so (a logger's ``warning`` or a stand-in)."""
        self._primary: SocketSource | None = primary
        self._fallback = fallback
        self._warn = warn

    @property
    def name(self) -> str:
        """The name of the source in use."""
        return (self._primary or self._fallback).name

    def read(self) -> SocketTable:
        """Read from the primary source, or from the fallback once the primary is unavailable.

        Returns the table read. Raises whatever the source in use raises,
        except the primary's :class:`~portwatch.model.SourceUnavailable`,
        which switches to the fallback for good (and is warned about once).
        """
        if self._primary is not None:
            try:
                return self._primary.read()
            except SourceUnavailable as exc:
                self._warn(f"{self._primary.name} socket source unavailable ({exc}); "
                           f"using {self._fallback.name} from now on")
                self._primary = None
        return self._fallback.read()

    def read_counted(self, settings: KernelSettings,
                     ports: frozenset[int]) -> tuple[SocketTable, SocketCounts | None]:
        """:func:`read_counted` of the source in use: the primary's counted read while it
        works, else the fallback's full table (``None``: no counts). Raises as :meth:`read`."""
        if self._primary is not None:
            try:
                return read_counted(self._primary, settings, ports)
            except SourceUnavailable as exc:
                self._warn(f"{self._primary.name} socket source unavailable ({exc}); "
                           f"using {self._fallback.name} from now on")
                self._primary = None
        return read_counted(self._fallback, settings, ports)


def read_counted(source: SocketSource, settings: KernelSettings,
                 ports: frozenset[int]) -> tuple[SocketTable, SocketCounts | None]:
    """Read ``source`` counting what no detector keeps, when it can (its ``read_counted``, e.g.
    :meth:`~portwatch.collect.sources.netlink.NetlinkSource.read_counted`: ``settings`` and the
    ports of interest ``ports`` decide what is kept); else its full table and ``None``.
    Raises what the source raises."""
    counted: Callable[[KernelSettings, frozenset[int]], tuple[SocketTable, SocketCounts | None]] | None
    counted = getattr(source, "read_counted", None)
    if counted is None:
        return source.read(), None
    table, counts = counted(settings, ports)
    return table, counts


def _netlink() -> SocketSource:
    """A :class:`~portwatch.collect.sources.netlink.NetlinkSource`."""
    from portwatch.collect.sources.netlink import NetlinkSource, sockstat_in_use

    return NetlinkSource(in_use=sockstat_in_use)


def _psutil() -> SocketSource:
    """A :class:`~portwatch.collect.sources.psutil.PsutilSource`."""
    from portwatch.collect.sources.psutil import PsutilSource

    return PsutilSource()


class _Deferred:
    """A socket source made by ``build`` the first time it is used (named, read): ``auto``'s
    fallback, so that a scan that never falls back does not import the fallback's module."""

    def __init__(self, build: Callable[[], SocketSource]) -> None:
        self._build = build
        self._source: SocketSource | None = None

    def _made(self) -> SocketSource:
        if self._source is None:
            self._source = self._build()
        return self._source

    @property
    def name(self) -> str:
        """The name of the source made."""
        return self._made().name

    def read(self) -> SocketTable:
        """The source's read."""
        return self._made().read()

    def read_counted(self, settings: KernelSettings,
                     ports: frozenset[int]) -> tuple[SocketTable, SocketCounts | None]:
        """:func:`read_counted` of the source made."""
        return read_counted(self._made(), settings, ports)


@dataclass(frozen=True)
class SourceEntry:
    """One registered socket source: what it is, and how to build it.

    ``build`` takes the warning callback (used by sources that fall back) and
    returns a new source; it imports the source's module on first use.
    """

    description: str
    build: Callable[[Warn], SocketSource]


#: Every socket source the configuration may name, in the order the
#: documentation lists them; ``auto`` first, as the default.
SOURCES: Mapping[str, SourceEntry] = {
    "auto": SourceEntry("netlink, falling back to psutil when the kernel lacks sock_diag",
                        lambda warn: FallbackSource(_netlink(), _Deferred(_psutil), warn)),
    "netlink": SourceEntry("NETLINK_SOCK_DIAG (inet_diag), fast, no process walk",
                           lambda warn: _netlink()),
    "psutil": SourceEntry("psutil.net_connections, portable, walks every process",
                          lambda warn: _psutil()),
}

#: The names of the registered sources: the allowed values of ``source``.
SOURCE_NAMES: tuple[str, ...] = tuple(SOURCES)


def make_source(name: str, warn: Warn = _warn) -> SocketSource:
    """The socket source the configuration names: ``auto``, ``netlink`` or ``psutil``.

    ``auto`` is netlink (NETLINK_SOCK_DIAG, fast) falling back to psutil when
    the kernel lacks it; ``warn`` receives the one warning of that switch.
    Returns a new source. Raises ``ValueError`` for a name not in
    :data:`SOURCE_NAMES`.
    """
    entry = SOURCES.get(name)
    if entry is None:
        raise ValueError(
            f"unknown socket source {name!r} (expected one of {', '.join(SOURCE_NAMES)})")
    return entry.build(warn)
