"""The psutil socket source: ``psutil.net_connections("inet")`` as a :class:`~portwatch.model.SocketTable`.

Job: :class:`PsutilSource`, the portable fallback and the reference the other
sources are tested against. psutil is imported at the first :meth:`read`, not
with this module, so that naming the source costs nothing. May import the
standard library, psutil, :mod:`portwatch.model` and
:mod:`portwatch.collect.errors`.
"""

from __future__ import annotations

import socket

from portwatch.collect.errors import SourceReadError
from portwatch.model import Endpoint, Family, Protocol, Socket, SocketState, SocketTable
from portwatch.model import normalize_ip

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping

__all__ = ["PsutilSource"]

_FAMILIES: Mapping[int, Family] = {socket.AF_INET: Family.IPV4, socket.AF_INET6: Family.IPV6}
_PROTOCOLS: Mapping[int, Protocol] = {socket.SOCK_STREAM: Protocol.TCP,
                                      socket.SOCK_DGRAM: Protocol.UDP}
_TCP_STATES: Mapping[str, SocketState] = {
    s.value: s for s in SocketState if s is not SocketState.UNCONN}
_WILDCARD: Mapping[Family, str] = {Family.IPV4: "0.0.0.0", Family.IPV6: "::"}


class PsutilSource:
    """A :class:`~portwatch.model.SocketSource` built on ``psutil.net_connections("inet")``.

    The portable fallback, and the reference the other sources are tested
    against. psutil walks every process itself, so the table it returns
    carries owners; it reports no inodes, so sockets get synthetic negative
    inodes (-1, -2, ...) unique within one read, and ``owners`` maps them to
    the one pid psutil names (psutil lists a shared socket once, under the
    first holder it found). ``uid`` is ``None`` (psutil does not say).
    Sockets of other families or types are skipped.

    State mapping: TCP status strings become :class:`SocketState`; a TCP status
    psutil does not know (it says ``NONE``, for kernel states newer than its
    table) becomes ``CLOSE``. UDP sockets are ``ESTABLISHED`` when they have a
    remote address, else ``UNCONN``. Addresses go through
    :func:`~portwatch.model.normalize_ip` (IPv4-mapped IPv6 becomes IPv4; the
    family stays the one the socket was opened with).
    """

    name = "psutil"

    def __init__(self, net_connections: Callable[..., list[Any]] | None = None) -> None:
        """Take the function to call: a stand-in with ``psutil.net_connections``'s
        contract, or ``None`` for ``psutil.net_connections`` itself (looked up at
        the first :meth:`read`)."""
        self._net_connections = net_connections

    def read(self) -> SocketTable:
        """Read every TCP and UDP, IPv4 and IPv6 socket of the current network namespace.

        Returns a :class:`~portwatch.model.SocketTable` with owners for sockets
        whose pid psutil reported. Raises :class:`SourceReadError` (an
        ``OSError``) when psutil is denied access or fails, or reports an
        address that is not an address.
        """
        import psutil  # here, not at module level: only a read needs it

        net_connections = self._net_connections or psutil.net_connections
        try:
            conns = net_connections("inet")
        except psutil.AccessDenied:
            raise SourceReadError(
                "psutil.net_connections: permission denied (run as root to see every socket)"
            ) from None
        except (psutil.Error, OSError) as exc:
            raise SourceReadError(f"psutil.net_connections: {_exc_text(exc)}") from None
        sockets: list[Socket] = []
        owners: dict[int, tuple[int, ...]] = {}
        for conn in conns:
            family = _FAMILIES.get(conn.family)
            protocol = _PROTOCOLS.get(conn.type)
            if family is None or protocol is None:
                continue
            inode = -(len(sockets) + 1)
            try:
                local = self._endpoint(conn.laddr, family)
                remote = self._endpoint(conn.raddr, family) if conn.raddr else None
            except (ValueError, TypeError) as exc:
                raise SourceReadError(
                    f"psutil.net_connections: bad address in {conn!r}: {exc}") from None
            if protocol is Protocol.TCP:
                state = _TCP_STATES.get(str(conn.status), SocketState.CLOSE)
            else:
                state = SocketState.ESTABLISHED if remote is not None else SocketState.UNCONN
            sockets.append(Socket(protocol, family, state, local, remote, inode, None))
            if conn.pid is not None:
                owners[inode] = (int(conn.pid),)
        return SocketTable(sockets=tuple(sockets), owners=owners)

    @staticmethod
    def _endpoint(addr: Any, family: Family) -> Endpoint:
        """An :class:`Endpoint` from psutil's ``addr(ip, port)`` (``()`` = wildcard, port 0)."""
        if not addr:
            return Endpoint(_WILDCARD[family], 0)
        ip, port = addr[0], addr[1]
        return Endpoint(normalize_ip(str(ip)), int(port))


def _exc_text(exc: BaseException) -> str:
    """The message of an exception; its arguments or its type name when ``str()`` is empty."""
    return str(exc) or " ".join(str(a) for a in exc.args) or type(exc).__name__
