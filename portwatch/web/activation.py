"""Socket activation: the listening sockets systemd passes (``LISTEN_FDS``), as ``sd_listen_fds(3)`` reads them.

Job: :func:`listen_fds` turns the descriptors from 3 on, announced by
``LISTEN_PID`` and ``LISTEN_FDS``, into listening TCP sockets, and unsets the
variables so child processes do not see them. May import the standard library
and :mod:`portwatch.web.address`.
"""

from __future__ import annotations

import os
import socket
from typing import MutableMapping

from portwatch.web.address import WebError

__all__ = ["LISTEN_FDS_START", "listen_fds"]

#: The first descriptor systemd passes.
LISTEN_FDS_START = 3


def listen_fds(env: MutableMapping[str, str] = os.environ, pid: int | None = None) -> list[socket.socket]:
    """The listening stream sockets passed to this process (``pid``, default ours).

    Raises :class:`WebError` starting ``--web.systemd-socket:`` when none were
    passed to this process or one is not a listening TCP socket.
    """
    pid = os.getpid() if pid is None else pid
    listen_pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not listen_pid.isdigit() or int(listen_pid) != pid or not count.isdigit() or int(count) == 0:
        raise WebError("--web.systemd-socket: no sockets passed (LISTEN_FDS and LISTEN_PID do not name this "
                       "process; start it from a .socket unit or systemd-socket-activate)")
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise WebError(f"--web.systemd-socket: descriptor {fd}: not a socket ({e.strerror})") from None
        os.set_inheritable(fd, False)
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) \
                or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise WebError(f"--web.systemd-socket: descriptor {fd}: not a listening TCP socket "
                           "(the .socket unit needs ListenStream=)")
        sockets.append(sock)
    return sockets
