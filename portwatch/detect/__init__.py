"""Detectors: pure functions from a snapshot (and config, and remembered state) to findings.

No I/O, no clock, no logging here: the package may import
:mod:`portwatch.model`, the configuration types and pure standard-library
modules, nothing that touches the system. Its modules, from the bottom up:

- :mod:`~portwatch.detect.base` — the :class:`Detector` declaration, finding
  construction and wording shared by the kinds, the socket index;
- one module per finding kind (``self_connect``, ``loop_pair``,
  ``listener_in_ephemeral_range``, ``service_port_at_risk``, ``port_taken``,
  ``ephemeral_exhaustion``, ``close_wait_buildup``, ``range_misconfigured``,
  and the event kinds of the audit capture, ``connect_failed`` and
  ``bind_failed``, whose findings come from failure events through
  :func:`find_connect_failures` / :func:`find_bind_failures`), each
  declaring its ``DETECTOR``; they import ``base`` only;
- :mod:`~portwatch.detect.registry` — every kind's detector, the default
  severities and alert names derived from it;
- :mod:`~portwatch.detect.pipeline` — the loop over the registry.

The scan engine (``portwatch.scan``) calls, in order:

1. :func:`owners_needed` — the sockets whose owners detection itself needs
   (CLOSE_WAIT sockets, only when there are enough of them to matter);
2. :func:`destination_usage` and :func:`detect` — the findings, with the
   processes the snapshot already knows;
3. :func:`involved_inodes` then :func:`explain` — after attributing the
   sockets the findings involve, fill in their processes and summaries;
4. :func:`in_namespace` — key findings of a namespace other than the host's;
5. :func:`apply_ignores` — drop what the configuration ignores (process
   names and units are known by then).

Every finding's ``key`` is stable across scans: the kind plus the tuple it is
about (never a pid for socket-level findings, so a restarted client that hits
the same self-connect keeps the same key).
"""

from __future__ import annotations

from portwatch.detect.base import (
    MAX_EXAMPLE_SOCKETS,
    SYSCTL_RANGE,
    SYSCTL_RESERVED,
    DetectionInput,
    Detector,
    SocketIndex,
    index,
    listeners,
)
from portwatch.detect.bind_failed import find_bind_failures
from portwatch.detect.close_wait_buildup import find_close_wait
from portwatch.detect.connect_failed import find_connect_failures
from portwatch.detect.ephemeral_exhaustion import destination_usage, find_exhaustion
from portwatch.detect.listener_in_ephemeral_range import find_listeners_in_range
from portwatch.detect.loop_pair import find_loop_pairs
from portwatch.detect.pipeline import (
    apply_ignores,
    detect,
    explain,
    explain_one,
    failure_findings,
    in_namespace,
    involved_inodes,
    listening_ports,
    owners_needed,
    sort_findings,
)
from portwatch.detect.port_taken import find_ports_taken
from portwatch.detect.range_misconfigured import find_range_problems
from portwatch.detect.registry import ALERTNAMES, DEFAULT_SEVERITY, REGISTRY, Registry, alertname, default_severity
from portwatch.detect.self_connect import find_self_connects
from portwatch.detect.service_port_at_risk import find_services_at_risk
from portwatch.model import Destination, Listening, RememberedPort

#: The detectors of the failure events (what :func:`failure_findings` is given).
FAILURE_FINDERS = (find_connect_failures, find_bind_failures)

__all__ = [
    "ALERTNAMES", "DEFAULT_SEVERITY", "FAILURE_FINDERS", "MAX_EXAMPLE_SOCKETS", "REGISTRY", "SYSCTL_RANGE", "SYSCTL_RESERVED",
    "Destination", "DetectionInput", "Detector", "Listening", "Registry", "RememberedPort", "SocketIndex",
    "alertname", "apply_ignores", "default_severity", "destination_usage", "detect", "explain", "explain_one",
    "failure_findings", "find_bind_failures", "find_close_wait", "find_connect_failures", "find_exhaustion", "find_listeners_in_range", "find_loop_pairs", "find_ports_taken",
    "find_range_problems", "find_self_connects", "find_services_at_risk", "in_namespace", "index",
    "involved_inodes",
    "listeners", "listening_ports", "owners_needed", "sort_findings",
]
