"""The listen address of the HTTP endpoint: parsing, resolving, binding errors, :class:`WebError`.

Job: turn ``web.listen_address`` into what a socket binds, bind it
(:func:`bind_listener`, with the listen backlog), and turn a failed bind into
a message naming the setting. May import the standard library,
:mod:`portwatch.config` (the address grammar) and :mod:`portwatch.model`; nothing else
of portwatch.
"""

from __future__ import annotations

import errno
import resource
import socket

from portwatch.config import parse_listen_address as config_parse_listen_address
from portwatch.model.text import os_error_text

__all__ = ["BACKLOG", "WebError", "bind_error", "bind_listener", "parse_listen_address", "raise_descriptor_limit",
           "resolve"]

#: The listen backlog (the kernel caps it at net.core.somaxconn).
BACKLOG = 1024


class WebError(Exception):
    """A configuration or start-up problem of the HTTP endpoint, with a message a person can act on.

    The message names the setting and its value, e.g.
    ``web.listen_address 127.0.0.1:9731: address already in use``.
    """


def parse_listen_address(value: str) -> tuple[str, int]:
    """Split ``web.listen_address`` into host and port (:func:`portwatch.config.parse_listen_address`).

    Port 0 (any free port) is allowed here. Returns ``(host, port)`` with
    brackets removed; ``host`` is ``""`` for ``:port`` (every address).
    Raises :class:`WebError` naming the value when it is malformed.
    """
    try:
        return config_parse_listen_address(value, any_port=True)
    except ValueError as exc:
        raise WebError(f"web.listen_address {value!r}: {exc}") from None


def resolve(value: str) -> tuple[socket.AddressFamily, str, int]:
    """Family and numeric host to bind for ``web.listen_address`` ``value``.

    ``:port`` means every address: ``::`` dual-stack when the host has IPv6, else
    ``0.0.0.0``. Raises :class:`WebError` when the value is malformed or its host name
    does not resolve.
    """
    host, port = parse_listen_address(value)
    if host == "":
        if socket.has_dualstack_ipv6():
            return socket.AF_INET6, "::", port
        return socket.AF_INET, "0.0.0.0", port
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as e:
        raise WebError(f"web.listen_address {value}: cannot resolve {host!r}: {os_error_text(e)}") from None
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return family, str(sockaddr[0]), port
    raise WebError(f"web.listen_address {value}: {host!r} has no IPv4 or IPv6 address")


def bind_error(value: str, e: OSError) -> WebError:
    """The :class:`WebError` for a failed bind of ``web.listen_address`` ``value``. Never raises."""
    if e.errno == errno.EADDRINUSE:
        reason = "address already in use"
    elif e.errno == errno.EADDRNOTAVAIL:
        reason = "address not available (not an address of this host)"
    elif e.errno == errno.EACCES:
        reason = "permission denied (a port below net.ipv4.ip_unprivileged_port_start needs CAP_NET_BIND_SERVICE)"
    else:
        reason = os_error_text(e)
    return WebError(f"web.listen_address {value}: {reason}")


def bind_listener(family: socket.AddressFamily, address: tuple[str, int], backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket on ``address`` (SO_REUSEADDR, never SO_REUSEPORT; ``::`` is dual-stack). Raises OSError."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def raise_descriptor_limit() -> None:
    """Raises the soft RLIMIT_NOFILE to the hard limit (as Go programs do at start). Never raises."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        pass
