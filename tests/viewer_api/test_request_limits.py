"""Hostile requests to the JSON routes (issue 10 items 17, 19): authenticate before reading a
body, bounded bodies, 400 (not 422 or 500) for malformed bodies, odd integers, odd claims."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any

import httpx
import jwt
import psutil
import pytest

from tests.servers import PacsServer

MiB = 1024**2
WEBHOOKS = "/api/v1/webhooks"


def _rss(server: PacsServer) -> int:
    assert server.process is not None
    return int(psutil.Process(server.process.pid).memory_info().rss)


def _upload(server: PacsServer, head: str, total: int) -> tuple[str, int]:
    """Send *head* then up to *total* body bytes (chunked when *head* says so) from a thread;
    return the status line the server answers and how many body bytes had gone by then."""
    sent = 0
    chunked = "chunked" in head.lower()
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)

    def send_body() -> None:
        nonlocal sent
        block = b"x" * MiB
        try:
            while sent < total:
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                sent += len(block)
        except OSError:  # the server closed the connection: what we want
            pass

    try:
        sock.sendall(head.encode())
        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        with sock.makefile("rb") as answer:
            status_line = answer.readline().decode()
        at_answer = sent
    finally:
        with contextlib.suppress(OSError):  # the server may have closed it already
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    sender.join(timeout=10)
    return status_line, at_answer


def _head(server: PacsServer, length: int | None, token: str | None = None) -> str:
    lines = [f"POST {WEBHOOKS} HTTP/1.1", f"Host: 127.0.0.1:{server.http_port}"]
    lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {length}" if length else "Transfer-Encoding: chunked")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return "\r\n".join(lines) + "\r\n\r\n"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_unauthenticated_body_is_refused_unread(server: PacsServer, declared: bool) -> None:
    total = 200 * MiB
    before = _rss(server)
    status_line, at_answer = _upload(server, _head(server, total if declared else None), total)
    assert " 401 " in status_line, status_line
    assert at_answer < total // 4  # answered long before the upload could finish
    assert _rss(server) - before < 50 * MiB


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_oversized_body_is_413(server: PacsServer, declared: bool) -> None:
    admin = server.token("admin")
    total = 64 * MiB
    head = _head(server, total if declared else None, admin)
    status_line, at_answer = _upload(server, head, total)
    assert " 413 " in status_line, status_line
    assert at_answer < total // 2
    # A body just above the cap, sent whole, gets the reason.
    response = httpx.post(
        server.url + WEBHOOKS,
        content=b" " * (MiB + 1),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "1048576" in response.json()["detail"]


def test_malformed_json_is_a_short_400(server: PacsServer) -> None:
    headers = {"Authorization": f"Bearer {server.token('admin')}"}
    for body in (b'{"url": ', b"[]", b'{"url": 5, "events": "x"}'):
        response = httpx.post(server.url + WEBHOOKS, content=body, headers=headers)
        assert response.status_code == 400, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert "invalid webhook" in response.json()["detail"]
        assert len(response.text) < 400
    created = httpx.post(
        server.url + WEBHOOKS,
        json={"url": "http://10.255.0.9/hook", "events": ["study.stable"]},
        headers=headers,
    )
    assert created.status_code == 201
    assert (
        httpx.delete(f"{server.url}{WEBHOOKS}/{created.json()['id']}", headers=headers).status_code
        == 204
    )


def test_out_of_range_integers(server: PacsServer) -> None:
    headers = {"Authorization": f"Bearer {server.token('admin')}"}
    for since in (str(2**63), "-1", "1" * 40, "abc"):
        response = httpx.get(f"{server.url}/api/v1/changes?since={since}", headers=headers)
        assert response.status_code == 400, (since, response.text)
        assert "since" in response.json()["detail"]
    ok = httpx.get(f"{server.url}/api/v1/changes?since={2**63 - 1}", headers=headers)
    assert ok.status_code == 200
    assert ok.json()["changes"] == []
    for webhook_id in ("99999999999999999999999", str(2**63), "0", "-5", str(2**63 - 1)):
        response = httpx.delete(f"{server.url}{WEBHOOKS}/{webhook_id}", headers=headers)
        assert response.status_code in (400, 404), (webhook_id, response.text)


def _token(server: PacsServer, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": "pacs-embedded", "sub": "x", "roles": ["admin"], "iat": now, "exp": now + 60}
    secret = (server.home / "jwt-secret").read_bytes()
    return jwt.encode(claims | overrides, secret, algorithm="HS256")


@pytest.mark.parametrize(
    "claims",
    [
        {"roles": 5},
        {"roles": {"admin": True}},
        {"roles": ["admin", 5]},
        {"roles": [["admin"]]},
        {"roles": None},
        {"sub": 5},
        {"sub": ""},
        {"sub": ["x"]},
        {"exp": "soon"},
        {"exp": [1]},
        {"iat": "now"},
    ],
    ids=json.dumps,
)
def test_odd_claims_are_401(server: PacsServer, claims: dict[str, Any]) -> None:
    token = _token(server, **claims)
    response = httpx.get(
        f"{server.url}/api/v1/changes", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401, response.text
    assert "invalid token" in response.json()["detail"]


def test_single_role_string_still_works(server: PacsServer) -> None:
    response = httpx.get(
        f"{server.url}/api/v1/changes",
        headers={"Authorization": f"Bearer {_token(server, roles='admin')}"},
    )
    assert response.status_code == 200
