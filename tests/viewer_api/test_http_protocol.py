"""Slow-loris clients cannot exhaust the API: request heads have a deadline and a size cap,
against a real `pacs serve` and plain sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import PacsServer

HEADER_TIMEOUT = 3.0
SLOW_CLIENTS = 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    home: Path = tmp_path_factory.mktemp("slowloris") / "home"
    pacs = PacsServer(home, {"PACS_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT)}).start()
    yield pacs
    pacs.stop()


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_slow_header_clients_are_closed_while_others_are_answered(server: PacsServer) -> None:
    """Regression: a client trickling header lines kept its connection open for ever."""
    slow = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: pacs\r\n")
            sock.setblocking(False)
            slow.append(sock)
        start = time.monotonic()
        closed: set[int] = set()
        answered = False
        while time.monotonic() - start < HEADER_TIMEOUT + 10 and len(closed) < len(slow):
            for n, sock in enumerate(slow):  # one more header line each, every ~0.5 s
                if n not in closed:
                    try:
                        sock.send(b"X-Trickle: 1\r\n")
                    except OSError:
                        closed.add(n)
                    else:
                        if closed_by_peer(sock):
                            closed.add(n)
            if not answered:  # a normal client is answered at once meanwhile
                asked = time.monotonic()
                response = httpx.get(f"{server.url}/healthz", timeout=5)
                assert response.status_code == 200
                assert time.monotonic() - asked < 2
                answered = True
            time.sleep(0.5)
        waited = time.monotonic() - start
    finally:
        for sock in slow:
            sock.close()
    assert answered
    assert len(closed) == SLOW_CLIENTS
    assert HEADER_TIMEOUT / 2 < waited < HEADER_TIMEOUT + 10


def test_a_kept_alive_connection_gets_the_deadline_on_its_next_request(
    server: PacsServer,
) -> None:
    with socket.create_connection(
        ("127.0.0.1", server.http_port), timeout=HEADER_TIMEOUT + 10
    ) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: pacs\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):  # head and body may come apart
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        start = time.monotonic()
        assert sock.recv(65536) == b""
        assert time.monotonic() - start < HEADER_TIMEOUT + 5


def test_an_oversized_request_head_is_refused(server: PacsServer) -> None:
    """h11 buffers at most 16 KiB of an incomplete head (uvicorn's default), then answers 400."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: pacs\r\nX-Big: " + b"a" * 20 * 1024)
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
