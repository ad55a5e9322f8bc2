"""``--web.config.file``: exporter-toolkit's web configuration file, as the endpoint and ``portwatch run`` use it."""

from __future__ import annotations

import http.client
import logging
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from portwatch.config import WebConfig
from portwatch.web import MetricsServer, WebError, WebOptions, load_web_config_file
from tests.netns import REPO, NetNS
from tests.test_web import (CLIENT_TIMEOUT, LOOPBACK, Certs, basic, certs, client_context, hashes,  # noqa: F401
                            registry, request, running)

PORTWATCH = REPO / ".venv" / "bin" / "portwatch"


def web_config(directory: Path, certs: Certs, users: dict[str, str], extra: str = "") -> Path:
    """``web-config.yml`` as exporter-toolkit documents it (client certificates, bcrypt users), files beside it."""
    for source, name in ((certs.server_cert, "server.pem"), (certs.server_key, "server.key"), (certs.ca, "ca.pem")):
        if not (directory / name).exists():
            shutil.copy(source, directory / name)
    lines = "".join(f"  {user}: '{hashed}'\n" for user, hashed in users.items())
    path = directory / "web-config.yml"
    path.write_text(
        "tls_server_config:\n"
        "  cert_file: server.pem\n"
        "  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: ca.pem\n"
        "  min_version: TLS12\n"
        "  max_version: TLS13\n"
        "  cipher_suites:\n"
        "    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n"
        "    - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\n"
        "  prefer_server_cipher_suites: true\n"
        "http_server_config:\n"
        "  http2: true\n"
        "  headers:\n"
        "    X-Content-Type-Options: nosniff\n"
        "    X-Frame-Options: deny\n"
        f"basic_auth_users:\n{lines}{extra}"
    )
    return path


def served(server: MetricsServer, context: ssl.SSLContext, headers: dict[str, str]) -> tuple[int, Any, str]:
    """(status, response, common name of the server certificate) of one HTTPS GET /metrics."""
    conn = http.client.HTTPSConnection(*server.address, timeout=CLIENT_TIMEOUT, context=context)
    try:
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        response.read()
        assert isinstance(conn.sock, ssl.SSLSocket)
        subject = dict(x[0] for x in conn.sock.getpeercert()["subject"])  # type: ignore[index, misc]
        return response.status, response, str(subject["commonName"])
    finally:
        conn.close()


def test_exporter_toolkit_file_with_client_certificates_and_bcrypt_users(
    registry: CollectorRegistry, certs: Certs, hashes: dict[str, str], tmp_path: Path
) -> None:
    path = web_config(tmp_path, certs, {"alice": hashes["s3cret"]})
    options = WebOptions(config_file=path)
    with running(WebConfig(listen_address=LOOPBACK), registry, options=options) as server:
        with pytest.raises(OSError):  # no client certificate
            request(server, context=client_context(certs), headers=basic("alice", "s3cret"))
        with_cert = client_context(certs, certs.client_cert, certs.client_key)
        status, _, _ = served(server, with_cert, {})
        assert status == 401  # a certificate, but no password
        status, response, name = served(server, with_cert, basic("alice", "s3cret"))
        assert status == 200 and name == "server"
        assert response.getheader("X-Content-Type-Options") == "nosniff"
        assert response.getheader("X-Frame-Options") == "deny"


def test_changes_of_the_file_apply_to_new_connections_and_a_bad_change_keeps_the_old(
    registry: CollectorRegistry, certs: Certs, hashes: dict[str, str], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = web_config(tmp_path, certs, {"alice": hashes["s3cret"]})
    with_cert = client_context(certs, certs.client_cert, certs.client_key)
    with caplog.at_level(logging.ERROR, logger="portwatch.web"), \
            running(WebConfig(listen_address=LOOPBACK), registry, options=WebOptions(config_file=path)) as server:
        assert served(server, with_cert, basic("alice", "s3cret"))[0] == 200
        web_config(tmp_path, certs, {"bob": hashes["other-pw"]})
        assert served(server, with_cert, basic("alice", "s3cret"))[0] == 401
        assert served(server, with_cert, basic("bob", "other-pw"))[0] == 200
        web_config(tmp_path, certs, {"carol": hashes["new-pw"]}, extra="rate_limit:\n  interval: 1s\n  burst: 5\n")
        assert served(server, with_cert, basic("bob", "other-pw"))[0] == 200  # the previous settings stay
    assert any("rate_limit" in r.getMessage() for r in caplog.records)


def test_certificate_rotation_under_the_file(
    registry: CollectorRegistry, certs: Certs, hashes: dict[str, str], tmp_path: Path
) -> None:
    path = web_config(tmp_path, certs, {"alice": hashes["s3cret"]})
    with_cert = client_context(certs, certs.client_cert, certs.client_key)
    with running(WebConfig(listen_address=LOOPBACK), registry, options=WebOptions(config_file=path)) as server:
        assert served(server, with_cert, basic("alice", "s3cret"))[2] == "server"
        shutil.copy(certs.server2_cert, tmp_path / "server.pem.new")
        shutil.copy(certs.server2_key, tmp_path / "server.key")
        (tmp_path / "server.pem.new").rename(tmp_path / "server.pem")
        status, _, name = served(server, with_cert, basic("alice", "s3cret"))
        assert status == 200 and name == "server2"


@pytest.mark.parametrize("text, key", [
    ("rate_limit:\n  interval: 1s\n  burst: 2\n", "rate_limit"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_allowed_sans: [x]\n",
     "tls_server_config.client_allowed_sans"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [X25519]\n",
     "tls_server_config.curve_preferences"),
    ("tls_server_config:\n  cert: PEM\n  key_file: b\n", "tls_server_config.cert"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
     "tls_server_config.client_auth_type"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_NOPE]\n",
     "tls_server_config.cipher_suites"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n", "http_server_config.headers.X-Powered-By"),
    ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice"),
    ("no_such_key: 1\n", "no_such_key"),
])
def test_a_key_portwatch_cannot_honour_is_an_error_naming_it(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebError) as e:
        load_web_config_file(path)
    assert f"--web.config.file {path}: {key}: " in str(e.value)


def test_the_file_beside_tls_in_portwatch_yaml_is_refused(registry: CollectorRegistry, certs: Certs,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users: {}\n")
    config = WebConfig(listen_address=LOOPBACK, tls_cert_file=certs.server_cert, tls_key_file=certs.server_key)
    with pytest.raises(WebError) as e:
        MetricsServer(config, registry, lambda: True, options=WebOptions(config_file=path))
    assert "--web.config.file" in str(e.value) and "one place" in str(e.value)


def test_run_with_an_unsupported_key_exits_2_naming_it(netns: NetNS, tmp_path: Path) -> None:
    web = tmp_path / "web-config.yml"
    web.write_text("tls_server_config:\n  cert_file: a.pem\n  key_file: a.key\n  curve_preferences: [X25519]\n")
    config = tmp_path / "portwatch.yaml"
    config.write_text(f"namespaces: {{scan: own}}\nstate_directory: {tmp_path / 'state'}\n")
    result = netns.run([str(PORTWATCH), "run", "--config", str(config), "--web.config.file", str(web),
                        "--web.listen-address", "127.0.0.1:9731"], timeout=60)
    assert result.returncode == 2, result.stderr
    assert "tls_server_config.curve_preferences: not supported by portwatch" in result.stderr


def test_run_serves_on_every_web_listen_address(netns: NetNS, tmp_path: Path) -> None:
    config = tmp_path / "portwatch.yaml"
    config.write_text(f"namespaces: {{scan: own}}\nstate_directory: {tmp_path / 'state'}\n")
    proc = netns.popen([str(PORTWATCH), "run", "--config", str(config), "--web.listen-address", "127.0.0.1:9731",
                        "--web.listen-address", ":9732"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fetch = ("import sys, time, urllib.request\n"
             "for _ in range(300):\n"
             "    try:\n"
             "        urllib.request.urlopen(sys.argv[1], timeout=10).read(); print('ok'); break\n"
             "    except OSError:\n"
             "        time.sleep(0.1)\n")
    for url in ("http://127.0.0.1:9731/-/healthy", "http://127.0.0.2:9732/-/healthy"):
        result = netns.run([sys.executable, "-c", fetch, url], timeout=60)
        assert result.stdout.strip() == "ok", (url, result.stderr)
    assert proc.poll() is None
