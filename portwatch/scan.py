"""The scan engine: collect, detect, attribute on demand, explain, ignore; per network namespace.

One call of :func:`run_scan` is one scan of the collector's own namespace;
one call of :func:`run_namespaces_scan` one pass over several namespaces
(each with its own kernel settings, socket table and detection). They touch
the kernel only through the :class:`~portwatch.collect.Collector` given and
keep no state, so the CLI, the daemon and the benchmark all run the same
code. :func:`select_namespaces` picks namespaces by name, path, pid or inode.
It may import :mod:`portwatch.collect`, :mod:`portwatch.detect`,
:mod:`portwatch.config` and :mod:`portwatch.model`. :func:`make_source` and
:class:`FallbackSource` live in :mod:`portwatch.collect.sources`; they are
re-exported here for the daemon and the CLI.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from portwatch import detect
from portwatch.collect import Collector, Discovery
from portwatch.collect.sources import FallbackSource, make_source
from portwatch.config.types import Config, service_applies
from portwatch.model import NamespaceInfo, NamespaceKind, RememberedPort, ScanResult, Snapshot
from portwatch.model.records import replace
from portwatch.model.results import NamespacesResult

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Collection, Iterable, Mapping, Sequence

__all__ = ["FallbackSource", "UnknownNamespace", "interest_ports", "make_source", "namespace_names", "run_namespaces_scan",
           "run_scan", "scan_snapshot", "select_namespaces"]


class UnknownNamespace(ValueError):
    """A ``--netns`` argument that names no namespace found; the message says which and what exists."""


def run_scan(
    config: Config,
    collector: Collector,
    remembered: Collection[RememberedPort] = (),
    clock: Callable[[], float] = time.monotonic,
    namespace: NamespaceInfo | None = None,
) -> ScanResult:
    """One scan of the collector's own namespace: snapshot, detect, attribute, explain, ignore.

    Owners are looked up only for the sockets that detection or the findings
    need (lazy attribution). ``namespace``, when given, is the own
    namespace's description: it labels the snapshot (``Snapshot.namespace``)
    and decides which declared services apply, but keys are unchanged.
    Raises :class:`~portwatch.collect.CollectError`
    or ``OSError`` when the kernel's settings or socket table cannot be read,
    :class:`~portwatch.model.SourceUnavailable` when the configured source
    cannot work here (``source: netlink`` without sock_diag), and
    :class:`~portwatch.collect.netlink.NetlinkError` for malformed kernel data.
    """
    started = clock()
    snapshot = collector.snapshot(interest_ports(config, remembered))
    if namespace is not None:
        snapshot = replace(snapshot, namespace=namespace)
    return scan_snapshot(config, collector, snapshot, remembered, clock, started, keyed=False)


def interest_ports(config: Config, remembered: Iterable[RememberedPort] = ()) -> frozenset[int]:
    """The ports whose holders a scan must see one by one: every declared service's (of any
    namespace) and every remembered listener's. What the collector's counted read keeps
    besides the sockets detectors always look at (reserved ports it adds itself)."""
    return frozenset(s.port for s in config.services) | frozenset(r.port for r in remembered)


def namespace_names(namespace: NamespaceInfo) -> tuple[str, ...]:
    """Every name ``namespace`` is known by: name, key, ``ip netns`` name, container id, pod uid,
    the pod's ``NAMESPACE/NAME`` (when its bundle was readable), unit."""
    names = (namespace.name, namespace.key, namespace.netns_name, namespace.container,
             namespace.pod_uid, namespace.pod_ref, namespace.unit)
    return tuple(dict.fromkeys(n for n in names if n))


def _services_for(config: Config, namespace: NamespaceInfo | None, host: bool) -> Config:
    """``config`` with the services that live in ``namespace`` (``host``: the unnamed ones too)."""
    names = namespace_names(namespace) if namespace is not None else ()
    services = tuple(s for s in config.services if service_applies(s, names, host))
    return config if services == config.services else replace(config, services=services)


def scan_snapshot(
    config: Config,
    collector: Collector,
    snapshot: Snapshot,
    remembered: Collection[RememberedPort] = (),
    clock: Callable[[], float] = time.monotonic,
    started: float | None = None,
    keyed: bool = True,
) -> ScanResult:
    """Detect, attribute, explain and ignore on ``snapshot`` (already taken by ``collector``).

    The services used are those of ``snapshot.namespace`` (see
    :func:`~portwatch.config.types.service_applies`; no namespace: the
    host's). With ``keyed``, findings of a namespace other than the host's
    get its key appended (:func:`~portwatch.detect.in_namespace`); without
    it (a scan of the own namespace only) keys stay as they are and the
    namespace counts as the host's for services, as before namespaces.
    ``started`` is the clock reading the scan began at (default: now).
    Raises :class:`~portwatch.collect.CollectError` when ``/proc`` cannot be
    listed for attribution.
    """
    if started is None:
        started = clock()
    ns = snapshot.namespace
    host = ns is None or ns.kind is NamespaceKind.HOST
    config = _services_for(config, ns, host or not keyed)
    idx = detect.index(snapshot)
    usage = detect.destination_usage(snapshot, idx.listening)
    if snapshot.counts is not None:  # a counted snapshot: the exhausted destinations' sockets
        snapshot = snapshot.with_destination_sockets(
            [dest for _share, dest in detect.flagged_destinations(snapshot, config, usage)])
    needed = detect.owners_needed(snapshot, config, idx)
    if needed:
        snapshot = collector.attribute(snapshot, needed)
    findings = detect.detect(snapshot, config, remembered, usage, idx)
    involved = detect.involved_inodes(findings)
    if involved:
        snapshot = collector.attribute(snapshot, involved)
        findings = detect.explain(findings, snapshot)
    if keyed and ns is not None and not host:
        findings = detect.in_namespace(findings, ns.key)
    if ns is not None:
        findings = [replace(f, namespace=ns) for f in findings]
    kept, ignored = detect.apply_ignores(findings, config.ignore)
    return ScanResult(snapshot=snapshot, findings=tuple(kept), ignored=tuple(ignored),
                      usage=usage, duration=clock() - started, listening=idx.listening)


def select_namespaces(discovery: Discovery, wanted: Sequence[str],
                      proc_root: Path = Path("/proc")) -> tuple[NamespaceInfo, ...]:
    """The namespaces of ``discovery`` that ``wanted`` name, in discovery order; all when empty.

    Each entry of ``wanted`` is matched against every name of a namespace
    (:func:`namespace_names`), its inode (``netns:INODE`` or the bare
    number), and what it resolves to: a path (a namespace file such as
    ``/proc/PID/ns/net`` or ``/run/netns/NAME``) or a pid (its
    ``proc_root/PID/ns/net``) is the namespace with that device and inode.
    Raises :class:`UnknownNamespace` naming the first entry that matches no
    namespace, what was found, and the discovery's notes (e.g. that only the
    own namespace could be seen).
    """
    if not wanted:
        return discovery.namespaces
    chosen: set[int] = set()
    for word in wanted:
        hits = [ns.inode for ns in discovery.namespaces if _matches(ns, word, _resolve(word, proc_root))]
        if not hits:
            known = ", ".join(ns.key for ns in discovery.namespaces)
            why = "".join(f"; {note}" for note in discovery.notes)
            raise UnknownNamespace(f"--netns {word}: no such network namespace (found: {known}){why}")
        chosen.update(hits)
    return tuple(ns for ns in discovery.namespaces if ns.inode in chosen)


def _resolve(word: str, proc_root: Path) -> tuple[int, int] | None:
    """(device, inode) of the namespace file ``word`` is (a path) or leads to (a pid); None otherwise."""
    if word.startswith("/"):
        path = word
    elif word.isdigit():
        path = f"{proc_root}/{word}/ns/net"
    else:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _matches(ns: NamespaceInfo, word: str, resolved: tuple[int, int] | None) -> bool:
    """True if ``word`` names ``ns``: a name, its inode, or a file or pid resolving to it."""
    if word in namespace_names(ns) or word == f"netns:{ns.inode}" or resolved == (ns.dev, ns.inode):
        return True
    return word.isdigit() and int(word) == ns.inode


def run_namespaces_scan(
    config: Config,
    collector: Collector,
    discovery: Discovery,
    namespaces: Iterable[NamespaceInfo] | None = None,
    remembered: Mapping[str, Collection[RememberedPort]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> NamespacesResult:
    """One pass over ``namespaces`` (default: all of ``discovery``), each detected on its own.

    Every namespace is read with :meth:`Collector.snapshot_namespaces` (one
    walk of the fd tables serves them all); each one read is scanned with
    :func:`scan_snapshot` (its own settings, sockets, services; keys of
    namespaces other than the host's carry the namespace's key).
    ``remembered`` maps a namespace's key to the ports its listeners held
    before. A namespace that vanished is left out quietly; one that was
    denied or failed gives a note and is listed in ``skipped``; the
    discovery's notes come first. Raises only what attribution raises
    (:class:`~portwatch.collect.CollectError`).
    """
    started = clock()
    selected = tuple(discovery.namespaces if namespaces is None else namespaces)
    results: list[ScanResult] = []
    notes: list[str] = list(discovery.notes)
    skipped: list[NamespaceInfo] = []
    every_remembered = [r for ports in (remembered or {}).values() for r in ports]
    for scanned in collector.snapshot_namespaces(selected, interest_ports(config, every_remembered)):
        ns = scanned.namespace
        if scanned.outcome == "ok" and scanned.snapshot is not None:
            before = (remembered or {}).get(ns.key, ())
            results.append(scan_snapshot(config, collector, scanned.snapshot, before, clock))
        elif scanned.outcome != "vanished":
            skipped.append(ns)
            why = "no privilege to enter it" if scanned.outcome == "denied" else "it could not be read"
            notes.append(f"network namespace {ns.key} was not scanned: {why} ({scanned.message})")
    return NamespacesResult(results=tuple(results), notes=tuple(dict.fromkeys(notes)),
                            skipped=tuple(skipped), duration=clock() - started)
