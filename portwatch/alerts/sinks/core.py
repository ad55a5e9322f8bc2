"""What every sink shares: the :class:`Sink` interface, its errors, the context it is built with.

Sinks are where notifications go; one module per sink type, each with the same interface.

Every sink module (``journal``, ``webhook``, ``alertmanager``, ``exec``) has
one function::

    build(name: str, config: <its own config dataclass>, context: SinkContext) -> Sink

that takes only its own section of the configuration (and the
:class:`SinkContext` every sink shares) and returns an object with the
:class:`Sink` interface. ``build`` may read files the configuration names
(a bearer token) and raises :class:`SinkBuildError` when it cannot.
:func:`portwatch.alerts.sinks.build_sink` picks the module by the config's ``type``.

``Sink.send(notification)`` delivers one notification, synchronously, within
the sink's own timeout. It returns on success and raises :class:`SinkError`
on failure: temporary (the delivery worker retries with backoff) or
``permanent`` (the receiver refused this notification for good: it is
dropped and counted). A sink never retries by itself and never sleeps:
the worker in :mod:`portwatch.alerts.delivery` does that, one per sink, off
the scan loop.

May import: the standard library, :mod:`portwatch.alerts.notification` and
:mod:`portwatch.alerts.rules` (the pure engine).
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from portwatch.alerts.notification import Notification
from portwatch.alerts.rules import SinkPolicy

__all__ = [
    "JournalSend",
    "Sink",
    "SinkBuildError",
    "SinkContext",
    "SinkError",
    "NamedSink",
    "default_journal_send",
]

log = logging.getLogger("portwatch.alerts")

#: Sends one journal entry: ``MESSAGE`` and the other fields, all strings.
JournalSend = Callable[[Mapping[str, str]], None]


class SinkError(Exception):
    """A delivery attempt failed. The message says why (never with a secret in it).

    ``permanent``: the receiver refused this notification for good (do not
    retry); ``retry_after``: seconds the receiver asked to wait, if it did.
    """

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class SinkBuildError(ValueError):
    """A sink cannot be built from its configuration (e.g. its token file became unreadable)."""


class Sink(Protocol):
    """A place notifications go (see the module documentation)."""

    @property
    def name(self) -> str:
        """The sink's name in ``alerts.sinks``."""
        ...

    @property
    def policy(self) -> SinkPolicy:
        """What the rule engine must know of this sink."""
        ...

    def send(self, note: Notification) -> None:
        """Deliver ``note`` within the sink's timeout. Raises :class:`SinkError`."""
        ...


class NamedSink:
    """What most sinks share: a name, and the default policy (the rule's
    ``repeat_interval`` and ``send_resolved`` apply). Subclasses add ``send``."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        """The sink's name in ``alerts.sinks``."""
        return self._name

    @property
    def policy(self) -> SinkPolicy:
        """The rule's repeat_interval and send_resolved apply."""
        return SinkPolicy()


def _journal_socket_exists() -> bool:
    return os.path.exists("/run/systemd/journal/socket")


def default_journal_send(socket_exists: Callable[[], bool] = _journal_socket_exists) -> JournalSend | None:
    """``systemd.journal.send`` wrapped to take a mapping, or None when there is no journal.

    There is no journal when systemd-python is not installed or the journal's
    socket does not exist (``sd_journal_send`` then fails silently).
    """
    if not socket_exists():
        return None
    try:
        journal: Any = importlib.import_module("systemd.journal")
    except ImportError:
        return None

    def send(fields: Mapping[str, str]) -> None:
        rest = {k: v for k, v in fields.items() if k != "MESSAGE"}
        journal.send(fields.get("MESSAGE", ""), **rest)

    return send


@dataclass(frozen=True)
class SinkContext:
    """What every sink may use besides its own configuration.

    ``host``: this host's name (the alerts' ``instance``); ``clock``: Unix
    time (Alertmanager's ``endsAt``); ``journal_send``: how the journal sink
    writes an entry, None when there is no journal (it logs instead);
    ``logger``: where sinks log.
    """

    host: str
    clock: Callable[[], float] = time.time
    journal_send: JournalSend | None = None
    logger: logging.Logger = field(default=log)
