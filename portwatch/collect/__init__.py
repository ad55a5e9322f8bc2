"""Everything portwatch reads from the kernel: sysctls, the socket table, socket owners.

This is the only package that reads ``/proc``, talks netlink or calls psutil;
it may import the standard library, psutil and :mod:`portwatch.model`, nothing
else of portwatch. Its modules: ``kernel`` (sysctls), ``sources`` (the
registry of socket sources, and one module per source: ``sources.netlink``,
``sources.psutil``), ``netlink`` (the sock_diag wire format), ``owners`` (the
``/proc/PID/fd`` walk and its caches), ``processes`` (process descriptions),
``collector`` (:class:`Collector`), ``errors``, ``namespaces`` (finding,
naming and entering network namespaces), ``cgroups`` (cgroup id -> path ->
unit, container, pod), ``oci`` (pod and container names from the runtimes'
OCI bundles), ``mounts`` (the mount table), and the failure capture:
``audit`` (the audit control protocol and portwatch's rules), ``auditlog``
(the passive reader of the records), ``holders`` (the targeted dump of one
port's sockets) and ``capture`` (:class:`FailureCapture`, putting them
together). This package exports their public names, each imported on first
use (``_LAZY``): importing the package imports none of its modules, so
neither psutil (loaded at the first psutil read or process description) nor
the netlink or audit modules. Every function
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

from portwatch.lazy import lazy_getattr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from portwatch.collect.cgroups import CgroupIndex as CgroupIndex
    from portwatch.collect.cgroups import cgroup2_mount as cgroup2_mount
    from portwatch.collect.cgroups import cgroup_of_pid as cgroup_of_pid
    from portwatch.collect.cgroups import identity_from_path as identity_from_path
    from portwatch.collect.collector import PARTIAL_ATTRIBUTION_NOTE as PARTIAL_ATTRIBUTION_NOTE
    from portwatch.collect.collector import AttributionCounters as AttributionCounters
    from portwatch.collect.collector import Collector as Collector
    from portwatch.collect.collector import NamespaceScan as NamespaceScan
    from portwatch.collect.errors import CollectError as CollectError
    from portwatch.collect.errors import SourceReadError as SourceReadError
    from portwatch.collect.kernel import DEFAULT_UNPRIVILEGED_PORT_START as DEFAULT_UNPRIVILEGED_PORT_START
    from portwatch.collect.kernel import parse_port_range as parse_port_range
    from portwatch.collect.kernel import parse_reserved_ports as parse_reserved_ports
    from portwatch.collect.kernel import read_kernel_settings as read_kernel_settings
    from portwatch.collect.mounts import Mount as Mount
    from portwatch.collect.mounts import parse_mountinfo as parse_mountinfo
    from portwatch.collect.mounts import read_mountinfo as read_mountinfo
    from portwatch.collect.namespaces import OWN_NAMESPACE_NOTE as OWN_NAMESPACE_NOTE
    from portwatch.collect.namespaces import Discovery as Discovery
    from portwatch.collect.namespaces import NamespaceVanished as NamespaceVanished
    from portwatch.collect.namespaces import can_enter_namespaces as can_enter_namespaces
    from portwatch.collect.namespaces import discover_namespaces as discover_namespaces
    from portwatch.collect.namespaces import run_in_namespace as run_in_namespace
    from portwatch.collect.oci import DEFAULT_RUN_ROOT as DEFAULT_RUN_ROOT
    from portwatch.collect.oci import BundleNames as BundleNames
    from portwatch.collect.oci import BundleReader as BundleReader
    from portwatch.collect.oci import bundle_reader as bundle_reader
    from portwatch.collect.oci import names_from_annotations as names_from_annotations
    from portwatch.collect.owners import FD_CACHE_SIZE as FD_CACHE_SIZE
    from portwatch.collect.owners import OwnerScan as OwnerScan
    from portwatch.collect.owners import find_socket_owners as find_socket_owners
    from portwatch.collect.processes import describe_processes as describe_processes
    from portwatch.collect.processes import systemd_unit_from_cgroup as systemd_unit_from_cgroup
    from portwatch.collect.sources import SOURCE_NAMES as SOURCE_NAMES
    from portwatch.collect.sources import FallbackSource as FallbackSource
    from portwatch.collect.sources import make_source as make_source
    from portwatch.collect.sources.psutil import PsutilSource as PsutilSource
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
    "DEFAULT_RUN_ROOT",
    "BundleNames",
    "BundleReader",
    "bundle_reader",
    "names_from_annotations",
    "FailureCapture",
    "port_holders",
]

#: Names imported on first use: name -> the module that defines it. Importing the
#: package imports none of them (``config.shapes`` takes ``SOURCE_NAMES`` from
#: :mod:`.sources`, which must not pull in the collector).
_LAZY = {
    "FailureCapture": "portwatch.collect.capture",
    "port_holders": "portwatch.collect.holders",
    "CgroupIndex": "portwatch.collect.cgroups",
    "cgroup2_mount": "portwatch.collect.cgroups",
    "cgroup_of_pid": "portwatch.collect.cgroups",
    "identity_from_path": "portwatch.collect.cgroups",
    "PARTIAL_ATTRIBUTION_NOTE": "portwatch.collect.collector",
    "AttributionCounters": "portwatch.collect.collector",
    "Collector": "portwatch.collect.collector",
    "NamespaceScan": "portwatch.collect.collector",
    "CollectError": "portwatch.collect.errors",
    "SourceReadError": "portwatch.collect.errors",
    "DEFAULT_UNPRIVILEGED_PORT_START": "portwatch.collect.kernel",
    "parse_port_range": "portwatch.collect.kernel",
    "parse_reserved_ports": "portwatch.collect.kernel",
    "read_kernel_settings": "portwatch.collect.kernel",
    "Mount": "portwatch.collect.mounts",
    "parse_mountinfo": "portwatch.collect.mounts",
    "read_mountinfo": "portwatch.collect.mounts",
    "OWN_NAMESPACE_NOTE": "portwatch.collect.namespaces",
    "Discovery": "portwatch.collect.namespaces",
    "NamespaceVanished": "portwatch.collect.namespaces",
    "can_enter_namespaces": "portwatch.collect.namespaces",
    "discover_namespaces": "portwatch.collect.namespaces",
    "run_in_namespace": "portwatch.collect.namespaces",
    "DEFAULT_RUN_ROOT": "portwatch.collect.oci",
    "BundleNames": "portwatch.collect.oci",
    "BundleReader": "portwatch.collect.oci",
    "bundle_reader": "portwatch.collect.oci",
    "names_from_annotations": "portwatch.collect.oci",
    "FD_CACHE_SIZE": "portwatch.collect.owners",
    "OwnerScan": "portwatch.collect.owners",
    "find_socket_owners": "portwatch.collect.owners",
    "describe_processes": "portwatch.collect.processes",
    "systemd_unit_from_cgroup": "portwatch.collect.processes",
    "SOURCE_NAMES": "portwatch.collect.sources",
    "FallbackSource": "portwatch.collect.sources",
    "make_source": "portwatch.collect.sources",
    "PsutilSource": "portwatch.collect.sources.psutil",
}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
