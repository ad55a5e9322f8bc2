"""Network namespaces and cgroups as portwatch names them: identities, not handles.

Job: :class:`NamespaceInfo` (one network namespace found on the host: its
inode, kind, name, a few pids, where it can be entered) and
:class:`CgroupIdentity` (what a cgroup path says about who runs in it: the
systemd unit, the container, the pod). Frozen data, standard library only.
"""

from __future__ import annotations

import enum
from portwatch.model.records import dataclass


class NamespaceKind(str, enum.Enum):
    """What a network namespace is, from the most specific name found for it.

    ``host``: the namespace of pid 1. ``named``: an ``ip netns`` bind mount
    (``/run/netns/NAME``). ``pod``: its processes run in a Kubernetes pod's
    cgroup. ``container``: in a container runtime's cgroup. ``process``:
    anything else (named by its systemd unit or its lowest pid's command).
    """

    HOST = "host"
    NAMED = "named"
    CONTAINER = "container"
    POD = "pod"
    PROCESS = "process"


@dataclass(frozen=True)
class CgroupIdentity:
    """Who a cgroup belongs to, read from its path (``/system.slice/docker-<id>.scope``).

    ``path`` is relative to the cgroup2 mount, starting with ``/``. ``unit``
    is the innermost systemd ``.service``/``.scope``; ``container`` the
    container id (``runtime`` says whose: ``docker``, ``cri-o``,
    ``containerd``, ``libpod``); ``pod_uid`` the Kubernetes pod UID with
    dashes. Any of them may be ``None``.
    """

    path: str
    unit: str | None = None
    container: str | None = None
    runtime: str | None = None
    pod_uid: str | None = None


@dataclass(frozen=True)
class NamespaceInfo:
    """One network namespace found on the host.

    ``inode`` and ``dev`` are the nsfs ``st_ino``/``st_dev`` that identify it
    (two handles on one namespace compare equal there). ``name`` is the most
    stable name found (the ``ip netns`` name, the container id, the pod uid,
    the systemd unit, else the lowest pid's command; the host namespace is
    ``host``); ``stable`` says whether it survives a restart of what runs
    there (false for a command name, where ``inode`` is the better key).
    ``pids`` holds up to a few pids inside it, lowest first; ``paths`` the
    nsfs bind mounts of it (``/run/netns/NAME``). ``own`` marks the
    namespace portwatch itself runs in. ``pod_namespace`` and ``pod_name``
    are the Kubernetes namespace and name of the pod (from its runtime's OCI
    bundle, when readable), ``container_name`` the Kubernetes name of the
    container ``container`` (None for a pod's sandbox); they are for people
    and matching, never part of ``key``.
    """

    inode: int
    dev: int
    kind: NamespaceKind
    name: str
    pids: tuple[int, ...] = ()
    paths: tuple[str, ...] = ()
    own: bool = False
    stable: bool = True
    netns_name: str | None = None
    container: str | None = None
    runtime: str | None = None
    pod_uid: str | None = None
    unit: str | None = None
    command: str | None = None
    pod_namespace: str | None = None
    pod_name: str | None = None
    container_name: str | None = None

    @property
    def pod_ref(self) -> str | None:
        """The pod as Kubernetes names it, ``NAMESPACE/NAME`` (``default/web-1``); None unless both are known."""
        if self.pod_namespace is None or self.pod_name is None:
            return None
        return f"{self.pod_namespace}/{self.pod_name}"

    @property
    def key(self) -> str:
        """The name to key findings and metric series on: ``name`` when stable, else ``netns:INODE``."""
        return self.name if self.stable else f"netns:{self.inode}"
