"""Tests for portwatch.config: the schema, every error with its path, loading, matching."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator, TypedDict

import bcrypt
import pytest
import yaml

from portwatch.config import (
    BCRYPT_HINT,
    Config,
    ConfigError,
    IgnoreRule,
    MetricsConfig,
    Service,
    Thresholds,
    WebConfig,
    config_to_dict,
    ignore_matches,
    load_config,
    load_yaml,
    parse_config,
    parse_duration,
    parse_listen_address,
    schema_keys,
)
from portwatch.model import Finding, Kind, PortRange, ProcessInfo, Protocol, Severity

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "portwatch.yaml"
DOCS = ROOT / "docs" / "configuration.md"
PORTWATCH = ROOT / ".venv" / "bin" / "portwatch"

#: A real bcrypt hash (of "correct horse battery staple"), as a config holds it.
HASH = "$2b$12$5x1f/KmM9RKBOliMXM7yd.9694DXqgYirWGNsMz4bHPFMANb77Gci"

KINDS = ", ".join(k.value for k in Kind)


def errors_of(text: str) -> list[str]:
    """The error list parse_config reports for YAML ``text`` (fails the test if it is valid)."""
    with pytest.raises(ConfigError) as info:
        parse_config(load_yaml(textwrap.dedent(text)))
    return info.value.errors


def parse(text: str) -> Config:
    """The Config for YAML ``text``."""
    return parse_config(load_yaml(textwrap.dedent(text)))


# --------------------------------------------------------------------------
# Bad configurations: the exact list of errors

BAD = [
    pytest.param(
        "intervl: 5\n",
        ["unknown key 'intervl' (did you mean 'interval'?)"],
        id="top-level-typo",
    ),
    pytest.param("colour: red\n", ["unknown key 'colour'"], id="unknown-key-no-suggestion"),
    pytest.param("interval: 0.5\n", ["interval: must be at least 1s, got 0.5"], id="interval-small"),
    pytest.param("interval: 500ms\n", ["interval: must be at least 1s, got '500ms'"], id="interval-ms"),
    pytest.param(
        "interval: soon\n",
        ["interval: must be a number of seconds or a duration such as '15s', '1m30s' or '500ms',"
         " got 'soon'"],
        id="interval-word",
    ),
    pytest.param(
        "interval: true\n",
        ["interval: must be a number of seconds or a duration such as '15s', '1m30s' or '500ms',"
         " got true"],
        id="interval-bool",
    ),
    pytest.param(
        "interval: .inf\n",
        ["interval: must be a number of seconds or a duration such as '15s', '1m30s' or '500ms',"
         " got inf"],
        id="interval-inf",
    ),
    pytest.param(
        "source: netlnk\n",
        ["source: must be one of auto, netlink, psutil, got 'netlnk' (did you mean 'netlink'?)"],
        id="source-typo",
    ),
    pytest.param(
        "state_directory: var/lib/portwatch\n",
        ["state_directory: must be an absolute path (starting with /), got 'var/lib/portwatch'"],
        id="state-dir-relative",
    ),
    pytest.param(
        "state_directory: 5\n",
        ["state_directory: must be an absolute path, got 5"],
        id="state-dir-int",
    ),
    pytest.param("services: {name: a}\n", ["services: must be a list, got a mapping"], id="services-map"),
    pytest.param(
        """\
        services:
          - {name: a, port: 80}
          - {name: b, port: 81}
          - {name: c, port: 70000}
        """,
        ["services[2].port: must be 1..65535, got 70000"],
        id="service-port-range",
    ),
    pytest.param(
        """\
        services:
          - {name: a, port: true}
          - {name: b, port: 80.0}
          - {name: c, port: "80"}
          - {name: d, port: 0}
        """,
        [
            "services[0].port: must be an integer, got true",
            "services[1].port: must be an integer, got 80.0",
            "services[2].port: must be an integer, got '80'",
            "services[3].port: must be 1..65535, got 0",
        ],
        id="service-port-types",
    ),
    pytest.param(
        """\
        services:
          - port: 80
          - name: web
          - name: ""
            port: 81
          - {name: x, port: 82, protocol: sctp, address: 10.0.0.300}
          - web
        """,
        [
            "services[0]: missing required key 'name'",
            "services[1]: missing required key 'port'",
            "services[2].name: must not be empty",
            "services[3].protocol: must be one of tcp, udp, got 'sctp'",
            "services[3].address: must be an IP address, got '10.0.0.300'",
            "services[4]: this section must be a mapping of keys, got 'web'",
        ],
        id="service-fields",
    ),
    pytest.param(
        """\
        services:
          - {name: dns, port: 53, protocol: udp}
          - {name: dns, port: 53}
          - {name: resolver, port: 53, protocol: udp}
          - {name: pg, port: 5432, address: 127.0.0.1}
          - {name: pg2, port: 5432, address: "::ffff:127.0.0.1"}
          - {name: pg3, port: 5432}
        """,
        [
            "services[2]: same port, protocol and address as services[0] (53/udp, any address)",
            "services[4]: same port, protocol and address as services[3] (5432/tcp, 127.0.0.1)",
        ],
        id="service-duplicates",
    ),
    pytest.param(
        """\
        ignore:
          - {proces: sshd}
          - {}
          - {kind: self_conect}
          - {port: "9000-8000"}
          - {port: 0}
          - {port: "80-90-100"}
          - {port: 70000}
          - {address: localhost}
          - {process: ""}
          - {unit: 5}
          -
        """,
        [
            "ignore[0]: unknown key 'proces' (did you mean 'process'?)",
            "ignore[1]: empty rule would ignore every finding",
            f"ignore[2].kind: must be one of {KINDS}, got 'self_conect' (did you mean 'self_connect'?)",
            "ignore[3].port: the range's low end is above its high end, got '9000-8000'",
            "ignore[4].port: must be a port 1..65535 or a range such as '40000-40100', got 0",
            "ignore[5].port: must be a port 1..65535 or a range such as '40000-40100', got '80-90-100'",
            "ignore[6].port: must be a port 1..65535 or a range such as '40000-40100', got 70000",
            "ignore[7].address: must be an IP address, got 'localhost'",
            "ignore[8].process: must not be empty",
            "ignore[9].unit: must be a string, got 5",
            "ignore[10]: empty rule would ignore every finding",
        ],
        id="ignore-rules",
    ),
    pytest.param(
        "ignore:\n  - {ports: 80}\n",
        ["ignore[0]: unknown key 'ports' (did you mean 'port'?)"],
        id="ignore-ports-spelling",
    ),
    pytest.param(
        """\
        thresholds:
          exhaustion_warning: high
          exhaustion_critical: 1.5
          close_wait: 0
          min_range_size: 10.5
        """,
        [
            "thresholds.exhaustion_warning: must be a number, got 'high'",
            "thresholds.exhaustion_critical: must be > 0 and <= 1, got 1.5",
            "thresholds.close_wait: must be >= 1, got 0",
            "thresholds.min_range_size: must be an integer, got 10.5",
        ],
        id="thresholds-fields",
    ),
    pytest.param(
        "thresholds: {exhaustion_warning: 0, close_wait: false}\n",
        [
            "thresholds.exhaustion_warning: must be > 0 and <= 1, got 0",
            "thresholds.close_wait: must be an integer, got false",
        ],
        id="thresholds-zero-and-bool",
    ),
    pytest.param(
        "thresholds: {exhaustion_warning: 0.9, exhaustion_critical: 0.85}\n",
        ["thresholds.exhaustion_critical: must be >= exhaustion_warning (0.9), got 0.85"],
        id="thresholds-cross",
    ),
    pytest.param(
        "thresholds: {exhaustion_critical: 0.5}\n",
        ["thresholds.exhaustion_critical: must be >= exhaustion_warning (0.8, the default), got 0.5"],
        id="thresholds-cross-default",
    ),
    pytest.param(
        "thresholds: {exhaustion_warnng: 0.5}\n",
        ["thresholds: unknown key 'exhaustion_warnng' (did you mean 'exhaustion_warning'?)"],
        id="thresholds-typo",
    ),
    pytest.param("thresholds: 5\n", ["thresholds: this section must be a mapping of keys, got 5"],
                 id="thresholds-scalar"),
    pytest.param(
        "severities: {self_conect: info, loop_pair: high, port_taken: }\n",
        [
            f"severities: unknown kind 'self_conect' (did you mean 'self_connect'?); must be one of {KINDS}",
            "severities.loop_pair: must be one of info, warning, critical, got 'high'",
            "severities.port_taken: must be one of info, warning, critical, got null",
        ],
        id="severities",
    ),
    pytest.param(
        """\
        web:
          listen_address: "::1:9731"
          basic_auth_users: {alice: secret, "a:b": %s, bob: "$2b$12$short"}
        """ % HASH,
        [
            "web.listen_address: an IPv6 address must be in brackets, as in '[::1]:9731', got '::1:9731'",
            "web.basic_auth_users.alice: must be a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters),"
            f" not a plain-text password; make one with: {BCRYPT_HINT}",
            "web.basic_auth_users: user names must be non-empty strings without ':', got 'a:b'",
            "web.basic_auth_users.bob: must be a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters),"
            f" not a plain-text password; make one with: {BCRYPT_HINT}",
        ],
        id="web-fields",
    ),
    pytest.param(
        "web: {listen_address: 9731}\n",
        ["web.listen_address: must be a string 'host:port', got 9731"],
        id="listen-int",
    ),
    pytest.param(
        "web: {listen_address: [a, b]}\n",
        ["web.listen_address: must be a string 'host:port', got a list"
         " (quote a value that starts with '[', as in \"[::1]:9731\")"],
        id="listen-list",
    ),
    pytest.param(
        "web: {tls_cert_file: relative.pem}\n",
        ["web.tls_cert_file: must be an absolute path (starting with /), got 'relative.pem'",
         "web.tls_key_file: required when tls_cert_file is set"],
        id="tls-relative-and-pair",
    ),
    pytest.param(
        "web: {tls_client_ca_file: /nonexistent/ca.crt}\n",
        [
            "web.tls_client_ca_file: needs tls_cert_file and tls_key_file"
            " (client certificates are only checked over TLS)",
        ],
        id="tls-client-ca-alone",
    ),
    pytest.param(
        "metrics: {top_destinations: 5000, top_destination: 1}\n",
        [
            "metrics: unknown key 'top_destination' (did you mean 'top_destinations'?)",
            "metrics.top_destinations: must be 0..1000, got 5000",
        ],
        id="metrics",
    ),
    pytest.param("- 1\n", ["the top level must be a mapping of keys, got a list"], id="top-list"),
    pytest.param("just text\n", ["the top level must be a mapping of keys, got 'just text'"],
                 id="top-scalar"),
    pytest.param(
        """\
        interval: 0
        sourc: auto
        services:
          - {name: a, port: 70000}
        ignore:
          - {}
        thresholds: {exhaustion_warning: high}
        web: {listen_address: "localhost:0"}
        metrics: {top_destinations: -1}
        """,
        [
            "unknown key 'sourc' (did you mean 'source'?)",
            "interval: must be at least 1s, got 0",
            "services[0].port: must be 1..65535, got 70000",
            "ignore[0]: empty rule would ignore every finding",
            "thresholds.exhaustion_warning: must be a number, got 'high'",
            "web.listen_address: the port must be 1..65535, got '0' in 'localhost:0'",
            "metrics.top_destinations: must be 0..1000, got -1",
        ],
        id="many-errors-at-once",
    ),
]


@pytest.mark.parametrize("text, expected", BAD)
def test_bad_config_reports_every_error(text: str, expected: list[str]) -> None:
    assert errors_of(text) == expected


def test_plain_text_password_is_not_repeated_in_the_error() -> None:
    errors = errors_of("web: {basic_auth_users: {alice: hunter2-very-secret}}\n")
    assert len(errors) == 1
    assert "hunter2" not in errors[0]
    assert "bcrypt.hashpw" in errors[0]


# --------------------------------------------------------------------------
# Good configurations: the expected dataclasses

GOOD = [
    pytest.param("", Config(), id="empty"),
    pytest.param("# only a comment\n", Config(), id="comment-only"),
    pytest.param("{}\n", Config(), id="empty-mapping"),
    pytest.param(
        "interval:\nservices:\nignore:\nthresholds:\nseverities:\nweb:\nmetrics:\n",
        Config(),
        id="null-means-default",
    ),
    pytest.param("interval: 1m30s\n", Config(interval=90.0), id="interval-duration"),
    pytest.param("interval: 2.5\n", Config(interval=2.5), id="interval-float"),
    pytest.param("interval: 1\n", Config(interval=1.0), id="interval-minimum"),
    pytest.param("source: psutil\n", Config(source="psutil"), id="source"),
    pytest.param("state_directory: /srv/pw\n", Config(state_directory=Path("/srv/pw")), id="state-dir"),
    pytest.param(
        """\
        services:
          - {name: dns, port: 53, protocol: udp}
          - {name: dns, port: 53}
          - {name: pg, port: 5432, address: "::ffff:127.0.0.1"}
          - {name: pg6, port: 5432, address: "2001:DB8:0:0::1"}
          - {name: any-pg, port: 5432}
        """,
        Config(
            services=(
                Service("dns", 53, Protocol.UDP),
                Service("dns", 53, Protocol.TCP),
                Service("pg", 5432, Protocol.TCP, "127.0.0.1"),
                Service("pg6", 5432, Protocol.TCP, "2001:db8::1"),
                Service("any-pg", 5432),
            )
        ),
        id="services",
    ),
    pytest.param(
        """\
        ignore:
          - {kind: self_connect}
          - {port: 8080}
          - {port: "40000-40100"}
          - {port: " 5000 - 5001 "}
          - {port: "9000"}
          - {address: "::FFFF:10.0.0.1", process: rpc.statd, unit: nfs.service}
        """,
        Config(
            ignore=(
                IgnoreRule(kind=Kind.SELF_CONNECT),
                IgnoreRule(ports=PortRange(8080, 8080)),
                IgnoreRule(ports=PortRange(40000, 40100)),
                IgnoreRule(ports=PortRange(5000, 5001)),
                IgnoreRule(ports=PortRange(9000, 9000)),
                IgnoreRule(address="10.0.0.1", process="rpc.statd", unit="nfs.service"),
            )
        ),
        id="ignore",
    ),
    pytest.param(
        "thresholds: {exhaustion_warning: 1, exhaustion_critical: 1, close_wait: 1, min_range_size: 1}\n",
        Config(thresholds=Thresholds(1.0, 1.0, 1, 1)),
        id="thresholds-edges",
    ),
    pytest.param(
        "thresholds: {exhaustion_warning: 0.5}\n",
        Config(thresholds=Thresholds(exhaustion_warning=0.5)),
        id="thresholds-partial",
    ),
    pytest.param(
        "severities: {loop_pair: critical, range_misconfigured: warning}\n",
        Config(severities={Kind.LOOP_PAIR: Severity.CRITICAL, Kind.RANGE_MISCONFIGURED: Severity.WARNING}),
        id="severities",
    ),
    pytest.param(
        "web: {listen_address: '[::1]:9100', basic_auth_users: {prometheus: '%s'}}\n" % HASH,
        Config(web=WebConfig(listen_address="[::1]:9100", basic_auth_users={"prometheus": HASH})),
        id="web",
    ),
    pytest.param(
        "metrics: {top_destinations: 0}\n",
        Config(metrics=MetricsConfig(top_destinations=0)),
        id="metrics-zero",
    ),
]


@pytest.mark.parametrize("text, expected", GOOD)
def test_good_config_builds_the_expected_dataclasses(text: str, expected: Config) -> None:
    assert parse(text) == expected


def test_parse_config_none_is_defaults() -> None:
    assert parse_config(None) == Config()


def test_real_bcrypt_hashes_of_every_prefix_are_accepted() -> None:
    made = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    users = {"b": made, "a": "$2a$" + made[4:], "y": "$2y$" + made[4:]}
    config = parse_config({"web": {"basic_auth_users": users}})
    assert dict(config.web.basic_auth_users) == users
    assert bcrypt.checkpw(b"secret", config.web.basic_auth_users["b"].encode())


# --------------------------------------------------------------------------
# Small syntaxes

DURATIONS = [
    ("15s", 15.0),
    ("1m", 60.0),
    ("1m30s", 90.0),
    ("500ms", 0.5),
    ("1s500ms", 1.5),
    ("2h", 7200.0),
    ("1d", 86400.0),
    ("1w", 604800.0),
    ("1y", 365 * 86400.0),
    ("1h2m3s", 3723.0),
    ("0s", 0.0),
]


@pytest.mark.parametrize("text, seconds", DURATIONS)
def test_duration_strings_give_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "15", "1.5m", "30s1m", "1m1m", "5 s", "-1s", "1M", "s", "1x"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


LISTEN_OK = [
    ("127.0.0.1:9731", ("127.0.0.1", 9731)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("[::]:65535", ("::", 65535)),
    ("[2001:db8::1]:9731", ("2001:db8::1", 9731)),
    ("localhost:9731", ("localhost", 9731)),
    ("metrics.example.org:443", ("metrics.example.org", 443)),
    (":9731", ("", 9731)),  # every address, as Go exporters' ":9100"
]


@pytest.mark.parametrize("text, expected", LISTEN_OK)
def test_listen_address_splits_into_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected
    assert WebConfig(listen_address=text).host == expected[0]
    assert WebConfig(listen_address=text).port == expected[1]


LISTEN_BAD = [
    ("9731", "must be 'host:port' or '[ipv6]:port', got '9731'"),
    (":0", "the port must be 1..65535, got '0' in ':0'"),
    ("::1:9731", "an IPv6 address must be in brackets, as in '[::1]:9731', got '::1:9731'"),
    ("[::1]", "must be 'host:port' or '[ipv6]:port', got '[::1]'"),
    ("[127.0.0.1]:80", "'127.0.0.1' in brackets is not an IPv6 address"),
    ("300.1.1.1:80", "'300.1.1.1' is not an IPv4 address"),
    ("bad_host:80", "'bad_host' is not an IP address or a hostname"),
    ("-x.example:80", "'-x.example' is not an IP address or a hostname"),
    ("localhost:65536", "the port must be 1..65535, got '65536' in 'localhost:65536'"),
    ("localhost:http", "the port must be 1..65535, got 'http' in 'localhost:http'"),
    ("localhost:", "the port must be 1..65535, got '' in 'localhost:'"),
]


@pytest.mark.parametrize("text, message", LISTEN_BAD)
def test_malformed_listen_address_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_listen_address(text)
    assert str(info.value) == message


# --------------------------------------------------------------------------
# Loading files


def test_no_file_gives_the_defaults() -> None:
    assert load_config(None) == Config()


@pytest.mark.parametrize("content", ["", "\n\n", "# nothing here\n", "---\n"])
def test_empty_file_gives_defaults(tmp_path: Path, content: str) -> None:
    path = tmp_path / "portwatch.yaml"
    path.write_text(content)
    assert load_config(path) == Config()


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A fresh directory that the ``nobody`` user may enter (pytest's tmp_path is root's only)."""
    directory = Path(tempfile.mkdtemp(prefix="portwatch-test-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def check_config_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
    """``portwatch check-config path`` run as the unprivileged ``nobody`` user (bounded in time)."""
    # The interpreter and the checkout by their paths as this test sees them (the venv's
    # console script names the path the venv was made at, which nobody may not reach).
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "portwatch", "check-config", str(path)], user="nobody",
                          group="nogroup", capture_output=True, text=True, timeout=60, check=False,
                          cwd=ROOT, env=env)


def load_errors(path: Path) -> ConfigError:
    """The ConfigError load_config raises for ``path``."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def test_missing_file_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    err = load_errors(path)
    assert err.source == str(path)
    assert err.errors == ["cannot read: no such file"]
    assert str(err) == f"{path}: cannot read: no such file"


def test_directory_is_not_read_as_a_config(tmp_path: Path) -> None:
    assert load_errors(tmp_path).errors == ["cannot read: is a directory, not a YAML file"]


def test_permission_denied_for_an_unprivileged_user() -> None:
    # chmod 000 does not stop root: the check runs as nobody, on a real file.
    with shared_dir() as directory:
        path = directory / "portwatch.yaml"
        path.write_text("interval: 15s\n")
        path.chmod(0)
        proc = check_config_as_nobody(path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{path}: cannot read: permission denied"


def test_fifo_as_config_file_is_refused_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    os.mkfifo(path)
    assert load_errors(path).errors == ["cannot read: not a regular file"]


def test_link_to_a_device_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    path.symlink_to("/dev/zero")
    assert load_errors(path).errors == ["cannot read: not a regular file"]


def test_yaml_syntax_error_shows_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    path.write_text("interval: 15s\nsource: auto: netlink\n")
    err = load_errors(path)
    assert err.errors == ["line 2, column 13: invalid YAML: mapping values are not allowed here"]
    assert str(err) == f"{path}: line 2, column 13: invalid YAML: mapping values are not allowed here"


def test_bad_indentation_names_the_enclosing_block(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    path.write_text("interval: 15s\nservices:\n  - name: a\n   port: 80\n")
    assert load_errors(path).errors == [
        "line 4, column 4: invalid YAML: expected <block end>, but found '<block mapping start>'"
        " (while parsing a block collection at line 3)"
    ]


def test_unclosed_flow_sequence_names_where_it_started(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    path.write_text("services: [\ninterval: 5\n")
    [error] = load_errors(path).errors
    assert error == (
        "line 3, column 1: invalid YAML: expected ',' or ']', but got '<stream end>'"
        " (while parsing a flow sequence at line 1)"
    )


def test_unquoted_ipv6_listen_address_is_a_yaml_error(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    path.write_text("web:\n  listen_address: [::1]:9731\n")
    [error] = load_errors(path).errors
    assert error.startswith("line 2, column ")


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    path.write_text("interval: 15s\nsource: auto\ninterval: 30s\nthresholds: {close_wait: 1, close_wait: 2}\n")
    assert load_errors(path).errors == [
        "line 3, column 1: duplicate key 'interval' (first at line 1)",
        "line 4, column 29: duplicate key 'close_wait' (first at line 4)",
    ]


def test_merge_keys_are_not_duplicates() -> None:
    text = "base: &b {name: a, port: 80}\nservices:\n  - <<: *b\n    port: 81\n"
    data = load_yaml(text)
    assert isinstance(data, dict)
    assert data["services"] == [{"name": "a", "port": 81}]


def test_unsafe_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    path.write_text("interval: !!python/object/apply:os.system ['true']\n")
    [error] = load_errors(path).errors
    assert error.startswith("line 1, column 11: invalid YAML: could not determine a constructor")


def test_non_utf8_file_names_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    path.write_bytes(b"interval: 15s\n# caf\xe9\n")
    assert load_errors(path).errors == ["not UTF-8 text: invalid byte at offset 19"]


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    path.write_text("- interval: 15s\n")
    err = load_errors(path)
    assert str(err) == f"{path}: the top level must be a mapping of keys, got a list"


def test_validation_errors_are_prefixed_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    path.write_text("services:\n  - {name: a, port: 70000}\nthresholds: {exhaustion_warning: high}\n")
    err = load_errors(path)
    assert str(err).splitlines() == [
        f"{path}: services[0].port: must be 1..65535, got 70000",
        f"{path}: thresholds.exhaustion_warning: must be a number, got 'high'",
    ]


def test_config_error_without_a_file() -> None:
    err = ConfigError(["a: b", "c: d"])
    assert err.source == "<string>"
    assert str(err) == "<string>: a: b\n<string>: c: d"


# --------------------------------------------------------------------------
# TLS files


def test_existing_tls_files_enable_https(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    for p in (cert, key, ca):
        p.write_text("-----BEGIN-----\n")
    config = parse_config(
        {"web": {"tls_cert_file": str(cert), "tls_key_file": str(key), "tls_client_ca_file": str(ca)}}
    )
    assert config.web == WebConfig(tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=ca)
    assert config.web.tls


def write_config(tmp_path: Path, text: str) -> Path:
    """``text`` written as ``portwatch.yaml`` in ``tmp_path``; returns its path."""
    path = tmp_path / "portwatch.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_tls_files_are_not_read_while_parsing(tmp_path: Path) -> None:
    text = "web: {tls_cert_file: /nonexistent/portwatch.crt, tls_key_file: /nonexistent/portwatch.key}\n"
    expected = WebConfig(tls_cert_file=Path("/nonexistent/portwatch.crt"),
                         tls_key_file=Path("/nonexistent/portwatch.key"))
    assert parse(text).web == expected
    assert load_config(write_config(tmp_path, text), preflight=False).web == expected


def test_preflight_names_every_missing_tls_file(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, "web: {tls_cert_file: /nonexistent/portwatch.crt, tls_key_file: /nonexistent/portwatch.key}\n")
    assert load_errors(path).errors == [
        "web.tls_cert_file: cannot read '/nonexistent/portwatch.crt': no such file",
        "web.tls_key_file: cannot read '/nonexistent/portwatch.key': no such file",
    ]


def test_preflight_names_a_missing_client_ca(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    for p in (cert, key):
        p.write_text("x")
    path = write_config(tmp_path, f"web: {{tls_cert_file: {cert}, tls_key_file: {key},"
                                  " tls_client_ca_file: /nonexistent/ca.crt}\n")
    assert load_errors(path).errors == ["web.tls_client_ca_file: cannot read '/nonexistent/ca.crt': no such file"]


def test_tls_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    path = write_config(tmp_path, f"web: {{tls_cert_file: {tmp_path}, tls_key_file: {key}}}\n")
    assert load_errors(path).errors == [f"web.tls_cert_file: cannot read '{tmp_path}': is a directory"]


def test_tls_file_that_is_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    os.mkfifo(cert)
    key.write_text("x")
    path = write_config(tmp_path, f"web: {{tls_cert_file: {cert}, tls_key_file: {key}}}\n")
    assert load_errors(path).errors == [f"web.tls_cert_file: cannot read '{cert}': not a regular file"]


def test_tls_file_permission_denied_for_an_unprivileged_user() -> None:
    with shared_dir() as directory:
        cert, key = directory / "c.pem", directory / "k.pem"
        for p in (cert, key):
            p.write_text("x")
        key.chmod(0)
        path = directory / "portwatch.yaml"
        path.write_text(f"web: {{tls_cert_file: {cert}, tls_key_file: {key}}}\n")
        proc = check_config_as_nobody(path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"{path}: web.tls_key_file: cannot read '{key}': permission denied"


def test_tls_key_without_certificate_is_an_error(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    assert errors_of(f"web: {{tls_key_file: {key}}}\n") == [
        "web.tls_cert_file: required when tls_key_file is set"
    ]


# --------------------------------------------------------------------------
# ignore_matches

SSHD = ProcessInfo(pid=10, name="sshd", unit="ssh.service")
STATD = ProcessInfo(pid=11, name="rpc.statd", unit="rpc-statd.service")
NAMELESS = ProcessInfo(pid=12)

LISTENER = Finding(
    kind=Kind.LISTENER_IN_EPHEMERAL_RANGE,
    severity=Severity.WARNING,
    key="listener_in_ephemeral_range:tcp:45000",
    summary="listener on 45000",
    port=45000,
    protocol=Protocol.TCP,
    addresses=("0.0.0.0", "::"),
    processes=(SSHD, STATD),
)
RANGE = Finding(
    kind=Kind.RANGE_MISCONFIGURED,
    severity=Severity.INFO,
    key="range_misconfigured:tiny",
    summary="tiny range",
)
ORPHAN = Finding(
    kind=Kind.CLOSE_WAIT_BUILDUP,
    severity=Severity.WARNING,
    key="close_wait_buildup:12",
    summary="pid 12 holds 200 CLOSE_WAIT sockets",
    addresses=("10.0.0.1",),
    processes=(NAMELESS,),
)

class MatchFields(TypedDict, total=False):
    """The fields ignore rules and alert rules both have (matched by ``config.types.finding_matches``)."""

    ports: PortRange
    address: str
    process: str
    unit: str


#: (fields, finding, expected) of the matchers both rule kinds share; tests/test_alerts_rules.py
#: runs them through alert rules.
FIELD_MATCHES: list[tuple[MatchFields, Finding, bool]] = [
    ({"ports": PortRange(45000, 45000)}, LISTENER, True),
    ({"ports": PortRange(44000, 45000)}, LISTENER, True),
    ({"ports": PortRange(45000, 46000)}, LISTENER, True),
    ({"ports": PortRange(45001, 46000)}, LISTENER, False),
    ({"ports": PortRange(1, 65535)}, RANGE, False),  # no port: a port rule never matches
    ({"address": "::"}, LISTENER, True),
    ({"address": "127.0.0.1"}, LISTENER, False),
    ({"address": "10.0.0.1"}, RANGE, False),
    ({"process": "rpc.statd"}, LISTENER, True),
    ({"process": "rpc"}, LISTENER, False),  # exact names only
    ({"process": "sshd"}, ORPHAN, False),  # unknown name never matches
    ({"unit": "ssh.service"}, LISTENER, True),
    ({"unit": "ssh"}, LISTENER, False),
    ({"unit": "ssh.service"}, ORPHAN, False),
]

MATCHES = [
    (IgnoreRule(kind=Kind.LISTENER_IN_EPHEMERAL_RANGE), LISTENER, True),
    (IgnoreRule(kind=Kind.SELF_CONNECT), LISTENER, False),
    *[(IgnoreRule(**fields), finding, expected) for fields, finding, expected in FIELD_MATCHES],
    # every field set must match
    (IgnoreRule(kind=Kind.LISTENER_IN_EPHEMERAL_RANGE, ports=PortRange(45000, 45000),
                address="0.0.0.0", process="sshd", unit="rpc-statd.service"), LISTENER, True),
    (IgnoreRule(kind=Kind.LISTENER_IN_EPHEMERAL_RANGE, ports=PortRange(45000, 45000),
                address="0.0.0.0", process="sshd", unit="nginx.service"), LISTENER, False),
    (IgnoreRule(kind=Kind.CLOSE_WAIT_BUILDUP, address="10.0.0.1"), ORPHAN, True),
    (IgnoreRule(kind=Kind.CLOSE_WAIT_BUILDUP, address="10.0.0.2"), ORPHAN, False),
]


@pytest.mark.parametrize("rule, finding, expected", MATCHES)
def test_ignore_rule_drops_a_finding_only_when_every_field_matches(rule: IgnoreRule, finding: Finding, expected: bool) -> None:
    assert ignore_matches(rule, finding) is expected


def test_ignore_rule_from_yaml_matches_canonical_finding_address() -> None:
    [rule] = parse("ignore:\n  - {address: '::ffff:10.0.0.1'}\n").ignore
    assert ignore_matches(rule, ORPHAN)


# --------------------------------------------------------------------------
# Round trips, the shipped example, the documentation


def test_full_config_round_trips(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    for p in (cert, key, ca):
        p.write_text("x")
    config = Config(
        interval=2.5,
        source="netlink",
        state_directory=Path("/srv/portwatch"),
        services=(Service("dns", 53, Protocol.UDP), Service("pg", 5432, Protocol.TCP, "::1")),
        ignore=(
            IgnoreRule(kind=Kind.PORT_TAKEN, ports=PortRange(80, 80)),
            IgnoreRule(ports=PortRange(40000, 40100), address="10.0.0.1", process="x", unit="y.service"),
        ),
        thresholds=Thresholds(0.5, 0.75, 7, 99),
        severities={Kind.SELF_CONNECT: Severity.INFO},
        web=WebConfig("[::]:9100", cert, key, ca, {"prometheus": HASH}),
        metrics=MetricsConfig(0),
    )
    data = config_to_dict(config)
    assert parse_config(data) == config
    # JSON- and YAML-ready: plain types only, and the text forms parse back too.
    assert parse_config(json.loads(json.dumps(data))) == config
    assert parse_config(load_yaml(yaml.safe_dump(data))) == config
    assert data["ignore"] == [
        {"kind": "port_taken", "port": 80},
        {"port": "40000-40100", "address": "10.0.0.1", "process": "x", "unit": "y.service"},
    ]


def test_defaults_round_trip() -> None:
    data = config_to_dict(Config())
    assert parse_config(data) == Config()
    assert set(data) == {k for k in schema_keys() if "." not in k and "[" not in k}


def test_shipped_example_validates_and_round_trips() -> None:
    config = load_config(EXAMPLE)
    assert config != Config()  # it sets things, not only defaults
    assert config.services and config.ignore and config.severities
    assert parse_config(config_to_dict(config), str(EXAMPLE)) == config


def test_shipped_example_mentions_every_key() -> None:
    text = EXAMPLE.read_text()
    missing = [
        k for k in schema_keys()
        if not re.search(rf"^\s*#?\s*(- )?{re.escape(k.rsplit('.', 1)[-1].split('[')[0])}:",
                         text, re.MULTILINE)
    ]
    assert missing == []


def test_docs_mention_every_key() -> None:
    text = DOCS.read_text()
    missing = [k for k in schema_keys() if f"`{k}`" not in text]
    assert missing == []


def test_docs_yaml_examples_validate() -> None:
    """Every ```yaml block in the docs is a valid configuration (TLS paths removed: no such files here)."""
    text = DOCS.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 5
    for block in blocks:
        data = load_yaml(block)
        assert isinstance(data, dict)
        web = data.get("web")
        if isinstance(web, dict):
            for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
                web.pop(name, None)
        parse_config(data)


def test_schema_keys_walks_nested_lists_and_kinds() -> None:
    keys = schema_keys()
    assert "services[].port" in keys
    assert "ignore[].port" in keys
    assert "thresholds.exhaustion_critical" in keys
    assert "web.basic_auth_users" in keys
    assert {f"severities.{k.value}" for k in Kind} <= set(keys)
    assert len(keys) == len(set(keys))


# --------------------------------------------------------------------------
# Hostile files: a clear error (exit 2), never a traceback


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``portwatch check-config path`` (bounded in time: a FIFO must not hang it)."""
    return subprocess.run([str(PORTWATCH), "check-config", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)


HOSTILE = [
    pytest.param(b"interval: 15s\x7f\n",
                 "line 1, column 14: invalid YAML: control character #x007f is not allowed"
                 " (write it as an escape in a double-quoted string)", id="control-character"),
    pytest.param(b"interval: 1" + b"0" * 400 + b"\n",
                 "interval: must be a number of seconds or a duration such as '15s', '1m30s' or '500ms',"
                 " got an integer of about 401 digits", id="huge-integer-duration"),
    pytest.param(b'interval: "1' + b"0" * 400 + b's"\n',
                 "interval: must be a number of seconds or a duration such as '15s', '1m30s' or '500ms',"
                 " got '1" + "0" * 75 + "...", id="huge-duration-string"),
    pytest.param(b"thresholds: {close_wait: " + b"9" * 5000 + b"}\n",
                 "line 1, column 26: invalid YAML: an integer of 5000 digits is too long (at most 4000)",
                 id="integer-beyond-python-conversion-limit"),
    pytest.param(b"thresholds: {close_wait: 1" + b"0" * 3900 + b"}\n",
                 "thresholds.close_wait: must be 1..9223372036854775807, got an integer of about 3901 digits",
                 id="13000-bit-threshold"),
    pytest.param(b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n",
                 "invalid YAML: the document is nested too deeply", id="deep-nesting"),
    pytest.param(b"interval: !!set {a: null}\n",
                 "interval: must be a number of seconds or a duration such as '15s', '1m30s' or '500ms',"
                 " got a set", id="yaml-set"),
    pytest.param(b"interval: 2024-01-01\n",
                 "interval: must be a number of seconds or a duration such as '15s', '1m30s' or '500ms',"
                 " got '2024-01-01'", id="yaml-timestamp"),
    pytest.param("ignore: [{port: \"٤٠٠٠٠-٤٠١٠٠\"}]\n".encode(),
                 "ignore[0].port: must be a port 1..65535 or a range such as '40000-40100', got '٤٠٠٠٠-٤٠١٠٠'",
                 id="non-ascii-digits-in-a-port-range"),
    pytest.param("interval: \"١٥s\"\n".encode(),
                 "interval: must be a number of seconds or a duration such as '15s', '1m30s' or '500ms',"
                 " got '١٥s'", id="non-ascii-digits-in-a-duration"),
]


@pytest.mark.parametrize("content, error", HOSTILE)
def test_hostile_file_gives_one_clear_error_and_exit_2(tmp_path: Path, content: bytes, error: str) -> None:
    path = tmp_path / "portwatch.yaml"
    path.write_bytes(content)
    assert load_errors(path).errors == [error]
    proc = check_config(path)
    assert proc.returncode == 2
    assert proc.stderr == f"{path}: {error}\n"
    assert "Traceback" not in proc.stderr and "sys.set_int_max_str_digits" not in proc.stderr


def test_check_config_on_a_fifo_exits_2_without_hanging(tmp_path: Path) -> None:
    path = tmp_path / "portwatch.yaml"
    os.mkfifo(path)
    proc = check_config(path)
    assert (proc.returncode, proc.stderr) == (2, f"{path}: cannot read: not a regular file\n")


def test_scan_parses_a_servers_config_whose_tls_files_are_elsewhere(tmp_path: Path) -> None:
    path = write_config(tmp_path, "web: {tls_cert_file: /nonexistent/a.crt, tls_key_file: /nonexistent/a.key}\n")
    assert check_config(path).returncode == 2
    assert load_config(path, preflight=False).web.tls
    scan = subprocess.run([str(PORTWATCH), "scan", "--config", str(path), "--fail-on", "never", "--format", "json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert (scan.returncode, scan.stderr) == (0, "")
    assert json.loads(scan.stdout)["schema"] == 1


def test_twenty_thousand_services_validate_and_a_bad_one_among_them_is_named(tmp_path: Path) -> None:
    # Once 6.5 s, nearly all of it in the pure-Python YAML parser; libyaml parses now (speed is
    # a benchmark's business, not a test's: this checks the large file is read right).
    path = tmp_path / "portwatch.yaml"
    lines = [f"  - {{name: s{i}, port: {1 + i % 65535}, protocol: {'tcp' if i < 5000 else 'udp'}}}\n"
             for i in range(20000)]
    path.write_text("services:\n" + "".join(lines))
    config = load_config(path)
    assert len(config.services) == 20000 and config.services[-1].name == "s19999"
    lines[12345] = "  - {name: bad, port: 70000}\n"
    path.write_text("services:\n" + "".join(lines))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any("services[12345].port" in e and "70000" in e for e in info.value.errors), info.value.errors


# --------------------------------------------------------------------------
# Layering: the types are cheap and pure; each sink owns its shape


@pytest.mark.parametrize("module", ["portwatch.config", "portwatch.config.types", "portwatch.alerts.rules"])
def test_importing_the_types_does_not_import_yaml_or_the_sinks(module: str) -> None:
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m == 'yaml' or m.startswith('portwatch.alerts.sinks')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


def test_every_sink_type_comes_from_its_own_module() -> None:
    from portwatch.alerts.sinks import SINK_MODULES, sink_shapes

    shapes = sink_shapes()
    assert list(shapes) == list(SINK_MODULES) == ["journal", "webhook", "alertmanager", "exec"]
    for sink_type, shape in shapes.items():
        assert shape.cls.__module__ == SINK_MODULES[sink_type]
        [type_field] = [f for f in dataclasses.fields(shape.cls) if f.name == "type"]
        assert type_field.default == sink_type
        assert shape.fields[0].name == "type" and shape.fields[0].required


def test_a_section_whose_keys_miss_a_field_is_refused_when_written() -> None:
    from portwatch.config import schema

    with pytest.raises(TypeError, match="must fill each field once"):
        schema.Section(Thresholds, [schema.Key("close_wait", schema.integer(1), "integer", "x")])
