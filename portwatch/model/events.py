"""Socket-destroy events: what the kernel says about a socket as it is freed.

Standard library only, no I/O (like the rest of :mod:`portwatch.model`).
:class:`DestroyEvent` is built by :mod:`portwatch.collect.events` from the
sock_diag destroy multicast and read by the pure transient detector
(:mod:`portwatch.detect.transient`); :class:`EventBatch` is one read of a
listener; :class:`NamespaceEvents` is what a multi-namespace watcher
(:mod:`portwatch.collect.eventwatch`) read from one namespace in one poll.
"""

from __future__ import annotations

from typing import Any

from portwatch.model.namespaces import NamespaceInfo
from portwatch.model.records import NamedTuple
from portwatch.model.sockets import Endpoint, Family, Protocol, SocketState


class TcpInfo(NamedTuple):
    """The figures of ``INET_DIAG_INFO`` (``struct tcp_info``) a finding reports.

    ``bytes_sent`` / ``bytes_acked`` / ``bytes_received``: payload bytes
    (``tcpi_bytes_sent``, Linux 4.19+, is ``None`` on older kernels whose
    ``tcp_info`` is shorter); ``retransmits``: ``tcpi_total_retrans``
    (segments retransmitted over the connection's life).
    """

    bytes_sent: int | None
    bytes_acked: int
    bytes_received: int
    retransmits: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the field names."""
        return self._asdict()


class DestroyEvent(NamedTuple):
    """One destroyed inet socket, as the kernel's destroy multicast reports it.

    ``at``: Unix time at which the listener read it (the kernel gives no
    time); ``state``: the socket's state at destruction (TCP: usually
    ``CLOSE``; UDP: ``UNCONN``/``ESTABLISHED``), None for a number the model
    does not know; ``remote``: None when the socket had no peer (the kernel
    reports address and port 0); ``cookie``: the kernel's socket cookie (unique
    per namespace while the system runs); ``info``: the TCP figures, None for
    UDP or when the kernel sent none. The kernel sends neither uid, inode nor
    cgroup id: an event never names a process.
    """

    at: float
    protocol: Protocol
    family: Family
    state: SocketState | None
    local: Endpoint
    remote: Endpoint | None
    cookie: int
    info: TcpInfo | None


class EventBatch(NamedTuple):
    """What one read of a destroy-event listener returned.

    ``events``: the events read, oldest first; ``lost``: True when the kernel
    reported ENOBUFS during this read (events were dropped: the caller must
    rescan now); ``dropped_total``: how many ENOBUFS the listener has counted
    since it was opened (each one is at least one lost event); ``more``: True
    when the read stopped at its bound with data still queued (read again).
    """

    events: list[DestroyEvent]
    lost: bool
    dropped_total: int
    more: bool


class NamespaceEvents(NamedTuple):
    """What one poll of a multi-namespace watcher read from one namespace's listener.

    ``namespace``: whose events; ``events``: oldest first; ``lost``: ENOBUFS
    was reported during this read (events were dropped: rescan that
    namespace now); ``dropped``: ENOBUFS counted during this read;
    ``dropped_total``: counted since the listener was opened; ``error``: why
    the listener failed and was closed (the next sync reopens it), else None.
    """

    namespace: NamespaceInfo
    events: list[DestroyEvent]
    lost: bool
    dropped: int
    dropped_total: int
    error: str | None = None
