"""The endpoint under idle, slow, garbage-speaking and password-guessing clients (real server, real sockets).

Every client socket has a safety timeout that is never asserted on; waits
for the server are bounded polls of :attr:`MetricsServer.open_connections`.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from typing import Callable, Iterator

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, Gauge

from portwatch.config import WebConfig
from portwatch.web import FAILURE_LIMIT, MetricsServer
from tests.test_web import (CLIENT_TIMEOUT, LOOPBACK, Certs, basic, bcrypt_calls, certs,  # noqa: F401
                            client_context, hashes, raw_exchange, registry, request, running, tls_config)

OLD_CAP = 64  # the connection cap of the thread-per-connection server


def wait_until(what: str, check: Callable[[], bool], attempts: int = 200) -> None:
    """Polls ``check`` (every 50 ms, bounded); fails naming ``what`` when it never holds."""
    for _ in range(attempts):
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"never happened: {what}")


def scrape(address: tuple[str, int], headers: dict[str, str] | None = None,
           source: str | None = None) -> http.client.HTTPResponse:
    """One GET /metrics on a new connection (from ``source`` when given); the body is read."""
    conn = http.client.HTTPConnection(*address, timeout=CLIENT_TIMEOUT,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", "/metrics", headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response
    finally:
        conn.close()


@contextlib.contextmanager
def connections(address: tuple[str, int], count: int, first: bytes) -> Iterator[list[socket.socket]]:
    """``count`` open connections that each sent ``first``, closed on exit."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address, timeout=CLIENT_TIMEOUT)
            if first:
                sock.sendall(first)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


# --------------------------------------------------------------------------- slow and idle clients


def test_trickling_connections_beyond_the_old_cap_do_not_stop_scrapes(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        with connections(server.address, 4 * OLD_CAP, b"GET /metrics HTTP/1.1\r\n") as trickling:
            wait_until("every trickling connection accepted", lambda: server.open_connections >= len(trickling))
            for sock in trickling:
                sock.sendall(b"X-Trickle: 1\r\n")  # one more header line each, never the end
            for _ in range(5):
                response = scrape(server.address)
                assert response.status == 200
            assert server.open_connections >= len(trickling)  # still held, cheaply


def test_a_trickling_request_is_cut_off_at_its_deadline_not_per_read(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry, connection_timeout=0.5) as server:
        with socket.create_connection(server.address, timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            closed = False
            for _ in range(400):  # one line every 50 ms: each read is far quicker than the deadline
                try:
                    sock.sendall(b"X-Trickle: 1\r\n")
                    sock.settimeout(0.05)
                    closed = sock.recv(100) == b""
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                if closed:
                    break
            assert closed


def test_stalled_tls_handshakes_hold_no_worker(registry: CollectorRegistry, certs: Certs) -> None:
    with running(tls_config(certs), registry, connection_timeout=600.0, workers=1) as server:
        with connections(server.address, 2 * OLD_CAP, b"\x16\x03\x01"):  # handshakes begun, then nothing
            for _ in range(3):
                assert request(server, context=client_context(certs)).status == 200


def test_a_stalled_tls_handshake_is_dropped_at_the_deadline(registry: CollectorRegistry, certs: Certs) -> None:
    with running(tls_config(certs), registry, connection_timeout=0.5) as server:
        with connections(server.address, 1, b"\x16\x03\x01") as (stalled,):
            assert stalled.recv(100) == b""  # the client waits up to CLIENT_TIMEOUT; the server closes first


def test_a_client_that_never_reads_its_answers_holds_no_worker() -> None:
    big = CollectorRegistry()
    gauge = Gauge("portwatch_test_big", "Many series.", ["n"], registry=big)
    for n in range(2000):
        gauge.labels(n=f"series-{n:05d}").set(n)  # about 100 kB per answer
    with running(WebConfig(listen_address=LOOPBACK), big, workers=1) as server:
        with socket.socket() as greedy:
            greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            greedy.settimeout(CLIENT_TIMEOUT)
            greedy.connect(server.address)
            # far more answers than the socket buffers hold, and none of them read;
            # the server stops reading requests too, so what it does not take is dropped
            greedy.settimeout(1.0)
            with contextlib.suppress(TimeoutError):
                greedy.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 500)
            # Time for the answers to fill the buffers (a server that blocked a worker on
            # them would fail below; with less time the test only checks less).
            time.sleep(1.0)
            for _ in range(3):
                assert scrape(server.address).status == 200


def simultaneous_scrapes(address: tuple[str, int], count: int) -> list[int]:
    """The statuses of ``count`` scrapes of ``address`` released at the same instant (threads behind a barrier)."""
    barrier = threading.Barrier(count)
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait(CLIENT_TIMEOUT)
        status = scrape(address).status
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CLIENT_TIMEOUT * 3)
    return statuses


def test_simultaneous_scrapes_all_succeed(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        assert simultaneous_scrapes(server.address, 50) == [200] * 50


def test_keep_alive_reuses_the_connection(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        conn = http.client.HTTPConnection(*server.address, timeout=CLIENT_TIMEOUT)
        try:
            ports = set()
            for _ in range(3):
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                assert response.status == 200
                assert b"portwatch_test_gauge 42.0" in response.read()
                assert response.getheader("Connection") is None  # HTTP/1.1: kept open
                assert conn.sock is not None
                ports.add(conn.sock.getsockname()[1])
            assert len(ports) == 1
            assert server.open_connections == 1
        finally:
            conn.close()


def test_keep_alive_over_tls(registry: CollectorRegistry, certs: Certs) -> None:
    with running(tls_config(certs), registry) as server:
        conn = http.client.HTTPSConnection(*server.address, timeout=CLIENT_TIMEOUT, context=client_context(certs))
        try:
            for _ in range(3):
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                assert response.status == 200 and b"portwatch_test_gauge" in response.read()
            assert isinstance(conn.sock, ssl.SSLSocket)
            assert server.open_connections == 1
        finally:
            conn.close()


def test_http_1_0_and_connection_close_end_the_connection(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        answer = raw_exchange(server.address, b"GET /metrics HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer
        answer = raw_exchange(server.address, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and b"portwatch_test_gauge 42.0" in answer


def test_pipelined_requests_are_answered_in_order(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        answer = raw_exchange(server.address, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
                                              b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.index(b"HTTP/1.1 404 ") > answer.index(b"OK\n")


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize("data", [
    pytest.param(b"\x00\x01\x02\xff random bytes\r\n\r\n", id="random-bytes"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="http2-preface"),
    pytest.param(bytes.fromhex("160301002a0100002603035e"), id="tls-hello-on-plain-port"),
    pytest.param(b"GET /metrics\r\n", id="http-0.9"),
    pytest.param(b"GET /metrics HTTP/1.1\r\n" + b"X-Big: " + b"a" * 40000 + b"\r\n\r\n", id="huge-head"),
])
def test_garbage_gets_a_status_line_and_the_slot_back_at_once(registry: CollectorRegistry, data: bytes) -> None:
    # The deadline is far beyond the test's bounded wait: only answering at once passes.
    with running(WebConfig(listen_address=LOOPBACK), registry, connection_timeout=600.0) as server:
        answer = raw_exchange(server.address, data)
        assert answer.startswith((b"HTTP/1.1 400 Bad Request\r\n", b"HTTP/1.1 431 "))
        assert b"portwatch_test_gauge" not in answer
        wait_until("the connection's slot freed", lambda: server.open_connections == 0)
        assert scrape(server.address).status == 200


def test_double_slash_metrics_is_not_found(registry: CollectorRegistry) -> None:
    with running(WebConfig(listen_address=LOOPBACK), registry) as server:
        assert request(server, "//metrics").status == 404
        assert request(server, "/metrics/").status == 404


# --------------------------------------------------------------------------- password guessing


def test_password_guessing_gets_429_and_the_right_password_works_from_another_address(
    registry: CollectorRegistry, hashes: dict[str, str]
) -> None:
    config = WebConfig(listen_address=LOOPBACK, basic_auth_users={"alice": hashes["s3cret"]})
    with running(config, registry) as server:
        for i in range(FAILURE_LIMIT):
            assert scrape(server.address, basic("alice", f"guess-{i}"), source="127.0.0.1").status == 401
        limited = scrape(server.address, basic("alice", "guess-again"), source="127.0.0.1")
        assert limited.status == 429
        retry_after = limited.getheader("Retry-After")
        assert retry_after is not None and int(retry_after) >= 1
        # the limit is per address: even the right password waits here ...
        assert scrape(server.address, basic("alice", "s3cret"), source="127.0.0.1").status == 429
        # ... and works from another one
        response = scrape(server.address, basic("alice", "s3cret"), source="127.0.0.2")
        assert response.status == 200


def test_unknown_user_is_checked_against_a_hash_of_the_configured_cost(
    registry: CollectorRegistry, bcrypt_calls: list[tuple[bytes, bytes]]
) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=5)).decode()
    config = WebConfig(listen_address=LOOPBACK, basic_auth_users={"alice": hashed})
    with running(config, registry) as server:
        assert scrape(server.address, basic("mallory", "pw")).status == 401
        assert scrape(server.address, basic("alice", "wrong")).status == 401
    (_, unknown), (_, known) = bcrypt_calls
    assert unknown != hashed.encode() and known == hashed.encode()
    assert unknown[:7] == known[:7] == b"$2b$05$"  # same algorithm, same cost
