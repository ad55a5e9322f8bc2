"""The registry of finding kinds: one :class:`~portwatch.detect.base.Detector` per :class:`~portwatch.model.Kind`.

Above the kinds' modules (it imports each of them) and below the loop
(:mod:`portwatch.detect.pipeline`), which iterates over it. Adding a kind is
its module plus one line in :data:`REGISTRY`. Imports the kinds' modules,
:mod:`portwatch.detect.base` and :mod:`portwatch.model` only (pure).
"""

from __future__ import annotations

from portwatch.detect.base import Detector
from portwatch.detect.bind_failed import DETECTOR as BIND_FAILED
from portwatch.detect.close_wait_buildup import DETECTOR as CLOSE_WAIT_BUILDUP
from portwatch.detect.connect_failed import DETECTOR as CONNECT_FAILED
from portwatch.detect.ephemeral_exhaustion import DETECTOR as EPHEMERAL_EXHAUSTION
from portwatch.detect.listener_in_ephemeral_range import DETECTOR as LISTENER_IN_EPHEMERAL_RANGE
from portwatch.detect.loop_pair import DETECTOR as LOOP_PAIR
from portwatch.detect.port_taken import DETECTOR as PORT_TAKEN
from portwatch.detect.range_misconfigured import DETECTOR as RANGE_MISCONFIGURED
from portwatch.detect.self_connect import DETECTOR as SELF_CONNECT
from portwatch.detect.service_port_at_risk import DETECTOR as SERVICE_PORT_AT_RISK
from portwatch.model import Kind, Severity

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Iterator, Mapping


class Registry:
    """Detectors by kind, in the order they run.

    Takes the detectors; raises ValueError when two declare the same kind.
    It need not cover every kind (a test registry may hold one detector);
    :attr:`missing` says which kinds it leaves out.
    """

    def __init__(self, detectors: Iterable[Detector]) -> None:
        self._by_kind: dict[Kind, Detector] = {}
        for d in detectors:
            if d.kind in self._by_kind:
                raise ValueError(f"two detectors declare kind {d.kind.value!r}")
            self._by_kind[d.kind] = d

    def __iter__(self) -> Iterator[Detector]:
        return iter(self._by_kind.values())

    def __len__(self) -> int:
        return len(self._by_kind)

    def __contains__(self, kind: object) -> bool:
        return kind in self._by_kind

    def get(self, kind: Kind | str) -> Detector:
        """The detector of ``kind`` (a Kind or its value); raises KeyError for one it does not hold."""
        try:
            return self._by_kind[Kind(kind)]
        except ValueError:
            raise KeyError(kind) from None

    @property
    def missing(self) -> frozenset[Kind]:
        """The kinds of :class:`~portwatch.model.Kind` no detector here declares."""
        return frozenset(Kind) - self._by_kind.keys()

    def severities(self) -> dict[Kind, Severity]:
        """The default severity of each kind held."""
        return {d.kind: d.severity for d in self}

    def alertnames(self) -> dict[str, str]:
        """The Alertmanager ``alertname`` of each kind held, by kind value (``"self_connect"``)."""
        return {d.kind.value: d.alertname for d in self}


#: Every finding kind, in the order detection runs them.
REGISTRY = Registry([
    SELF_CONNECT,
    LOOP_PAIR,
    LISTENER_IN_EPHEMERAL_RANGE,
    SERVICE_PORT_AT_RISK,
    PORT_TAKEN,
    EPHEMERAL_EXHAUSTION,
    CLOSE_WAIT_BUILDUP,
    RANGE_MISCONFIGURED,
    CONNECT_FAILED,  # event kinds (audit capture): nothing in a scan
    BIND_FAILED,
])

#: Severity of each kind before configuration overrides.
DEFAULT_SEVERITY: Mapping[Kind, Severity] = REGISTRY.severities()

#: The ``alertname`` of each kind, by kind value: the names config/prometheus/portwatch.rules.yml uses.
ALERTNAMES: Mapping[str, str] = REGISTRY.alertnames()


def alertname(kind: Kind | str) -> str:
    """The Alertmanager ``alertname`` of ``kind`` (a Kind or its value, e.g. ``"self_connect"``).

    Raises KeyError for a value that names no kind.
    """
    return REGISTRY.get(kind).alertname


def default_severity(kind: Kind | str) -> Severity:
    """The severity of ``kind``'s findings before configuration overrides; KeyError for no kind."""
    return REGISTRY.get(kind).severity
