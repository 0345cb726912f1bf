"""Slow-loris clients cannot exhaust the API: request heads have a deadline and a size cap,
request bodies must keep coming, against a real `pacs serve` and plain sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from uvicorn.server import ServerState

from tests.servers import PacsServer
from viewer_api.http_protocol import HeaderDeadlineProtocol

HEADER_TIMEOUT = 3.0
BODY_TIMEOUT = 2.0  # each window must bring 1 KiB of an incomplete body
SLOW_CLIENTS = 200
BOUNDARY = "b0undary"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    home: Path = tmp_path_factory.mktemp("slowloris") / "home"
    pacs = PacsServer(
        home,
        {
            "PACS_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "PACS_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
        },
    ).start()
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


def stow_head(server: PacsServer, length: int) -> bytes:
    token = server.token("modality")
    return (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: pacs\r\nAuthorization: Bearer {token}\r\n"
        f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}\r\n'
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def stored_instances(server: PacsServer) -> int:
    token = server.token("admin", facilities=("*",))
    response = httpx.get(
        f"{server.url}/dicom-web/instances", headers={"Authorization": f"Bearer {token}"}
    )
    return 0 if response.status_code == 204 else len(response.json())


def test_a_stalled_request_body_is_closed_and_stores_nothing(server: PacsServer) -> None:
    """Regression: headers in time, then a body trickled a byte now and then, held the
    connection (and a request handler) for ever."""
    part = (Path("data") / "ct").rglob("*.dcm").__next__().read_bytes()
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    before = stored_instances(server)
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=1) as sock:
        sock.sendall(stow_head(server, len(body)) + body[: len(body) // 2])
        start = time.monotonic()
        closed = False
        while not closed and time.monotonic() - start < 3 * BODY_TIMEOUT + 5:
            try:
                sock.sendall(b"\0")  # a byte a second: far below 1 KiB per window
                closed = sock.recv(65536) == b""
            except TimeoutError:
                continue
            except OSError:  # reset or broken pipe: closed by the server
                closed = True
        waited = time.monotonic() - start
    assert closed
    assert BODY_TIMEOUT / 2 < waited < 2 * BODY_TIMEOUT + 3
    assert stored_instances(server) == before
    # A whole STOW-RS request right after is stored.
    response = httpx.post(
        f"{server.url}/dicom-web/studies",
        content=body,
        headers={
            "Authorization": f"Bearer {server.token('modality')}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        },
    )
    assert response.status_code == 200, response.text
    assert stored_instances(server) == before + 1


def test_a_slow_but_steady_body_is_answered(server: PacsServer) -> None:
    """4 KiB a second for three windows: slow, but a real sender; it gets its answer."""
    body = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body += b"not dicom" * 2000 + f"\r\n--{BOUNDARY}--\r\n".encode()
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    assert len(chunks) * 1.0 > 2 * BODY_TIMEOUT
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(stow_head(server, len(body)))
        for chunk in chunks:
            time.sleep(1.0)
            sock.sendall(chunk)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    assert int(answer.split()[1]) < 500, answer[:200]


def test_connections_are_answered_without_nagle_delays() -> None:
    """TCP_NODELAY on every connection: asyncio leaves it off for sockets accepted from a
    listening socket made with protocol 0, as uvicorn's and ours are."""
    config = uvicorn.Config(_answer, http=HeaderDeadlineProtocol, log_level="warning")
    config.load()
    made: list[HeaderDeadlineProtocol] = []

    def protocol() -> HeaderDeadlineProtocol:
        made.append(HeaderDeadlineProtocol(config=config, server_state=ServerState(), app_state={}))
        return made[-1]

    async def run() -> int:
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # protocol 0, as uvicorn's
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        listening.setblocking(False)
        server = await asyncio.get_running_loop().create_server(protocol, sock=listening)
        reader, writer = await asyncio.open_connection(*listening.getsockname())
        writer.write(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        accepted = made[0].transport.get_extra_info("socket")
        nodelay = int(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()
        server.close()
        return nodelay

    assert asyncio.run(run()) == 1


async def _answer(scope: dict, receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]
