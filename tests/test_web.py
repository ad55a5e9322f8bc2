"""portwatch.web: a real server on loopback, real TLS handshakes, real HTTP clients.

Certificates are made with the openssl CLI in a temporary directory. No test
asserts on time; every network read has a socket timeout only as a safety bound.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import http.client
import logging
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, Gauge

import portwatch
from portwatch.config import WebConfig
from portwatch.web import MetricsServer, WebError, parse_listen_address
from tests.conftest import require, require_binary

CLIENT_TIMEOUT = 10.0  # a safety bound on every client socket, never asserted on
LOOPBACK = "127.0.0.1:0"


# --------------------------------------------------------------------------- certificates


@dataclasses.dataclass(frozen=True)
class Certs:
    """Paths of the test PKI."""

    ca: Path
    server_cert: Path
    server_key: Path
    server2_cert: Path  # a second server certificate from the same CA (rotation)
    server2_key: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path  # signed by a CA the server does not trust
    rogue_client_key: Path
    garbage: Path
    encrypted_key: Path


def _openssl(directory: Path, *args: str) -> None:
    """Runs ``openssl args`` in ``directory``; fails the test with openssl's stderr on error."""
    binary = require_binary("openssl")
    result = subprocess.run([binary, *args], cwd=directory, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed: {result.stderr}")


def _make_ca(directory: Path, name: str) -> None:
    """``name.pem`` / ``name.key``: a self-signed CA."""
    _openssl(
        directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )


def _make_leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    """``name.pem`` / ``name.key``: a certificate signed by CA ``ca`` with the given x509v3 extensions."""
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        directory, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
    )
    _openssl(
        directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
    )


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA, two server certificates for 127.0.0.1/localhost, a client certificate, and a rogue one."""
    d = tmp_path_factory.mktemp("pki")
    server_ext = "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    client_ext = "extendedKeyUsage=clientAuth\n"
    _make_ca(d, "ca")
    _make_ca(d, "rogue-ca")
    _make_leaf(d, "server", "ca", server_ext)
    _make_leaf(d, "server2", "ca", server_ext)
    _make_leaf(d, "client", "ca", client_ext)
    _make_leaf(d, "rogue-client", "rogue-ca", client_ext)
    _openssl(d, "pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret", "-out", "encrypted.key")
    (d / "garbage.pem").write_text("this is not PEM\n")
    return Certs(
        ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server.key",
        server2_cert=d / "server2.pem", server2_key=d / "server2.key",
        client_cert=d / "client.pem", client_key=d / "client.key",
        rogue_client_cert=d / "rogue-client.pem", rogue_client_key=d / "rogue-client.key",
        garbage=d / "garbage.pem", encrypted_key=d / "encrypted.key",
    )


def tls_config(certs: Certs, client_ca: bool = False, **kw: Any) -> WebConfig:
    """A TLS WebConfig on 127.0.0.1:0 with the test server certificate."""
    return WebConfig(
        listen_address=LOOPBACK, tls_cert_file=certs.server_cert, tls_key_file=certs.server_key,
        tls_client_ca_file=certs.ca if client_ca else None, **kw,
    )


def client_context(certs: Certs, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A verifying client context trusting the test CA, optionally presenting a client certificate."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


# --------------------------------------------------------------------------- server and client helpers


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry holding ``portwatch_test_gauge 42`` and ``portwatch_other_gauge 7``."""
    reg = CollectorRegistry()
    Gauge("portwatch_test_gauge", "A gauge for the tests.", registry=reg).set(42)
    Gauge("portwatch_other_gauge", "Another gauge.", registry=reg).set(7)
    return reg


@contextlib.contextmanager
def running(
    config: WebConfig,
    registry: CollectorRegistry,
    ready: Callable[[], bool] = lambda: True,
    **kw: Any,
) -> Iterator[MetricsServer]:
    """A started MetricsServer, stopped on exit."""
    server = MetricsServer(config, registry, ready, **kw)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclasses.dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def request(
    server: MetricsServer,
    path: str = "/metrics",
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    address: tuple[str, int] | None = None,
) -> Response:
    """One HTTP(S) request to ``server`` (HTTPS when ``context`` is given); never raises on an HTTP status."""
    host, port = address or server.address
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=CLIENT_TIMEOUT, context=context)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    """An Authorization header for basic auth."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def raw_exchange(address: tuple[str, int], data: bytes) -> bytes:
    """Sends ``data`` on a plain TCP connection and returns everything received until the server closes."""
    received = b""
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(data)
        for _ in range(1000):  # bounded; the server closes long before
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received


@pytest.fixture(scope="session")
def hashes() -> dict[str, str]:
    """bcrypt hashes (cost 4, fast) of a few passwords."""
    return {
        pw: bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()
        for pw in ("s3cret", "other-pw", "new-pw")
    }


# --------------------------------------------------------------------------- plain HTTP endpoints


def test_metrics_served_in_the_text_format(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        r = request(server)
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "portwatch_test_gauge 42.0\n" in r.body.decode()
    assert "# TYPE portwatch_test_gauge gauge\n" in r.body.decode()
    assert r.headers["Content-Encoding"] is None
    assert int(r.headers["Content-Length"]) == len(r.body)


def test_metrics_served_as_openmetrics_when_accept_asks(registry: CollectorRegistry) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        r = request(server, headers={"Accept": accept})
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    body = r.body.decode()
    assert "portwatch_test_gauge 42.0\n" in body
    assert body.endswith("# EOF\n")


def test_metrics_gzipped_when_accepted(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        r = request(server, headers={"Accept-Encoding": "gzip, deflate"})
        plain = request(server, headers={"Accept-Encoding": "identity"})
    assert r.status == 200
    assert r.headers["Content-Encoding"] == "gzip"
    assert "portwatch_test_gauge 42.0" in gzip.decompress(r.body).decode()
    assert plain.headers["Content-Encoding"] is None
    assert b"portwatch_test_gauge 42.0" in plain.body


def test_metrics_restricted_by_name_parameters(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        r = request(server, "/metrics?name[]=portwatch_other_gauge")
    assert r.status == 200
    assert b"portwatch_other_gauge 7.0" in r.body
    assert b"portwatch_test_gauge" not in r.body


def test_head_has_headers_and_no_body(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        r = request(server, method="HEAD")
    assert r.status == 200
    assert r.body == b""
    assert int(r.headers["Content-Length"]) > 0


def test_metrics_collector_error_gives_500_and_server_survives(registry: CollectorRegistry) -> None:
    class Broken:
        def collect(self) -> Any:
            raise RuntimeError("collector broke")

    broken = CollectorRegistry()
    broken.register(Broken())
    with running(WebConfig(listen_address=LOOPBACK), broken) as server:
        r = request(server)
        assert r.status == 500
        assert b"collector broke" not in r.body
        assert request(server, "/-/healthy").status == 200


def test_index_page_shows_version_links_and_extra(registry: CollectorRegistry) -> None:
    extra = "<p id='scan'>last scan: 3 findings</p>"
    with running(WebConfig(listen_address=LOOPBACK), registry, index_extra=lambda: extra) as server:
        r = request(server, "/")
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    page = r.body.decode()
    assert "portwatch" in page
    assert portwatch.__version__ in page
    assert 'href="metrics"' in page
    assert extra in page


def test_index_page_survives_failing_extra(registry: CollectorRegistry) -> None:
    def extra() -> str:
        raise RuntimeError("no scan yet")

    with running(WebConfig(listen_address=LOOPBACK), registry, index_extra=extra) as server:
        r = request(server, "/")
    assert r.status == 200
    assert b"portwatch" in r.body


def test_healthy_and_ready_follow_the_callbacks(registry: CollectorRegistry) -> None:
    state = {"ready": False, "healthy": True}
    server = MetricsServer(
        WebConfig(listen_address=LOOPBACK), registry,
        ready=lambda: state["ready"], health=lambda: state["healthy"],
    )
    server.start()
    try:
        assert request(server, "/-/ready").status == 503
        h = request(server, "/-/healthy")
        assert (h.status, h.body) == (200, b"OK\n")
        state["ready"] = True
        r = request(server, "/-/ready")
        assert (r.status, r.body) == (200, b"OK\n")
        state["healthy"] = False
        assert request(server, "/-/healthy").status == 503
        state["ready"] = False
        assert request(server, "/-/ready").status == 503
    finally:
        server.stop()


def test_raising_ready_check_is_not_ready(registry: CollectorRegistry) -> None:
    def ready() -> bool:
        raise RuntimeError("boom")

    with running(WebConfig(listen_address=LOOPBACK), registry, ready=ready) as server:
        assert request(server, "/-/ready").status == 503


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/-/", "/index.html", "/metrics.txt", "metrics"])
def test_unknown_paths_get_404(registry: CollectorRegistry, path: str) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        assert request(server, path).status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "FOO"])
def test_methods_other_than_get_and_head_get_405(registry: CollectorRegistry, method: str) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        r = request(server, method=method)
    assert r.status == 405
    assert r.headers["Allow"] == "GET, HEAD"


def test_requests_logged_at_debug_only_and_nothing_on_stderr(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="portwatch.web")
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        request(server)
        request(server, "/nope")
        raw_exchange(server.address, b"\x00\x01garbage\r\n\r\n")  # a 400 from http.server's parser
    out, err = capfd.readouterr()
    assert err == ""
    assert out == ""
    requests = [r for r in caplog.records if r.name == "portwatch.web" and "GET /metrics" in r.getMessage()]
    assert requests and all(r.levelno == logging.DEBUG for r in requests)
    garbage = [r for r in caplog.records if "garbage" in r.getMessage()]
    assert garbage and all("\x00" not in r.getMessage() for r in garbage)  # control characters escaped


def test_server_header_does_not_leak_python_version(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        r = request(server)
    assert r.headers["Server"] == f"portwatch/{portwatch.__version__}"


def test_serves_on_an_ipv6_listen_address(registry: CollectorRegistry) -> None:
    require(socket.has_ipv6, "no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        loopback6 = True
    except OSError:
        loopback6 = False
    require(loopback6, "::1 is not available on this host")
    with running(WebConfig(listen_address="[::1]:0"), registry) as server:
        host, port = server.address
        assert host == "::1"
        assert request(server).status == 200


# --------------------------------------------------------------------------- lifecycle and errors


def test_stop_closes_the_port_and_open_connections(registry: CollectorRegistry) -> None:
    server = MetricsServer(WebConfig(listen_address=LOOPBACK), registry, ready=lambda: True)
    server.start()
    address = server.address
    stalled = socket.create_connection(address, timeout=CLIENT_TIMEOUT)
    try:
        assert request(server).status == 200  # served while a client stalls
        server.stop()
        assert stalled.recv(100) == b""  # the server shut the stalled connection down
    finally:
        stalled.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=CLIENT_TIMEOUT).close()
    server.stop()  # a second stop is harmless
    with pytest.raises(RuntimeError):
        _ = server.address


def test_start_twice_is_an_error(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        with pytest.raises(RuntimeError):
            server.start()


def test_port_in_use_names_the_address(registry: CollectorRegistry) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(WebConfig(listen_address=f"127.0.0.1:{port}"), registry, ready=lambda: True)
        with pytest.raises(WebError) as e:
            server.start()
    assert str(e.value) == f"web.listen_address 127.0.0.1:{port}: address already in use"


def test_second_instance_on_same_port_fails(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as first:
        port = first.address[1]
        second = MetricsServer(WebConfig(listen_address=f"127.0.0.1:{port}"), registry, ready=lambda: True)
        with pytest.raises(WebError, match="address already in use"):
            second.start()
        assert request(first).status == 200


def test_address_not_on_this_host_is_refused_saying_why(registry: CollectorRegistry) -> None:
    server = MetricsServer(WebConfig(listen_address="192.0.2.1:0"), registry, ready=lambda: True)
    with pytest.raises(WebError, match=r"^web.listen_address 192.0.2.1:0: address not available"):
        server.start()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9731", ("127.0.0.1", 9731)),
        ("[::1]:9731", ("::1", 9731)),
        ("[::]:80", ("::", 80)),
        (":9731", ("", 9731)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_address_splits_into_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1", "must be 'host:port' or '[ipv6]:port'"),
        ("::1:9731", "an IPv6 address must be in brackets"),
        ("[::1]9731", "must be 'host:port' or '[ipv6]:port'"),
        ("[::1:9731", "must be 'host:port' or '[ipv6]:port'"),
        ("127.0.0.1:http", "the port must be 0..65535"),
        ("127.0.0.1:70000", "the port must be 0..65535"),
        ("127.0.0.1:", "the port must be 0..65535"),
    ],
)
def test_bad_listen_address_is_refused_naming_the_value(registry: CollectorRegistry, value: str, message: str) -> None:
    with pytest.raises(WebError) as e:
        MetricsServer(WebConfig(listen_address=value), registry, ready=lambda: True)
    assert str(e.value).startswith(f"web.listen_address {value!r}: ")
    assert message in str(e.value)


def test_hash_bcrypt_cannot_check_refuses_the_login_and_names_the_user(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    # The configuration rejects such a hash; web trusts a validated WebConfig, so
    # one built by hand is not refused up front but never lets anyone in.
    config = WebConfig(listen_address=LOOPBACK, basic_auth_users={"alice": "plaintext-password"})
    with caplog.at_level(logging.ERROR, logger="portwatch.web"), running(config, registry) as server:
        assert request(server, headers=basic("alice", "plaintext-password")).status == 401
    assert any("cannot check the password of user 'alice'" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- TLS


def test_serves_https_with_the_configured_certificate(registry: CollectorRegistry, certs: Certs) -> None:
    with running(tls_config(certs), registry) as server:
        r = request(server, context=client_context(certs))
    assert r.status == 200
    assert b"portwatch_test_gauge 42.0" in r.body


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_refuses_tls_1_1(registry: CollectorRegistry, certs: Certs) -> None:
    context = client_context(certs)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client really offers TLS 1.1
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with running(tls_config(certs), registry) as server:
        with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
            request(server, context=context)
        assert request(server, context=client_context(certs)).status == 200


def test_plain_http_to_tls_port_gets_no_metrics(registry: CollectorRegistry, certs: Certs) -> None:
    with running(tls_config(certs), registry) as server:
        r = request(server)  # plain HTTP
        assert r.status == 400
        assert b"HTTP request to an HTTPS server" in r.body
        assert b"portwatch_test_gauge" not in r.body
        # garbage that is neither TLS nor HTTP: closed without an answer
        assert raw_exchange(server.address, b"\x00\x01\x02\x03 garbage\r\n\r\n") == b""
        # a TLS record that is not a valid handshake
        answer = raw_exchange(server.address, b"\x16\x03\x01\x00\x05hello")
        assert b"portwatch_test_gauge" not in answer
        # and the server still serves the next client
        assert request(server, context=client_context(certs)).status == 200


def test_stalled_tls_client_does_not_block_others(registry: CollectorRegistry, certs: Certs) -> None:
    with running(tls_config(certs), registry) as server:
        stalled = socket.create_connection(server.address, timeout=CLIENT_TIMEOUT)
        half = socket.create_connection(server.address, timeout=CLIENT_TIMEOUT)
        try:
            half.sendall(b"\x16\x03\x01")  # the start of a handshake, then nothing
            for _ in range(3):
                assert request(server, context=client_context(certs)).status == 200
        finally:
            stalled.close()
            half.close()


def test_client_ca_requires_a_client_certificate(registry: CollectorRegistry, certs: Certs) -> None:
    with running(tls_config(certs, client_ca=True), registry) as server:
        with pytest.raises(OSError):  # ssl.SSLError, reset or disconnect, depending on the TLS version
            request(server, context=client_context(certs))
        with pytest.raises(OSError):
            request(server, context=client_context(certs, certs.rogue_client_cert, certs.rogue_client_key))
        r = request(server, context=client_context(certs, certs.client_cert, certs.client_key))
        assert r.status == 200
        assert b"portwatch_test_gauge 42.0" in r.body


def test_tls_files_rotated_are_picked_up(registry: CollectorRegistry, certs: Certs, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    config = WebConfig(listen_address=LOOPBACK, tls_cert_file=cert, tls_key_file=key)

    def served_certificate(server: MetricsServer) -> bytes:
        with socket.create_connection(server.address, timeout=CLIENT_TIMEOUT) as sock:
            with client_context(certs).wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    def der(path: Path) -> bytes:
        return ssl.PEM_cert_to_DER_cert(path.read_text())

    with running(config, registry) as server:
        assert served_certificate(server) == der(certs.server_cert)
        # a broken replacement is refused; the old certificate stays in use
        shutil.copy(certs.garbage, tmp_path / "new.pem")
        os.replace(tmp_path / "new.pem", cert)
        assert served_certificate(server) == der(certs.server_cert)
        # a good replacement (certificate and key) is used from the next connection on
        shutil.copy(certs.server2_cert, tmp_path / "new.pem")
        shutil.copy(certs.server2_key, tmp_path / "new.key")
        os.replace(tmp_path / "new.key", key)
        os.replace(tmp_path / "new.pem", cert)
        assert served_certificate(server) == der(certs.server2_cert)
        assert request(server, context=client_context(certs)).status == 200


def test_rotation_to_an_unloadable_file_is_logged_naming_the_setting(
    registry: CollectorRegistry, certs: Certs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    config = WebConfig(listen_address=LOOPBACK, tls_cert_file=cert, tls_key_file=key)
    with caplog.at_level(logging.ERROR, logger="portwatch.web"), running(config, registry) as server:
        assert request(server, context=client_context(certs)).status == 200
        cert.unlink()
        cert.mkdir()  # what was checked at start-up is no longer a file
        assert request(server, context=client_context(certs)).status == 200  # the old certificate stays
        cert.rmdir()
        shutil.copy(certs.server_cert, cert)
        key.unlink()
        os.mkfifo(key)  # opening it would block the connection's thread
        assert request(server, context=client_context(certs)).status == 200
    prefix = "TLS files changed but cannot be loaded, still using the previous certificate: "
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)] == [
        f"{prefix}web.tls_cert_file {cert}: is a directory, not a file",
        f"{prefix}web.tls_key_file {key}: not a regular file",
    ]


def test_missing_cert_file_names_the_file(registry: CollectorRegistry, certs: Certs, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    config = dataclasses.replace(tls_config(certs), tls_cert_file=missing)
    with pytest.raises(WebError) as e:
        MetricsServer(config, registry, ready=lambda: True)
    assert str(e.value) == f"web.tls_cert_file {missing}: no such file"


@pytest.mark.parametrize(
    ("field", "source", "message"),
    [
        ("tls_cert_file", "garbage", "web.tls_cert_file {path}: bad certificate: "),
        ("tls_cert_file", "server_key", "web.tls_cert_file {path}: bad certificate: "),
        ("tls_key_file", "garbage", "web.tls_key_file {path}: bad key: "),
        ("tls_key_file", "client_key", "web.tls_key_file {path}: bad key: it does not match web.tls_cert_file"),
        ("tls_key_file", "encrypted_key", "web.tls_key_file {path}: bad key: it is encrypted"),
        ("tls_client_ca_file", "garbage", "web.tls_client_ca_file {path}: bad certificate: "),
    ],
)
def test_bad_tls_files_name_the_file(
    registry: CollectorRegistry, certs: Certs, field: str, source: str, message: str
) -> None:
    path: Path = getattr(certs, source)
    changes: dict[str, Any] = {field: path}
    config = dataclasses.replace(tls_config(certs, client_ca=True), **changes)
    with pytest.raises(WebError) as e:
        MetricsServer(config, registry, ready=lambda: True)
    assert str(e.value).startswith(message.format(path=path))


def test_key_without_cert_is_an_error(registry: CollectorRegistry, certs: Certs) -> None:
    config = WebConfig(listen_address=LOOPBACK, tls_key_file=certs.server_key)
    with pytest.raises(WebError, match="web.tls_key_file .*: needs web.tls_cert_file"):
        MetricsServer(config, registry, ready=lambda: True)


# --------------------------------------------------------------------------- basic auth


def test_basic_auth_guards_every_endpoint(registry: CollectorRegistry, hashes: dict[str, str]) -> None:
    config = WebConfig(listen_address=LOOPBACK, basic_auth_users={"alice": hashes["s3cret"]})
    with running(config, registry) as server:
        for path in ("/metrics", "/", "/-/healthy", "/-/ready", "/nope"):
            r = request(server, path)
            assert r.status == 401, path
            assert r.headers["WWW-Authenticate"] == 'Basic realm="portwatch"'
            assert b"portwatch_test_gauge" not in r.body
        for headers in (
            basic("alice", "wrong"),
            basic("bob", "s3cret"),
            basic("alice", "s3cret" + "x"),
            {"Authorization": "Basic not-base64!"},
            {"Authorization": "Bearer abc"},
            {"Authorization": "Basic " + base64.b64encode(b"alice").decode()},  # no colon
        ):
            assert request(server, headers=headers).status == 401, headers
        assert request(server, method="POST").status == 401  # auth before 405
        r = request(server, headers=basic("alice", "s3cret"))
        assert r.status == 200
        assert b"portwatch_test_gauge 42.0" in r.body
        assert request(server, "/nope", headers=basic("alice", "s3cret")).status == 404
        assert request(server, method="POST", headers=basic("alice", "s3cret")).status == 405


def test_basic_auth_over_tls(registry: CollectorRegistry, certs: Certs, hashes: dict[str, str]) -> None:
    config = tls_config(certs, basic_auth_users={"alice": hashes["s3cret"]})
    with running(config, registry) as server:
        context = client_context(certs)
        assert request(server, context=context).status == 401
        assert request(server, context=context, headers=basic("alice", "wrong")).status == 401
        assert request(server, context=context, headers=basic("alice", "s3cret")).status == 200


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every ``bcrypt.checkpw`` call from now on, as (password, hash); the real check still runs."""
    calls: list[tuple[bytes, bytes]] = []
    real_checkpw = bcrypt.checkpw

    def recording_checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append((password, hashed))
        return real_checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", recording_checkpw)
    return calls


def test_successful_checks_are_cached(
    registry: CollectorRegistry, hashes: dict[str, str], bcrypt_calls: list[tuple[bytes, bytes]]
) -> None:
    calls = bcrypt_calls
    config = WebConfig(listen_address=LOOPBACK, basic_auth_users={"alice": hashes["s3cret"]})
    with running(config, registry) as server:
        for _ in range(3):
            assert request(server, headers=basic("alice", "s3cret")).status == 200
        assert len(calls) == 1
        for _ in range(2):  # failures are not cached
            assert request(server, headers=basic("alice", "wrong")).status == 401
        assert len(calls) == 3


def test_update_config_swaps_users_and_drops_the_cache(registry: CollectorRegistry, hashes: dict[str, str]) -> None:
    config = WebConfig(listen_address=LOOPBACK, basic_auth_users={"alice": hashes["s3cret"]})
    with running(config, registry) as server:
        address = server.address
        assert request(server, headers=basic("alice", "s3cret")).status == 200  # now cached
        # same user, new password: the cached success must not survive
        server.update_config(dataclasses.replace(config, basic_auth_users={"alice": hashes["new-pw"]}))
        assert server.address == address
        assert request(server, headers=basic("alice", "s3cret")).status == 401
        assert request(server, headers=basic("alice", "new-pw")).status == 200
        # another user only
        server.update_config(dataclasses.replace(config, basic_auth_users={"bob": hashes["other-pw"]}))
        assert request(server, headers=basic("alice", "new-pw")).status == 401
        assert request(server, headers=basic("bob", "other-pw")).status == 200
        # auth off
        server.update_config(dataclasses.replace(config, basic_auth_users={}))
        assert request(server).status == 200
        assert server.address == address


def test_update_config_turns_tls_on_without_rebinding(registry: CollectorRegistry, certs: Certs) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        address = server.address
        assert request(server).status == 200
        server.update_config(tls_config(certs))
        assert server.address == address
        assert request(server, context=client_context(certs)).status == 200
        assert request(server).status == 400


def test_update_config_with_bad_tls_keeps_the_old_config(
    registry: CollectorRegistry, certs: Certs, hashes: dict[str, str], tmp_path: Path
) -> None:
    config = tls_config(certs, basic_auth_users={"alice": hashes["s3cret"]})
    with running(config, registry) as server:
        missing = tmp_path / "gone.pem"
        bad = dataclasses.replace(config, tls_cert_file=missing, basic_auth_users={"bob": hashes["other-pw"]})
        with pytest.raises(WebError, match=f"^web.tls_cert_file {missing}: no such file$"):
            server.update_config(bad)
        bad_key = dataclasses.replace(config, tls_key_file=certs.client_key)
        with pytest.raises(WebError, match="does not match"):
            server.update_config(bad_key)
        assert server.config == config
        context = client_context(certs)
        assert request(server, context=context, headers=basic("alice", "s3cret")).status == 200
        assert request(server, context=context, headers=basic("bob", "other-pw")).status == 401


def test_update_config_moves_to_a_new_listen_address(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        old = server.address
        server.update_config(WebConfig(listen_address="127.0.0.2:0"))
        assert server.address[0] == "127.0.0.2"
        assert request(server).status == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(old, timeout=CLIENT_TIMEOUT).close()


def test_update_config_to_a_taken_address_keeps_serving(registry: CollectorRegistry, hashes: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with running(WebConfig(listen_address=LOOPBACK), registry) as server:
            old = server.address
            new = WebConfig(listen_address=f"127.0.0.1:{port}", basic_auth_users={"alice": hashes["s3cret"]})
            with pytest.raises(WebError) as e:
                server.update_config(new)
            assert str(e.value).startswith(f"web.listen_address 127.0.0.1:{port}: address already in use")
            assert "restart" in str(e.value)
            assert server.address == old
            assert request(server).status == 200  # old config, no auth


def test_connections_over_the_limit_are_closed_at_once(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry, max_connections=1) as server:
        with socket.create_connection(server.address, timeout=CLIENT_TIMEOUT) as stalled:
            stalled.sendall(b"GET /metrics HTTP/1.0\r\n")  # an unfinished request holds the only slot
            answer = raw_exchange(server.address, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert b"portwatch_test_gauge" not in answer
            stalled.sendall(b"\r\n")
            first = b""
            for _ in range(1000):
                chunk = stalled.recv(65536)
                if not chunk:
                    break
                first += chunk
            assert b"portwatch_test_gauge 42.0" in first
