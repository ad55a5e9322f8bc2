"""Destroy events of several network namespaces: one listener each, one selector over all.

Job: :class:`EventWatcher` keeps one
:class:`~portwatch.collect.events.DestroyListener` per watched namespace,
each created inside its namespace (:func:`~portwatch.collect.namespaces.run_in_namespace`:
a short-lived thread that entered it; the socket keeps that namespace's
events after the thread ends), follows the namespaces it is given
(:meth:`EventWatcher.sync`) and waits on all of them with :mod:`selectors`
(:meth:`EventWatcher.poll`), a bounded amount of work per call. Without the
privilege to enter namespaces (CAP_SYS_ADMIN) only the own namespace is
watched, without an error. May import the standard library,
:mod:`portwatch.model` and :mod:`portwatch.collect`.

An open listener holds a reference on its namespace: the kernel keeps a
deleted namespace alive while it is open, so :meth:`EventWatcher.sync`
closes the listeners of the namespaces no longer given.
"""

from __future__ import annotations

import selectors
import socket
import time
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from portwatch.collect.events import (
    DEFAULT_BUFFER_BYTES,
    DestroyListener,
    listening_tcp_ports,
    open_destroy_socket,
    open_query_socket,
)
from portwatch.collect.namespaces import NamespaceVanished, can_enter_namespaces, run_in_namespace
from portwatch.collect.netlink import NetlinkError
from portwatch.model import NamespaceInfo
from portwatch.model.events import NamespaceEvents

__all__ = ["EventWatcher", "ListenerOpener", "SyncResult", "namespace_listener"]

#: Opens the listener of one namespace and a dump socket of it, or None (raises OSError, NamespaceVanished).
ListenerOpener = Callable[[NamespaceInfo, int], "tuple[DestroyListener, socket.socket | None]"]
_Id = tuple[int, int]


def _ident(ns: NamespaceInfo) -> _Id:
    return (ns.dev, ns.inode)


def namespace_listener(ns: NamespaceInfo, buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                       proc_root: Path = Path("/proc")) -> tuple[DestroyListener, socket.socket]:
    """A listener of ``ns``'s destroy events and a dump socket (:func:`open_query_socket`), made inside ``ns``.

    The own namespace (``ns.own``) is opened in the calling thread (which
    never leaves it). Raises :class:`NamespaceVanished` when ``ns`` is gone,
    ``PermissionError`` when it may not be entered, ``OSError`` when the
    socket cannot be made or bound.
    """
    def both() -> tuple[socket.socket, socket.socket]:
        events = open_destroy_socket()
        try:
            return events, open_query_socket()
        except BaseException:
            events.close()
            raise

    events, query = both() if ns.own else run_in_namespace(ns, both, proc_root)
    try:
        return DestroyListener(lambda: events, buffer_bytes=buffer_bytes), query
    except BaseException:
        query.close()
        raise


class SyncResult(NamedTuple):
    """What one :meth:`EventWatcher.sync` did.

    ``opened``/``closed``: namespaces whose listener was opened / closed;
    ``skipped``: namespaces not watched because they may not be entered
    (unprivileged) or vanished meanwhile (not errors); ``failed``: (namespace,
    message) for a listener that could not be made for another reason.
    """

    opened: tuple[NamespaceInfo, ...]
    closed: tuple[NamespaceInfo, ...]
    skipped: tuple[NamespaceInfo, ...]
    failed: tuple[tuple[NamespaceInfo, str], ...]


class _Watched:
    __slots__ = ("namespace", "listener", "query", "dropped")

    def __init__(self, namespace: NamespaceInfo, listener: DestroyListener, query: socket.socket | None) -> None:
        self.namespace = namespace
        self.listener = listener
        self.query = query
        self.dropped = 0


class EventWatcher:
    """One destroy-event listener per namespace, read through one selector.

    ``EventWatcher(buffer_bytes=16 MiB, *, opener=namespace_listener,
    can_enter=None, proc_root=/proc, max_events=4096)``: ``can_enter`` says
    whether other namespaces may be entered (None: ask
    :func:`~portwatch.collect.namespaces.can_enter_namespaces`); False
    watches only the own namespace. ``max_events`` bounds the messages read
    from one listener in one :meth:`poll`. Not thread-safe: one thread calls
    :meth:`sync`, :meth:`poll` and :meth:`close`. A context manager.
    """

    def __init__(self, buffer_bytes: int = DEFAULT_BUFFER_BYTES, *, opener: ListenerOpener | None = None,
                 can_enter: bool | None = None, proc_root: Path = Path("/proc"),
                 max_events: int = 4096) -> None:
        self.buffer_bytes = buffer_bytes
        self.max_events = max_events
        self.proc_root = proc_root
        self._opener: ListenerOpener = opener or (lambda ns, size: namespace_listener(ns, size, proc_root))
        self.can_enter = can_enter_namespaces(proc_root) if can_enter is None else can_enter
        self._selector = selectors.DefaultSelector()
        self._watched: dict[_Id, _Watched] = {}

    @property
    def namespaces(self) -> tuple[NamespaceInfo, ...]:
        """The namespaces watched now, in the order they were opened."""
        return tuple(w.namespace for w in self._watched.values())

    def listener(self, ns: NamespaceInfo) -> DestroyListener | None:
        """The open listener of ``ns`` (matched by device and inode), or None."""
        watched = self._watched.get(_ident(ns))
        return watched.listener if watched is not None else None

    def sync(self, namespaces: Iterable[NamespaceInfo]) -> SyncResult:
        """Watch exactly ``namespaces`` (those that may be entered): open the new, close the gone.

        A namespace already watched keeps its listener (its description is
        updated). Never raises for a namespace: see :class:`SyncResult`.
        """
        wanted = {_ident(ns): ns for ns in namespaces}
        closed = [self._close(ident) for ident in list(self._watched) if ident not in wanted]
        opened: list[NamespaceInfo] = []
        skipped: list[NamespaceInfo] = []
        failed: list[tuple[NamespaceInfo, str]] = []
        for ident, ns in wanted.items():
            watched = self._watched.get(ident)
            if watched is not None:
                watched.namespace = ns
                continue
            if not ns.own and not self.can_enter:
                skipped.append(ns)
                continue
            try:
                listener, query = self._opener(ns, self.buffer_bytes)
            except (NamespaceVanished, PermissionError):
                skipped.append(ns)
                continue
            except (OSError, TimeoutError) as exc:
                failed.append((ns, f"network namespace {ns.key}: no event listener: {exc}"))
                continue
            self._watched[ident] = _Watched(ns, listener, query)
            self._selector.register(listener.fileno(), selectors.EVENT_READ, ident)
            opened.append(ns)
        return SyncResult(tuple(opened), tuple(closed), tuple(skipped), tuple(failed))

    def _close(self, ident: _Id) -> NamespaceInfo:
        watched = self._watched.pop(ident)
        try:
            self._selector.unregister(watched.listener.fileno())
        except (KeyError, ValueError):
            pass
        watched.listener.close()
        if watched.query is not None:
            watched.query.close()
        return watched.namespace

    def listening_ports(self, ns: NamespaceInfo) -> frozenset[int] | None:
        """The ports of ``ns``'s TCP listeners now (a LISTEN-only dump); None when it cannot be told.

        Never raises: a namespace not watched, without a dump socket, or a
        failed dump gives None.
        """
        watched = self._watched.get(_ident(ns))
        if watched is None or watched.query is None:
            return None
        try:
            return listening_tcp_ports(watched.query)
        except (OSError, NetlinkError):
            return None

    def poll(self, timeout: float) -> list[NamespaceEvents]:
        """Wait up to ``timeout`` seconds for events; what each ready listener had queued.

        Reads at most ``max_events`` messages per listener. Returns one
        :class:`~portwatch.model.events.NamespaceEvents` per namespace that
        had events, an ENOBUFS or an error (a listener that failed is closed
        and reported with ``error``; the next :meth:`sync` reopens it).
        Returns ``[]`` after the timeout; sleeps ``timeout`` when nothing is
        watched. Never raises for a listener.
        """
        if not self._watched:
            time.sleep(max(timeout, 0.0))
            return []
        out: list[NamespaceEvents] = []
        for key, _mask in self._selector.select(max(timeout, 0.0)):
            ident: _Id = key.data
            watched = self._watched.get(ident)
            if watched is None:
                continue
            try:
                batch = watched.listener.read(self.max_events)
            except (NetlinkError, OSError) as exc:
                ns = self._close(ident)
                out.append(NamespaceEvents(ns, [], False, 0, watched.dropped, f"event listener failed: {exc}"))
                continue
            dropped = batch.dropped_total - watched.dropped
            watched.dropped = batch.dropped_total
            if batch.events or batch.lost:
                out.append(NamespaceEvents(watched.namespace, batch.events, batch.lost, dropped,
                                           batch.dropped_total))
        return out

    def close(self) -> None:
        """Close every listener and the selector (idempotent)."""
        for ident in list(self._watched):
            self._close(ident)
        self._selector.close()

    def __enter__(self) -> EventWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
