"""Rendering: the terminal report and the JSON document."""

from __future__ import annotations

import json

from portwatch import detect
from portwatch.config import Config
from portwatch.model import ProcessInfo, Snapshot
from portwatch.output.report import render_text, to_json_document
from portwatch.output.reserve import reserve_snippet
from portwatch.model import ScanResult
from tests.builders import listen, snap, tcp


def result(snapshot: Snapshot) -> ScanResult:
    findings = detect.detect(snapshot, Config())
    return ScanResult(snapshot, tuple(findings), (), detect.destination_usage(snapshot), 0.012)


def test_control_characters_from_process_names_never_reach_the_terminal() -> None:
    s_ = tcp("127.0.0.1:40002", "127.0.0.1:40002")
    evil = ProcessInfo(pid=9, name="x\x1b]0;owned\x07", cmdline=("/bin/x", "\x1b[2J"), user="eve")
    text = render_text(result(snap([s_], owners={s_: 9}, processes=[evil])), "host")
    assert "\x1b" not in text and "\x07" not in text
    assert "x\\x1b]0;owned\\x07[9]" in text and "\\x1b[2J" in text


def test_json_document_has_the_schema_1_shape() -> None:
    s_ = tcp("127.0.0.1:40002", "127.0.0.1:40002")
    doc = to_json_document(result(snap([s_], reserved=(40100, 40101, 80))), "host")
    json.dumps(doc)
    assert doc["schema"] == 1 and doc["host"] == "host"
    assert doc["kernel"] == {"ip_local_port_range": [32768, 60999], "ip_local_reserved_ports": "80,40100-40101",
                             "reserved_ports_in_range": 2, "usable_ephemeral_ports": 28230,
                             "ip_unprivileged_port_start": 1024}
    assert doc["sockets"] == {"total": 1, "by_protocol_state": {"tcp": {"ESTABLISHED": 1}}}
    assert doc["counts"] == {"info": 0, "warning": 0, "critical": 1, "ignored": 0}
    (f,) = doc["findings"]
    assert f["kind"] == "self_connect" and f["sockets"][0]["local"] == {"ip": "127.0.0.1", "port": 40002}


def test_clean_report_says_so() -> None:
    text = render_text(result(snap([])), "host")
    assert "No problems found." in text and "findings               0 critical, 0 warning, 0 info" in text


def test_reserve_snippet_adds_in_range_listeners_to_what_is_reserved() -> None:
    inside = listen("0.0.0.0:40005")
    owner = ProcessInfo(pid=7, name="app")
    text = reserve_snippet(result(snap([inside, listen("0.0.0.0:22")], reserved=(80,), owners={inside: 7},
                                       processes=[owner])), "host")
    lines = text.splitlines()
    assert lines[0] == "# /etc/sysctl.d/90-portwatch.conf"
    assert "on host." in lines[1]
    assert "#   40005: tcp listener 0.0.0.0:40005 (app[7])" in lines
    assert lines[-1] == "net.ipv4.ip_local_reserved_ports = 80,40005"


def test_reserve_snippet_without_in_range_listeners_adds_nothing() -> None:
    text = reserve_snippet(result(snap([listen("0.0.0.0:22")])), "host")
    assert "# No listener or declared service is inside the range: nothing to add." in text
    assert "net.ipv4.ip_local_reserved_ports" not in text
