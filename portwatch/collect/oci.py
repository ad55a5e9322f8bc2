"""Pod and container names from the OCI bundles of container runtimes (``config.json`` annotations).

Job: :func:`names_from_annotations` (pure: what a bundle's ``config.json``
document says about the Kubernetes pod and container, in containerd's and
CRI-O's annotation keys) and :class:`BundleReader` (finds a container's
``config.json`` under a run root from its container id, reads it bounded,
caches what it found by the file's identity). A cgroup path gives a pod's uid
and a container id only; the names people know a pod by (``default/web-1``)
are in these annotations, where readable. May import the standard library
only.

Where the runtimes put a container's bundle (``RUN`` is the run root,
``/run`` by default):

- containerd (CRI plugin): ``RUN/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/config.json``
  (the Kubernetes containers are in containerd namespace ``k8s.io``);
  annotations ``io.kubernetes.cri.sandbox-namespace``, ``-sandbox-name``,
  ``-sandbox-uid``, ``io.kubernetes.cri.container-name``,
  ``io.kubernetes.cri.container-type`` (``sandbox``/``container``).
- CRI-O: ``RUN/containers/storage/overlay-containers/<id>/userdata/config.json``
  (its run directory; CRI-O writes the runtime configuration there);
  annotations (the kubelet's labels) ``io.kubernetes.pod.namespace``,
  ``io.kubernetes.pod.name``, ``io.kubernetes.pod.uid``,
  ``io.kubernetes.container.name`` (``POD`` for the sandbox) and
  ``io.kubernetes.cri-o.ContainerType``.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from portwatch.model.records import dataclass

__all__ = ["DEFAULT_RUN_ROOT", "MAX_CONFIG_BYTES", "BundleNames", "BundleReader", "bundle_reader",
           "names_from_annotations"]

#: Where the runtimes keep their state (bundles) on a host.
DEFAULT_RUN_ROOT = Path("/run")
#: A ``config.json`` larger than this is not read (a Kubernetes container's is tens of KiB).
MAX_CONFIG_BYTES = 4 << 20
_CONTAINERD_TASKS = "containerd/io.containerd.runtime.v2.task"
_CRIO_CONTAINERS = "containers/storage/overlay-containers"
_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
# Kubernetes names: a namespace and a container name are DNS labels, a pod name a DNS subdomain.
_DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?$")
_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: (pod namespace, pod name, pod uid, container name, container type) keys, by runtime.
_KEYS: tuple[tuple[str, str, str, str, str], ...] = (
    ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri.sandbox-name",
     "io.kubernetes.cri.sandbox-uid", "io.kubernetes.cri.container-name",
     "io.kubernetes.cri.container-type"),  # containerd
    ("io.kubernetes.pod.namespace", "io.kubernetes.pod.name", "io.kubernetes.pod.uid",
     "io.kubernetes.container.name", "io.kubernetes.cri-o.ContainerType"),  # CRI-O
)
#: The container name the kubelet gives a pod's sandbox (infra) container.
_SANDBOX_NAME = "POD"
#: Cached documents per reader; past this the cache starts again empty.
_CACHE_SIZE = 4096


@dataclass(frozen=True)
class BundleNames:
    """What one container's bundle says about its pod: Kubernetes names, each None when absent or invalid.

    ``pod_namespace`` and ``pod_name`` are the pod's (both known, or
    :func:`names_from_annotations` returns None); ``pod_uid`` with dashes;
    ``container_name`` the container's name in the pod, None for the pod's
    sandbox (``sandbox`` true).
    """

    pod_namespace: str
    pod_name: str
    pod_uid: str | None = None
    container_name: str | None = None
    sandbox: bool = False


def _valid(value: Any, pattern: re.Pattern[str]) -> str | None:
    """``value`` when it is a string ``pattern`` matches whole, else None."""
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


def names_from_annotations(document: Any) -> BundleNames | None:
    """The pod and container names in an OCI ``config.json`` document (parsed JSON), or None.

    Reads ``document["annotations"]`` in containerd's keys, then CRI-O's
    (see the module's docstring); the first set giving both the pod's
    namespace and name wins. A value that is not a valid Kubernetes name
    (namespace and container: DNS label; pod: DNS subdomain; uid: a
    lower-case UUID) counts as absent, so nothing odd reaches a report or a
    label. Returns None for anything else (not a mapping, no annotations,
    no pod names). Pure; never raises.
    """
    annotations = document.get("annotations") if isinstance(document, dict) else None
    if not isinstance(annotations, dict):
        return None
    for ns_key, name_key, uid_key, container_key, type_key in _KEYS:
        namespace = _valid(annotations.get(ns_key), _DNS_LABEL)
        name = _valid(annotations.get(name_key), _DNS_SUBDOMAIN)
        if namespace is None or name is None:
            continue
        raw_container = annotations.get(container_key)
        sandbox = annotations.get(type_key) == "sandbox" or raw_container == _SANDBOX_NAME
        return BundleNames(
            pod_namespace=namespace, pod_name=name, pod_uid=_valid(annotations.get(uid_key), _UID),
            container_name=None if sandbox else _valid(raw_container, _DNS_LABEL), sandbox=sandbox)
    return None


class BundleReader:
    """Finds and reads containers' OCI ``config.json`` under one run root, with a cache.

    ``run_root`` is where the runtimes keep their bundles (``/run`` on a
    host; tests give a tree of their own). A document is read at most
    ``max_bytes``; one that is bigger, not a regular file, unreadable or not
    JSON is ignored quietly (counted in ``ignored``; one without pod
    annotations is not an error, it names nothing). What a file gave is
    cached by its device, inode, size and modification time, so a pass
    re-reads only files that changed. ``reads`` counts the files read,
    ``ignored`` the ones that were ignored (for tests and debugging). Not
    thread-safe.
    """

    def __init__(self, run_root: Path = DEFAULT_RUN_ROOT, max_bytes: int = MAX_CONFIG_BYTES) -> None:
        """Take the run root and the size cap of one ``config.json``."""
        self.run_root = Path(run_root)
        self.max_bytes = max_bytes
        self.reads = 0
        self.ignored = 0
        self._cache: dict[str, tuple[tuple[int, int, int, int], BundleNames | None]] = {}

    def candidates(self, container_id: str, runtime: str | None = None) -> list[Path]:
        """Where the bundle ``config.json`` of ``container_id`` may be: CRI-O's place and each
        containerd namespace's, the ``runtime``'s first (``cri-o``, ``containerd``; None: containerd's
        first). [] for an id that is not 64 hex digits. Lists the containerd task directory; never raises."""
        if not _CONTAINER_ID.match(container_id):
            return []
        crio = [self.run_root / _CRIO_CONTAINERS / container_id / "userdata" / "config.json"]
        tasks = self.run_root / _CONTAINERD_TASKS
        try:
            namespaces = sorted(os.listdir(tasks))
        except OSError:
            namespaces = []
        containerd = [tasks / ns / container_id / "config.json" for ns in namespaces]
        return crio + containerd if runtime == "cri-o" else containerd + crio

    def names(self, container_id: str, runtime: str | None = None) -> BundleNames | None:
        """What the bundle of ``container_id`` says about its pod (:func:`names_from_annotations`).

        ``runtime`` (from the cgroup name) says where to look first. Returns
        None when no bundle is found or readable, or it names no pod. Never
        raises.
        """
        for path in self.candidates(container_id, runtime):
            found, names = self._read(path)
            if found:
                return names
        return None

    def _read(self, path: Path) -> tuple[bool, BundleNames | None]:
        """(whether ``path`` exists, what it names) — from the cache while the file is unchanged."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return False, None
        except OSError:
            self.ignored += 1
            return True, None
        try:
            st = os.fstat(fd)
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._cache.get(str(path))
            if cached is not None and cached[0] == ident:
                return True, cached[1]
            document = self._document(fd, st)
        except OSError:
            self.ignored += 1
            return True, None
        finally:
            os.close(fd)
        names = names_from_annotations(document)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[str(path)] = (ident, names)
        return True, names

    def _document(self, fd: int, st: os.stat_result) -> Any:
        """The JSON document in the open file ``fd``; None (counted in ``ignored``) when it is not a
        regular file, is bigger than ``max_bytes`` or is not JSON. Raises OSError from ``read``."""
        if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_bytes:
            self.ignored += 1
            return None
        self.reads += 1
        chunks: list[bytes] = []
        size = 0
        while size <= self.max_bytes:
            chunk = os.read(fd, self.max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > self.max_bytes:  # grew since the stat
            self.ignored += 1
            return None
        import json  # only once a bundle is read: a plain scan never loads it

        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            self.ignored += 1
            return None


_READERS: dict[Path, BundleReader] = {}


def bundle_reader(run_root: Path = DEFAULT_RUN_ROOT) -> BundleReader:
    """The process's one :class:`BundleReader` for ``run_root`` (so its cache lasts across passes)."""
    root = Path(run_root)
    reader = _READERS.get(root)
    if reader is None:
        reader = _READERS[root] = BundleReader(root)
    return reader
