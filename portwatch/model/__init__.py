"""The data that flows through portwatch: sockets, kernel settings, snapshots, findings, scan results.

Everything here is immutable data with the few pure methods that describe it
(``Socket.describe``, ``Finding.to_dict``). Standard library only: this
package imports nothing else of portwatch (but :mod:`portwatch.lazy`) and
nothing that does I/O, so every other package may import it. The names below
are its public interface, each imported on first use (``_LAZY``: a command
loads only the modules it uses); the modules split it by subject
(``sockets``, ``kernel``, ``findings``, ``snapshot``, ``results``, ...) and
:mod:`.records` makes its data classes cheaply.
"""

from __future__ import annotations

from portwatch.lazy import lazy_getattr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from portwatch.model.events import DestroyEvent as DestroyEvent
    from portwatch.model.events import EventBatch as EventBatch
    from portwatch.model.events import TcpInfo as TcpInfo
    from portwatch.model.failures import FailedCall as FailedCall
    from portwatch.model.failures import FailureBatch as FailureBatch
    from portwatch.model.failures import FailureEvent as FailureEvent
    from portwatch.model.failures import FailureWindow as FailureWindow
    from portwatch.model.failures import Holder as Holder
    from portwatch.model.findings import Finding as Finding
    from portwatch.model.findings import Kind as Kind
    from portwatch.model.findings import ProcessInfo as ProcessInfo
    from portwatch.model.findings import Severity as Severity
    from portwatch.model.kernel import KernelSettings as KernelSettings
    from portwatch.model.kernel import PortRange as PortRange
    from portwatch.model.kernel import format_port_set as format_port_set
    from portwatch.model.namespaces import CgroupIdentity as CgroupIdentity
    from portwatch.model.namespaces import NamespaceInfo as NamespaceInfo
    from portwatch.model.namespaces import NamespaceKind as NamespaceKind
    from portwatch.model.results import ScanResult as ScanResult
    from portwatch.model.snapshot import Destination as Destination
    from portwatch.model.snapshot import Listening as Listening
    from portwatch.model.snapshot import RememberedPort as RememberedPort
    from portwatch.model.snapshot import Snapshot as Snapshot
    from portwatch.model.snapshot import SocketCounts as SocketCounts
    from portwatch.model.snapshot import count_states as count_states
    from portwatch.model.text import host_port as host_port
    from portwatch.model.text import iso_time as iso_time
    from portwatch.model.text import os_error_text as os_error_text
    from portwatch.model.text import printable as printable
    from portwatch.model.values import brief as brief
    from portwatch.model.values import finite_number as finite_number
    from portwatch.model.sockets import KERNEL_TCP_STATES as KERNEL_TCP_STATES
    from portwatch.model.sockets import WILDCARDS as WILDCARDS
    from portwatch.model.sockets import Endpoint as Endpoint
    from portwatch.model.sockets import Family as Family
    from portwatch.model.sockets import Protocol as Protocol
    from portwatch.model.sockets import Socket as Socket
    from portwatch.model.sockets import SocketSource as SocketSource
    from portwatch.model.sockets import SocketState as SocketState
    from portwatch.model.sockets import SocketTable as SocketTable
    from portwatch.model.sockets import SourceUnavailable as SourceUnavailable
    from portwatch.model.sockets import is_wildcard as is_wildcard
    from portwatch.model.sockets import normalize_ip as normalize_ip
    from portwatch.model.sockets import socket_to_dict as socket_to_dict

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

#: Every name above -> the module that defines it, imported on first use: a command imports
#: only the model modules it uses (the events' and failures' only where they are used).
_LAZY = {
    'DestroyEvent': 'portwatch.model.events',
    'EventBatch': 'portwatch.model.events',
    'TcpInfo': 'portwatch.model.events',
    'FailedCall': 'portwatch.model.failures',
    'FailureBatch': 'portwatch.model.failures',
    'FailureEvent': 'portwatch.model.failures',
    'FailureWindow': 'portwatch.model.failures',
    'Holder': 'portwatch.model.failures',
    'Finding': 'portwatch.model.findings',
    'Kind': 'portwatch.model.findings',
    'ProcessInfo': 'portwatch.model.findings',
    'Severity': 'portwatch.model.findings',
    'KernelSettings': 'portwatch.model.kernel',
    'PortRange': 'portwatch.model.kernel',
    'format_port_set': 'portwatch.model.kernel',
    'CgroupIdentity': 'portwatch.model.namespaces',
    'NamespaceInfo': 'portwatch.model.namespaces',
    'NamespaceKind': 'portwatch.model.namespaces',
    'ScanResult': 'portwatch.model.results',
    'Destination': 'portwatch.model.snapshot',
    'Listening': 'portwatch.model.snapshot',
    'RememberedPort': 'portwatch.model.snapshot',
    'Snapshot': 'portwatch.model.snapshot',
    'SocketCounts': 'portwatch.model.snapshot',
    'count_states': 'portwatch.model.snapshot',
    'host_port': 'portwatch.model.text',
    'iso_time': 'portwatch.model.text',
    'os_error_text': 'portwatch.model.text',
    'printable': 'portwatch.model.text',
    'brief': 'portwatch.model.values',
    'finite_number': 'portwatch.model.values',
    'KERNEL_TCP_STATES': 'portwatch.model.sockets',
    'WILDCARDS': 'portwatch.model.sockets',
    'Endpoint': 'portwatch.model.sockets',
    'Family': 'portwatch.model.sockets',
    'Protocol': 'portwatch.model.sockets',
    'Socket': 'portwatch.model.sockets',
    'SocketSource': 'portwatch.model.sockets',
    'SocketState': 'portwatch.model.sockets',
    'SocketTable': 'portwatch.model.sockets',
    'SourceUnavailable': 'portwatch.model.sockets',
    'is_wildcard': 'portwatch.model.sockets',
    'normalize_ip': 'portwatch.model.sockets',
    'socket_to_dict': 'portwatch.model.sockets',
}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
