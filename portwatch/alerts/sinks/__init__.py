"""Sinks: where notifications go. The registry of sink types; one module per type.

Every sink module (``journal``, ``webhook``, ``alertmanager``, ``exec``)
defines its config dataclass (a :class:`~portwatch.config.types.SinkConfig`),
its ``SHAPE`` (the section of ``alerts.sinks.NAME`` for its type, see
:mod:`portwatch.config.schema`) and::

    build(name: str, config: <its config dataclass>, context: SinkContext) -> Sink

Adding a sink type is one module here, one line in :data:`SINK_MODULES`, and
its docs. :func:`sink_shapes` gives the config loader every type's shape;
:func:`build_sink` builds a sink by its config's ``type``. The interface the
sinks share is in :mod:`.core` (re-exported here).

May import: :mod:`.core` and the standard library; sink modules are imported
by name when needed (so the registry closes no import circle).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping

from portwatch.alerts.sinks.core import (
    JournalSend,
    NamedSink,
    Sink,
    SinkBuildError,
    SinkContext,
    SinkError,
    default_journal_send,
)
from portwatch.config.types import BUILTIN_SINK, AlertsConfig, SinkConfig

if TYPE_CHECKING:
    from portwatch.config.schema import Section

__all__ = [
    "SINK_MODULES",
    "JournalSend",
    "NamedSink",
    "Sink",
    "SinkBuildError",
    "SinkContext",
    "SinkError",
    "all_sinks",
    "build_sink",
    "default_journal_send",
    "sink_shapes",
]

#: ``type`` -> the module that defines and builds sinks of that type (in the order errors list them).
SINK_MODULES: Mapping[str, str] = {
    "journal": "portwatch.alerts.sinks.journal",
    "webhook": "portwatch.alerts.sinks.webhook",
    "alertmanager": "portwatch.alerts.sinks.alertmanager",
    "exec": "portwatch.alerts.sinks.exec",
}


def _module(sink_type: str) -> Any:
    return importlib.import_module(SINK_MODULES[sink_type])


def sink_shapes() -> dict[str, Section]:
    """Every sink type's config section, by type. Imports the sink modules (no I/O)."""
    return {sink_type: _module(sink_type).SHAPE for sink_type in SINK_MODULES}


def all_sinks(config: AlertsConfig) -> dict[str, SinkConfig]:
    """Every sink a rule may name: the built-in ``journal`` (unless the file defines one) and the file's."""
    out: dict[str, SinkConfig] = {BUILTIN_SINK: _module(BUILTIN_SINK).JournalSinkConfig()}
    out.update(config.sinks)
    return out


def build_sink(name: str, config: SinkConfig, context: SinkContext) -> Sink:
    """The sink ``config`` describes, built by the module of its type. Raises :class:`SinkBuildError`."""
    sink: Sink = _module(config.type).build(name, config, context)
    return sink
