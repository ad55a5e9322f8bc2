"""The registry of finding kinds: every kind declared once, and a new kind is its module plus a registry line."""

from __future__ import annotations

import ast
import importlib
from dataclasses import replace
from pathlib import Path

import pytest

from portwatch import detect
from portwatch.alerts.sinks import alertmanager
from portwatch.config import Config, Service, Thresholds
from portwatch.detect import REGISTRY, DetectionInput, Detector, Registry, SocketIndex
from portwatch.model import Finding, Kind, ProcessInfo, Severity, Snapshot
from tests.builders import listen, proc, snap, tcp

RANGE = (40000, 40999)
#: Kinds made from events (the audit capture), never by a scan.
EVENT_KINDS = frozenset({Kind.CONNECT_FAILED, Kind.BIND_FAILED})


def every_kind_snapshot() -> tuple[Snapshot, Config]:
    """A snapshot and config in which every kind of finding occurs (the range has ends of equal parity)."""
    close_waits = [tcp("127.0.0.1:8000", f"127.0.0.1:{50000 + i}", "CLOSE_WAIT") for i in range(4)]
    exhausting = [tcp(f"127.0.0.2:{40000 + i}", "127.0.0.9:8080") for i in range(900)]
    sockets = [
        tcp("127.0.0.1:40002", "127.0.0.1:40002"),                                     # self_connect
        tcp("127.0.0.1:40011", "127.0.0.1:40013"), tcp("127.0.0.1:40013", "127.0.0.1:40011"),  # loop_pair
        listen("0.0.0.0:40005"),                                                       # listener in range
        tcp("10.0.0.1:40100", "10.0.0.9:2379"),                  # port_taken and service_port_at_risk
        *exhausting, *close_waits,
    ]
    owners = {s: 10 for s in close_waits}
    config = Config(services=(Service("api", 40100),), thresholds=Thresholds(close_wait=3))
    return snap(sockets, (40000, 40998), owners=owners, processes=[proc(10, "leaky")]), config


# ----------------------------------------------------------------- the registry covers every kind once


def test_registry_declares_every_kind_exactly_once() -> None:
    declared = [d.kind for d in REGISTRY]
    assert sorted(declared) == sorted(Kind) and len(declared) == len(set(declared)) == len(REGISTRY)
    assert REGISTRY.missing == frozenset()


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_has_its_own_module_declaring_alert_name_severity_and_wording(kind: Kind) -> None:
    module = importlib.import_module(f"portwatch.detect.{kind.value}")
    detector = module.DETECTOR
    assert isinstance(detector, Detector) and detector.kind is kind
    assert REGISTRY.get(kind) is detector and REGISTRY.get(kind.value) is detector
    assert detector.alertname.startswith("Portwatch") and detector.alertname != "Portwatch"
    assert isinstance(detector.severity, Severity)
    assert callable(detector.summarize) and callable(detector.find)


def test_every_kinds_summary_is_worded_by_its_detector() -> None:
    snapshot, config = every_kind_snapshot()
    found = detect.detect(snapshot, config)
    assert {f.kind for f in found} == set(Kind) - EVENT_KINDS
    for f in found:
        assert f.summary and f.summary == REGISTRY.get(f.kind).summarize(f, f.processes)


def test_default_severities_and_alert_names_are_derived_from_the_registry() -> None:
    assert detect.DEFAULT_SEVERITY == {
        Kind.SELF_CONNECT: Severity.CRITICAL,
        Kind.LOOP_PAIR: Severity.WARNING,
        Kind.LISTENER_IN_EPHEMERAL_RANGE: Severity.WARNING,
        Kind.PORT_TAKEN: Severity.CRITICAL,
        Kind.SERVICE_PORT_AT_RISK: Severity.WARNING,
        Kind.EPHEMERAL_EXHAUSTION: Severity.WARNING,
        Kind.CLOSE_WAIT_BUILDUP: Severity.WARNING,
        Kind.RANGE_MISCONFIGURED: Severity.INFO,
        Kind.CONNECT_FAILED: Severity.CRITICAL,
        Kind.BIND_FAILED: Severity.CRITICAL,
    }
    assert detect.ALERTNAMES == dict(alertmanager.ALERTNAMES)
    assert detect.alertname(Kind.SELF_CONNECT) == "PortwatchSelfConnect"
    assert detect.alertname("ephemeral_exhaustion") == "PortwatchEphemeralPortExhaustion"
    assert detect.default_severity("port_taken") is Severity.CRITICAL


def test_a_value_naming_no_kind_has_no_alert_name() -> None:
    with pytest.raises(KeyError):
        detect.alertname("no_such_kind")


def test_two_detectors_of_one_kind_are_refused() -> None:
    self_connect = REGISTRY.get(Kind.SELF_CONNECT)
    with pytest.raises(ValueError, match="self_connect"):
        Registry([self_connect, replace(self_connect, alertname="Other")])


# ----------------------------------------------------------------- a kind is its module plus a registry line
# What a new kind's module declares, written here as a test-local module would:
# it finds TCP listeners on port 40007, names their processes in its summary,
# and needs the owners of every listener before detection.


def _find_port_7(inp: DetectionInput) -> list[Finding]:
    return [_PORT_7.make(f"listener_in_ephemeral_range:test:{s.inode}", inp.snapshot, (s,), {"n": 1},
                         port=s.local.port, protocol=s.protocol)
            for socks in inp.index.listening.values() for s in socks if s.local.port == 40007]


def _port_7_summary(finding: Finding, processes: tuple[ProcessInfo, ...]) -> str:
    return f"port {finding.port} held by {', '.join(p.label() for p in processes) or 'nobody known'}"


def _port_7_owners(snapshot: Snapshot, config: Config, idx: SocketIndex) -> set[int]:
    return {s.inode for socks in idx.listening.values() for s in socks}


_PORT_7 = Detector(
    kind=Kind.LISTENER_IN_EPHEMERAL_RANGE,
    severity=Severity.INFO,
    alertname="PortwatchTestPort7",
    find=_find_port_7,
    summarize=_port_7_summary,
    owners_needed=_port_7_owners,
)
_TEST_REGISTRY = Registry([_PORT_7])


def test_a_registry_of_a_test_local_detector_drives_detect_owners_and_explain() -> None:
    seven, other = listen("0.0.0.0:40007"), listen("0.0.0.0:40008")
    before = snap([seven, other, tcp("127.0.0.1:40002", "127.0.0.1:40002")], RANGE)
    assert _TEST_REGISTRY.missing == frozenset(Kind) - {Kind.LISTENER_IN_EPHEMERAL_RANGE}
    assert detect.owners_needed(before, Config(), registry=_TEST_REGISTRY) == {seven.inode, other.inode}
    (f,) = detect.detect(before, Config(), registry=_TEST_REGISTRY)
    assert f.key == f"listener_in_ephemeral_range:test:{seven.inode}" and f.severity is Severity.INFO
    assert f.summary == "port 40007 held by nobody known"
    after = replace(before, owners={seven.inode: (5,)}, processes={5: proc(5, "echo")})
    (g,) = detect.explain([f], after, registry=_TEST_REGISTRY)
    assert g.processes == (proc(5, "echo"),) and g.summary == "port 40007 held by echo[5]"
    overridden = Config(severities={Kind.LISTENER_IN_EPHEMERAL_RANGE: Severity.CRITICAL})
    assert [h.severity for h in detect.detect(before, overridden, registry=_TEST_REGISTRY)] == [Severity.CRITICAL]


def test_explaining_a_kind_the_registry_lacks_fails_loudly() -> None:
    (f,) = [f for f in detect.detect(snap([tcp("127.0.0.1:40002", "127.0.0.1:40002")], RANGE), Config())
            if f.kind is Kind.SELF_CONNECT]
    with pytest.raises(KeyError):
        detect.explain([f], snap([], RANGE), registry=_TEST_REGISTRY)


# ----------------------------------------------------------------- the processes a finding involves, per kind


def test_close_wait_finding_involves_its_process_without_reading_the_key() -> None:
    waits = [tcp("127.0.0.1:8000", f"127.0.0.1:{50000 + i}", "CLOSE_WAIT") for i in range(4)]
    s = snap(waits, RANGE, owners={w: 10 for w in waits}, processes=[proc(10, "leaky")])
    (f,) = detect.detect(s, Config(thresholds=Thresholds(close_wait=3)))
    renamed = replace(f, key="close_wait_buildup:renamed")
    later = replace(s, processes={10: proc(10, "leaky-v2")})
    (g,) = detect.explain([renamed], later)
    assert g.processes == (proc(10, "leaky-v2"),) and "leaky-v2[10]" in g.summary
    (gone,) = detect.explain([renamed], replace(s, processes={}))
    assert gone.processes == (ProcessInfo(pid=10),)


def test_range_finding_involves_no_process_and_is_left_as_found() -> None:
    (f,) = [f for f in detect.detect(snap([], (32768, 60998)), Config()) if f.kind is Kind.RANGE_MISCONFIGURED]
    assert detect.explain([f], snap([], (32768, 60998))) == [f]
    assert f.processes == () and f.summary == f.details["message"]


# ----------------------------------------------------------------- the direction of imports inside detect

DETECT_DIR = Path(detect.__file__).parent
KIND_MODULES = {f"portwatch.detect.{kind.value}" for kind in Kind}
#: What each layer of portwatch.detect may import from the package: below it only.
ALLOWED_INSIDE = {
    "portwatch.detect.base": set(),
    **{m: {"portwatch.detect.base"} for m in KIND_MODULES},
    "portwatch.detect.registry": {"portwatch.detect.base"} | KIND_MODULES,
    "portwatch.detect.pipeline": {"portwatch.detect.base", "portwatch.detect.registry",
                                  "portwatch.detect.ephemeral_exhaustion"},
    "portwatch.detect.transient": {"portwatch.detect.base", "portwatch.detect.self_connect",
                                   "portwatch.detect.loop_pair"},
}


def imported_modules(path: Path) -> set[str]:
    """The absolute module names ``path`` imports (``from a.b import c`` counts as ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(ALLOWED_INSIDE))
def test_detect_modules_import_only_the_layers_below_them(module: str) -> None:
    imported = imported_modules(DETECT_DIR / f"{module.rsplit('.', 1)[1]}.py")
    inside = {m for m in imported if m == "portwatch.detect" or m.startswith("portwatch.detect.")}
    assert inside <= ALLOWED_INSIDE[module]
    outside = {m.split(".")[0] if not m.startswith("portwatch.") else ".".join(m.split(".")[:2])
               for m in imported - inside}
    assert outside <= {"__future__", "collections", "dataclasses", "heapq", "typing",
                       "portwatch.model", "portwatch.config"}


def test_every_module_of_detect_has_a_layer() -> None:
    on_disk = {f"portwatch.detect.{p.stem}" for p in DETECT_DIR.glob("*.py") if p.stem != "__init__"}
    assert on_disk == set(ALLOWED_INSIDE)
