"""The data that flows through portwatch: sockets, kernel settings, snapshots, findings, scan results.

Everything here is immutable data with the few pure methods that describe it
(``Socket.describe``, ``Finding.to_dict``). Standard library only: this
package imports nothing else of portwatch and nothing that does I/O, so every
other package may import it. The names below are its public interface; the
modules split it by subject (``sockets``, ``kernel``, ``findings``,
``snapshot``, ``results``).
"""

from __future__ import annotations

from portwatch.model.events import DestroyEvent, EventBatch, TcpInfo
from portwatch.model.failures import FailedCall, FailureBatch, FailureEvent, FailureWindow, Holder
from portwatch.model.findings import Finding, Kind, ProcessInfo, Severity
from portwatch.model.kernel import KernelSettings, PortRange, format_port_set
from portwatch.model.namespaces import CgroupIdentity, NamespaceInfo, NamespaceKind
from portwatch.model.results import ScanResult
from portwatch.model.snapshot import Destination, Listening, RememberedPort, Snapshot, SocketCounts, count_states
from portwatch.model.text import host_port, iso_time, os_error_text, printable
from portwatch.model.values import brief, finite_number
from portwatch.model.sockets import (
    KERNEL_TCP_STATES,
    WILDCARDS,
    Endpoint,
    Family,
    Protocol,
    Socket,
    SocketSource,
    SocketState,
    SocketTable,
    SourceUnavailable,
    is_wildcard,
    normalize_ip,
    socket_to_dict,
)

__all__ = [
    "CgroupIdentity", "Destination", "Endpoint", "Family", "Finding", "KERNEL_TCP_STATES",
    "KernelSettings", "Kind", "Listening", "NamespaceInfo", "NamespaceKind", "PortRange",
    "ProcessInfo", "Protocol", "RememberedPort", "ScanResult", "Severity",
    "Snapshot", "Socket", "SocketCounts", "count_states", "SocketSource", "SocketState", "SocketTable", "SourceUnavailable",
    "WILDCARDS", "brief", "finite_number", "format_port_set", "host_port", "is_wildcard", "iso_time", "normalize_ip",
    "os_error_text", "printable", "socket_to_dict",
]
__all__ += ["DestroyEvent", "EventBatch", "TcpInfo"]

__all__ += ["FailedCall", "FailureBatch", "FailureEvent", "FailureWindow", "Holder"]
