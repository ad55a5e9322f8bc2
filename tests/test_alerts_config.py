"""The `alerts` configuration section: every error with its path, defaults, round trips."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from portwatch.config import (
    DEFAULT_ALERT_RULES,
    AlertmanagerSinkConfig,
    AlertRule,
    AlertsConfig,
    Config,
    ConfigError,
    ExecSinkConfig,
    JournalSinkConfig,
    WebhookSinkConfig,
    config_to_dict,
    load_config,
    load_yaml,
    parse_config,
)
from portwatch.alerts.sinks import all_sinks
from portwatch.model import Kind, PortRange, Severity


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(load_yaml(textwrap.dedent(text)))
    return info.value.errors


def alerts(text: str) -> AlertsConfig:
    return parse_config(load_yaml(textwrap.dedent(text))).alerts


BAD = [
    pytest.param("""
        alerts:
          sinks:
            paging: {type: webhook, url: "http://x/"}
          rules:
            - {name: a, sinks: [pagng, journal]}
            - {name: b, sinks: [nowhere]}
        """,
        ["alerts.rules[0].sinks[0]: unknown sink 'pagng' (did you mean 'paging'?); defined sinks: journal, paging",
         "alerts.rules[1].sinks[0]: unknown sink 'nowhere'; defined sinks: journal, paging"],
        id="unknown-sinks"),
    pytest.param("""
        alerts:
          sinks:
            paging: {type: webhook, url: 42}
          rules:
            - {name: a, sinks: [pagng], for: soon}
        """,
        ["alerts.sinks.paging.url: must be an http:// or https:// URL, got 42",
         "alerts.rules[0].for: must be a number of seconds or a duration such as '15s', '1m30s' or '500ms',"
         " got 'soon'",
         "alerts.rules[0].sinks[0]: unknown sink 'pagng' (did you mean 'paging'?); defined sinks: journal, paging"],
        id="unknown-sink-reported-with-other-errors"),
    pytest.param("""
        alerts:
          rules:
            - {name: a, sinks: [journal]}
            - {name: a, sinks: [journal, journal]}
            - {sinks: [journal]}
            - {name: "b c", sinks: journal}
            - {name: d}
        """,
        ["alerts.rules[1].sinks[1]: sink 'journal' is listed twice",
         "alerts.rules[2]: missing required key 'name'",
         "alerts.rules[3].name: rule names are letters, digits, '_' and '-', got 'b c'",
         "alerts.rules[3].sinks: must be a list, got 'journal'",
         "alerts.rules[4]: missing required key 'sinks'"],
        id="rule-shape"),
    pytest.param("""
        alerts:
          rules:
            - {name: a, sinks: [journal]}
            - {name: a, sinks: [journal]}
        """,
        ["alerts.rules[1].name: duplicate rule name 'a' (first at [0])"],
        id="duplicate-rule-names"),
    pytest.param("""
        alerts:
          rules:
            - name: a
              sinks: [journal]
              kind: [self_conect]
              min_severity: severe
              port: "9-1"
              severity: 2
              repeat_interval: -1
              send_resolved: "yes"
              continue: 1
              sink: [journal]
        """,
        ["alerts.rules[0]: unknown key 'sink' (did you mean 'sinks'?)",
         "alerts.rules[0].kind: unknown kind 'self_conect' (did you mean 'self_connect'?); must be one of "
         "self_connect, loop_pair, listener_in_ephemeral_range, port_taken, service_port_at_risk, "
         "ephemeral_exhaustion, close_wait_buildup, range_misconfigured, connect_failed, bind_failed",
         "alerts.rules[0].min_severity: must be one of info, warning, critical, got 'severe'",
         "alerts.rules[0].port: the range's low end is above its high end, got '9-1'",
         "alerts.rules[0].severity: must be one of info, warning, critical, got 2",
         "alerts.rules[0].repeat_interval: must be at least 0s, got -1",
         "alerts.rules[0].send_resolved: must be true or false, got 'yes'",
         "alerts.rules[0].continue: must be true or false, got 1"],
        id="rule-values"),
    pytest.param("""
        alerts:
          sinks:
            a: {url: "http://x/"}
            b: {type: pager}
            c: {type: webhok, url: "http://x/"}
            d: null
            "e f": {type: journal}
        """,
        ["alerts.sinks.a: missing required key 'type' (one of journal, webhook, alertmanager, exec)",
         "alerts.sinks.b.type: unknown sink type 'pager'; must be one of journal, webhook, alertmanager, exec",
         "alerts.sinks.c.type: unknown sink type 'webhok' (did you mean 'webhook'?); must be one of journal,"
         " webhook, alertmanager, exec",
         "alerts.sinks.d: must be a mapping with a 'type' (journal, webhook, alertmanager, exec), got null",
         "alerts.sinks: sink names are letters, digits, '_' and '-', got 'e f'"],
        id="sink-types"),
    pytest.param("""
        alerts:
          sinks:
            w:
              type: webhook
              url: "ftp://user:pw@host/x"
              urls: ["http://a/"]
              timeout: 10ms
              headers: {Content-Type: text/plain, "bad header": x, X-Ok: "a\\nb", X-Num: 5}
              tls_verify: "false"
              tls_ca_file: relative.pem
              queue_size: 0
              retry_initial_delay: 1m
              retry_max_delay: 1s
        """,
        ["alerts.sinks.w: unknown key 'urls' (did you mean 'url'?)",
         "alerts.sinks.w.url: must be an http:// or https:// URL, got 'ftp://***@host/x'",
         "alerts.sinks.w.timeout: must be at least 0.1s, got '10ms'",
         "alerts.sinks.w.headers: header 'Content-Type' is set by portwatch and cannot be configured",
         "alerts.sinks.w.headers: header names are HTTP tokens (letters, digits, '-', ...), got 'bad header'",
         "alerts.sinks.w.headers.X-Ok: must not contain line breaks or NUL (the value is not shown)",
         "alerts.sinks.w.headers.X-Num: must be a string (the value is not shown: it may be a secret)",
         "alerts.sinks.w.tls_verify: must be true or false, got 'false'",
         "alerts.sinks.w.tls_ca_file: must be an absolute path (starting with /), got 'relative.pem'",
         "alerts.sinks.w.queue_size: must be 1..1000000, got 0"],
        id="webhook-keys"),
    pytest.param("""
        alerts:
          sinks:
            w: {type: webhook, url: "http://x/", retry_initial_delay: 1m, retry_max_delay: 1s}
        """,
        ["alerts.sinks.w.retry_max_delay: must be >= retry_initial_delay (60s), got 1s"],
        id="retry-delays"),
    pytest.param("""
        alerts:
          sinks:
            am:
              type: alertmanager
              urls: []
              resend_interval: 100ms
              labels: {alertname: x, __meta: y, instance: ok, team: 5}
            am2: {type: alertmanager, urls: ["http://a:9093", "http://a:9093/"]}
            am3: {type: alertmanager}
        """,
        ["alerts.sinks.am.resend_interval: must be at least 1s, got '100ms'",
         "alerts.sinks.am.labels: label 'alertname' is set by portwatch (reserved: alertname, key, kind, port,"
         " rule, severity, transient)",
         "alerts.sinks.am.labels: label names match [a-zA-Z_][a-zA-Z0-9_]* and do not start with '__', got '__meta'",
         "alerts.sinks.am.labels.team: must be a string, got 5",
         "alerts.sinks.am2.urls[1]: listed twice",
         "alerts.sinks.am3: missing required key 'urls'"],
        id="alertmanager-keys"),
    pytest.param("""
        alerts:
          sinks:
            x: {type: exec, command: [run-me]}
            y: {type: exec, command: /bin/true}
            u: {type: exec, command: [/bin/true], url: "http://x/"}
        """,
        ["alerts.sinks.x.command: the program must be an absolute path (no shell, no PATH lookup), got 'run-me'",
         "alerts.sinks.y.command: must be a non-empty list of strings (program and arguments; no shell),"
         " got '/bin/true'",
         "alerts.sinks.u: unknown key 'url'"],
        id="exec-keys"),
    pytest.param("alerts: [1]\n", ["alerts: this section must be a mapping of keys, got a list"], id="not-a-mapping"),
]


@pytest.mark.parametrize("text, expected", BAD)
def test_bad_alerts_config(text: str, expected: list[str]) -> None:
    assert errors_of(text) == expected


def test_header_values_never_appear_in_errors() -> None:
    errors = errors_of("""
        alerts:
          sinks:
            w: {type: webhook, url: "http://x/", headers: {Authorization: "Bearer hunter2\\n"}}
        """)
    assert errors and not any("hunter2" in e for e in errors)


def test_token_file_and_authorization_header_exclude_each_other(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    assert errors_of(f"""
        alerts:
          sinks:
            w: {{type: webhook, url: "http://x/", bearer_token_file: {token}, headers: {{authorization: x}}}}
        """) == ["alerts.sinks.w.headers: sets Authorization, and so does bearer_token_file: use one of them"]


def load_errors_of(tmp_path: Path, text: str) -> list[str]:
    """The errors load_config (with its preflight) reports for the file holding ``text``."""
    path = tmp_path / "portwatch.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.errors


def test_preflight_names_a_missing_token_file(tmp_path: Path) -> None:
    text = """
        alerts:
          sinks:
            w: {type: webhook, url: "http://x/", bearer_token_file: /nonexistent/token}
        """
    assert alerts(text).sinks["w"] == WebhookSinkConfig(url="http://x/", bearer_token_file=Path("/nonexistent/token"))
    assert load_errors_of(tmp_path, text) == [
        "alerts.sinks.w.bearer_token_file: cannot read '/nonexistent/token': no such file"]


def test_preflight_names_exec_programs_that_cannot_run(tmp_path: Path) -> None:
    text = """
        alerts:
          sinks:
            z: {type: exec, command: [/nonexistent/prog]}
            t: {type: exec, command: [/etc/passwd]}
            d: {type: exec, command: [/etc]}
            ok: {type: exec, command: [/bin/true]}
        """
    assert set(alerts(text).sinks) == {"z", "t", "d", "ok"}  # parsing reads no file
    assert load_errors_of(tmp_path, text) == [
        "alerts.sinks.z.command: cannot execute '/nonexistent/prog': no such file",
        "alerts.sinks.t.command: cannot execute '/etc/passwd': not executable by this user",
        "alerts.sinks.d.command: cannot execute '/etc': not a regular file",
    ]


def test_without_alerts_section_warnings_go_to_the_builtin_journal_sink() -> None:
    config = Config()
    assert config.alerts.rules == DEFAULT_ALERT_RULES
    assert DEFAULT_ALERT_RULES == (AlertRule("default", ("journal",), min_severity=Severity.WARNING),)
    assert config.alerts.sinks == {} and all_sinks(config.alerts) == {"journal": JournalSinkConfig()}
    assert alerts("alerts:\n") == AlertsConfig()
    assert alerts("alerts:\n  rules:\n") == AlertsConfig()
    assert alerts("alerts:\n  rules: []\n").rules == ()  # no rules: nothing alerts


def test_every_alerts_key_builds_and_round_trips(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    a = alerts(f"""
        alerts:
          sinks:
            journal: {{type: journal, syslog_identifier: pw}}
            hook:
              type: webhook
              url: https://hooks.example.com/x
              timeout: 3s
              headers: {{X-Team: net}}
              bearer_token_file: {token}
              tls_verify: false
              queue_size: 10
              retry_initial_delay: 500ms
              retry_max_delay: 1m
            am: {{type: alertmanager, urls: ["http://am1:9093", "http://am2:9093/prefix"], labels: {{team: net}}}}
            run: {{type: exec, command: [/bin/true, --flag]}}
          rules:
            - name: quiet
              kind: range_misconfigured
              sinks: []
            - name: page
              kind: [self_connect, port_taken]
              min_severity: warning
              port: "40000-40100"
              address: "::ffff:127.0.0.1"
              process: client
              unit: client.service
              severity: critical
              for: 1m
              repeat_interval: 0
              send_resolved: false
              continue: true
              sinks: [hook, am, run, journal]
        """)
    assert a.sinks == {
        "journal": JournalSinkConfig(syslog_identifier="pw"),
        "hook": WebhookSinkConfig(url="https://hooks.example.com/x", timeout=3.0, headers={"X-Team": "net"},
                                  bearer_token_file=token, tls_verify=False, queue_size=10,
                                  retry_initial_delay=0.5, retry_max_delay=60.0),
        "am": AlertmanagerSinkConfig(urls=("http://am1:9093", "http://am2:9093/prefix"), labels={"team": "net"}),
        "run": ExecSinkConfig(command=("/bin/true", "--flag")),
    }
    assert a.rules == (
        AlertRule("quiet", (), kinds=(Kind.RANGE_MISCONFIGURED,)),
        AlertRule("page", ("hook", "am", "run", "journal"), kinds=(Kind.SELF_CONNECT, Kind.PORT_TAKEN),
                  min_severity=Severity.WARNING, ports=PortRange(40000, 40100), address="127.0.0.1",
                  process="client", unit="client.service", severity=Severity.CRITICAL, for_=60.0,
                  repeat_interval=0.0, send_resolved=False, continue_=True),
    )
    config = Config(alerts=a)
    data = config_to_dict(config)
    assert parse_config(data) == config
    assert parse_config(json.loads(json.dumps(data))) == config
    assert parse_config(load_yaml(yaml.safe_dump(data))) == config
    assert data["alerts"]["rules"][0] == {"name": "quiet", "kind": "range_misconfigured", "for": 0.0,  # type: ignore[index]
                                          "repeat_interval": 14400.0, "send_resolved": True, "continue": False,
                                          "sinks": []}
