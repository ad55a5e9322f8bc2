"""Everything portwatch reads from the kernel: sysctls, the socket table, socket owners.

This is the only package that reads ``/proc``, talks netlink or calls psutil;
it may import the standard library, psutil and :mod:`portwatch.model`, nothing
else of portwatch. Its modules: ``kernel`` (sysctls), ``sources`` (the
registry of socket sources, and one module per source: ``sources.netlink``,
``sources.psutil``), ``netlink`` (the sock_diag wire format), ``owners`` (the
``/proc/PID/fd`` walk and its caches), ``processes`` (process descriptions),
``collector`` (:class:`Collector`), ``errors``, ``namespaces`` (finding,
naming and entering network namespaces), ``cgroups`` (cgroup id -> path ->
unit, container, pod), ``mounts`` (the mount table), and the failure capture:
``audit`` (the audit control protocol and portwatch's rules), ``auditlog``
(the passive reader of the records), ``holders`` (the targeted dump of one
port's sockets) and ``capture`` (:class:`FailureCapture`, putting them
together). This package exports their public names; importing it imports
neither psutil (loaded at the first psutil read or process description) nor
the netlink or audit modules: :class:`FailureCapture` and
:func:`port_holders` are imported at their first use. Every function
takes the root it reads (``proc_root``) and the functions it calls
(``net_connections``, ``process_factory``, ``clock``) as parameters, so tests
can point it at fixture trees or replace a function without monkeypatching.

Reading happens in three steps, from cheap to expensive:

1. :class:`Collector.snapshot` reads the sysctls and the socket table from a
   :class:`~portwatch.model.SocketSource` (every socket, no process walk unless
   the source does one anyway, as :class:`PsutilSource` does). For other
   network namespaces: :func:`discover_namespaces`, then
   :meth:`Collector.snapshot_namespaces` (one :class:`NamespaceScan` each:
   ``ok``, ``vanished``, ``denied`` or ``failed``).
2. The detectors decide which sockets matter.
3. :meth:`Collector.attribute` finds the owners of only those sockets: first
   in the fd tables of the processes of the cgroup each socket was created in
   (its ``cgroup_id``, :class:`CgroupIndex`), then by a walk of every
   ``/proc/PID/fd``; it describes the owning processes
   (:func:`describe_processes`). :meth:`Collector.identity_of` names a
   socket's unit, container and pod from its cgroup.

Errors: a file that cannot be read or holds garbage raises
:class:`CollectError`, whose message names the file and the cause, e.g.
``/proc/sys/net/ipv4/ip_local_port_range: permission denied``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from portwatch.lazy import lazy_getattr

from portwatch.collect.cgroups import (
    CgroupIndex,
    cgroup2_mount,
    cgroup_of_pid,
    identity_from_path,
)
from portwatch.collect.collector import (
    PARTIAL_ATTRIBUTION_NOTE,
    AttributionCounters,
    Collector,
    NamespaceScan,
)
from portwatch.collect.errors import CollectError, SourceReadError
from portwatch.collect.kernel import (
    DEFAULT_UNPRIVILEGED_PORT_START,
    parse_port_range,
    parse_reserved_ports,
    read_kernel_settings,
)
from portwatch.collect.mounts import Mount, parse_mountinfo, read_mountinfo
from portwatch.collect.namespaces import (
    OWN_NAMESPACE_NOTE,
    Discovery,
    NamespaceVanished,
    can_enter_namespaces,
    discover_namespaces,
    run_in_namespace,
)
from portwatch.collect.owners import FD_CACHE_SIZE, OwnerScan, find_socket_owners
from portwatch.collect.processes import describe_processes, systemd_unit_from_cgroup
from portwatch.collect.sources import SOURCE_NAMES, FallbackSource, make_source
from portwatch.collect.sources.psutil import PsutilSource

if TYPE_CHECKING:
    from portwatch.collect.capture import FailureCapture as FailureCapture
    from portwatch.collect.holders import port_holders as port_holders

__all__ = [
    "CollectError",
    "SourceReadError",
    "parse_port_range",
    "parse_reserved_ports",
    "read_kernel_settings",
    "PsutilSource",
    "OwnerScan",
    "find_socket_owners",
    "systemd_unit_from_cgroup",
    "describe_processes",
    "Collector",
    "NamespaceScan",
    "PARTIAL_ATTRIBUTION_NOTE",
    "DEFAULT_UNPRIVILEGED_PORT_START",
    "FD_CACHE_SIZE",
    "SOURCE_NAMES",
    "FallbackSource",
    "make_source",
    "AttributionCounters",
    "CgroupIndex",
    "cgroup2_mount",
    "cgroup_of_pid",
    "identity_from_path",
    "Mount",
    "parse_mountinfo",
    "read_mountinfo",
    "OWN_NAMESPACE_NOTE",
    "Discovery",
    "NamespaceVanished",
    "can_enter_namespaces",
    "discover_namespaces",
    "run_in_namespace",
    "FailureCapture",
    "port_holders",
]

#: Names imported on first use (they import the netlink parser and the audit modules): name -> module.
_LAZY = {
    "FailureCapture": "portwatch.collect.capture",
    "port_holders": "portwatch.collect.holders",
}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
