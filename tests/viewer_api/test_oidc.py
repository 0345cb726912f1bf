"""Production tokens: verified against an OIDC issuer's JWKS (a real issuer on loopback)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.servers import PacsServer, free_port

AUDIENCE = "pacs-api"


class Issuer:
    """A minimal OIDC issuer: discovery document and JWKS, and tokens signed with its key."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        documents = {
            "/.well-known/openid-configuration": {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/jwks",
            },
            "/jwks": {"keys": [public | {"kid": "k1", "use": "sig", "alg": "RS256"}]},
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(documents.get(self.path, {})).encode()
                self.send_response(200 if self.path in documents else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, roles: list[str], audience: str = AUDIENCE, issuer: str | None = None) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer or self.url,
            "aud": audience,
            "sub": "dr-who",
            "roles": roles,
            "iat": now,
            "exp": now + 300,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    running = Issuer()
    yield running
    running.close()


@pytest.fixture(scope="module")
def server(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    home: Path = tmp_path_factory.mktemp("oidc")
    env = {"PACS_OIDC_ISSUER": issuer.url, "PACS_OIDC_AUDIENCE": AUDIENCE}
    pacs = PacsServer(home / "home", env).start()
    yield pacs
    pacs.stop()


def status(server: PacsServer, token: str) -> int:
    response = httpx.get(
        f"{server.url}/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}
    )
    return response.status_code


def test_issuer_tokens_are_verified_against_its_jwks(server: PacsServer, issuer: Issuer) -> None:
    assert status(server, issuer.token(["radiologist"])) == 200
    assert status(server, issuer.token(["modality"])) == 403
    assert status(server, issuer.token(["radiologist"], audience="another-api")) == 401
    assert status(server, issuer.token(["radiologist"], issuer="https://elsewhere")) == 401
    # The embedded HS256 secret means nothing once an issuer is configured.
    assert status(server, server.token("admin")) == 401
