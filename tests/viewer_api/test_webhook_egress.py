"""Webhook URLs the egress policy refuses, over the real API (default policy: no allow-list).

Each class of destination that would turn the archive into a request forger is a 400 that
says why; public and private addresses are accepted. The allow-list is tested in
tests/pacs/test_webhooks.py, the rules one by one in tests/pacs/test_egress.py.
"""

from __future__ import annotations

import httpx
import pytest

from tests.servers import PacsServer

WEBHOOKS = "/api/v1/webhooks"

# (URL, part of the reason); {http} and {dicom} are the server's own ports.
REFUSED = [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://[fd00:ec2::254]/", "fd00:ec2::254 is a cloud metadata address"),
    ("http://[::ffff:169.254.169.254]/", "(that is 169.254.169.254) is a cloud metadata"),
    ("http://169.254.10.1/", "169.254.10.1 is link-local"),
    ("http://[fe80::1]:8080/", "fe80::1 is link-local"),
    ("http://224.0.0.251/", "224.0.0.251 is multicast"),
    ("http://0.0.0.0:9000/", "0.0.0.0 is unspecified"),
    ("http://255.255.255.255/", "255.255.255.255 is reserved or broadcast"),
    ("http://127.0.0.1:9/", "127.0.0.1 is loopback: allowed only when PACS_WEBHOOK_ALLOW"),
    ("http://[::1]:9/", "::1 is loopback"),
    # Names and number forms resolved by the system resolver, as a delivery would.
    ("http://localhost:9/", "which is loopback: allowed only when"),  # 127.0.0.1 or ::1
    ("http://2130706433:9/", "2130706433 resolves to 127.0.0.1, which is loopback"),
    ("http://127.0.0.1:{http}/api/v1/webhooks", "this archive's own port {http}"),
    ("http://localhost:{dicom}/", "which is where this archive's own port {dicom} listens"),
    ("http://user:secret@10.1.2.3/hook", "credentials in the URL"),
    ("http://10.1.2.3/hook\r\nX-Injected: 1", "whitespace, a control character"),
    ("http://10.1.2.3/a hook", "whitespace, a control character"),
    ("http://10.1.2.3\\@169.254.169.254/", "a backslash"),
    ("file:///etc/passwd", "is not an http(s) URL"),
    ("http://10.1.2.3:70000/", "port 70000 is out of range"),
    ("http://100.64.0.1/", "special-purpose address"),
    ("http://no-such-host.invalid/", "no-such-host.invalid does not resolve"),
]


@pytest.fixture(scope="module")
def admin(server: PacsServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token('admin')}"}


@pytest.mark.parametrize(("url", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_refused_destination_is_a_400_with_the_reason(
    server: PacsServer, admin: dict[str, str], url: str, reason: str
) -> None:
    ports = {"http": server.http_port, "dicom": server.port}
    response = httpx.post(
        server.url + WEBHOOKS,
        json={"url": url.format(**ports), "events": ["study.stable"]},
        headers=admin,
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert detail.startswith("webhook URL refused: ")
    assert reason.format(**ports) in detail, detail
    listed = httpx.get(server.url + WEBHOOKS, headers=admin).json()
    assert url.format(**ports) not in [w["url"] for w in listed]  # nothing stored


@pytest.mark.parametrize(
    "url", ["http://10.1.2.3:8443/hook", "https://[fd12:3456::1]/hook", "https://93.184.215.14/"]
)
def test_private_and_public_addresses_are_accepted(
    server: PacsServer, admin: dict[str, str], url: str
) -> None:
    created = httpx.post(
        server.url + WEBHOOKS, json={"url": url, "events": ["report.final"]}, headers=admin
    )
    assert created.status_code == 201, created.text
    assert created.json()["url"] == url
    deleted = httpx.delete(f"{server.url}{WEBHOOKS}/{created.json()['id']}", headers=admin)
    assert deleted.status_code == 204
