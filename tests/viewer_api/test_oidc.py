"""Production tokens: verified against an OIDC issuer's JWKS (a real issuer on loopback)."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from tests.servers import PacsServer, free_port, wait_for
from viewer_api.jwks import BACKOFF_MAX, IssuerKeys, IssuerUnavailable
from viewer_api.settings import ApiSettings

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

        # While *hang* is set the issuer accepts connections and never answers (an outage
        # behind a load balancer, the worst case for its clients); *hits* counts requests.
        self.hang = threading.Event()
        self.released = threading.Event()
        self.hits = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.hits += 1
                if issuer.hang.is_set():
                    issuer.released.wait(60)
                    return
                body = json.dumps(documents.get(self.path, {})).encode()
                self.send_response(200 if self.path in documents else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(
        self,
        roles: list[str],
        audience: str = AUDIENCE,
        issuer: str | None = None,
        kid: str = "k1",
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer or self.url,
            "aud": audience,
            "sub": "dr-who",
            "roles": roles,
            "iat": now,
            "exp": now + 300,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.released.set()
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


def test_unknown_key_ids_and_odd_headers_are_401(server: PacsServer, issuer: Issuer) -> None:
    assert status(server, issuer.token(["radiologist"], kid="rotated-away")) == 401
    unsigned = jwt.encode({"iss": issuer.url, "sub": "x"}, None, algorithm="none")
    assert status(server, unsigned) == 401
    no_kid = jwt.encode({"iss": issuer.url, "sub": "x"}, issuer.key, algorithm="RS256")
    assert status(server, no_kid) == 401


def test_an_issuer_without_audience_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="PACS_OIDC_AUDIENCE"):
        ApiSettings(environment="production", oidc_issuer="https://issuer.example")
    ApiSettings(environment="development", oidc_issuer="https://issuer.example")
    ApiSettings(
        environment="production", oidc_issuer="https://issuer.example", oidc_audience="pacs"
    )


def _timed(call: Callable[[], int]) -> tuple[int, float]:
    start = time.monotonic()
    code = call()
    return code, time.monotonic() - start


def test_a_hanging_issuer_costs_one_fetch_not_one_per_request(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    down = Issuer()
    down.hang.set()
    env = {"PACS_OIDC_ISSUER": down.url, "PACS_OIDC_AUDIENCE": AUDIENCE}
    pacs = PacsServer(tmp_path_factory.mktemp("oidc-down") / "home", env).start()
    try:
        valid = down.token(["radiologist"])
        started = time.monotonic()
        with ThreadPoolExecutor(40) as pool:
            pending = [pool.submit(status, pacs, valid) for _ in range(40)]
            # While the fetch hangs, the open route and tokens that cannot be valid answer
            # at once: they never wait for the issuer.
            time.sleep(0.5)
            code, took = _timed(lambda: httpx.get(f"{pacs.url}/healthz").status_code)
            assert (code, took < 1) == (200, True), took
            for garbage in ("not-a-jwt", pacs.token("admin"), down.token([], issuer="https://x")):
                code, took = _timed(functools.partial(status, pacs, garbage))
                assert (code, took < 1) == (401, True), (garbage, took)
            codes = [future.result() for future in pending]
        # All 40 together took about one fetch timeout, not 40 of them one after another.
        assert time.monotonic() - started < 10
        assert set(codes) == {503}
        # More requests during the outage: the failure is remembered (back-off).
        for _ in range(20):
            assert status(pacs, valid) == 503
        assert down.hits <= 3
        # The issuer comes back: after the back-off the keys are fetched and tokens accepted.
        down.hang.clear()
        wait_for(lambda: status(pacs, valid) == 200, 30, "the issuer's keys after the outage")
        logged = pacs.log.read_text()
        assert logged.count("unreachable, backing off") == 1  # one line per outage
        assert logged.count("reachable again") == 1
    finally:
        pacs.stop()
        down.close()


def test_a_day_of_failed_fetches_does_not_wedge_the_key_cache() -> None:
    """The back-off after 2,000 failures stays at its cap (no overflow), and the next try is
    still made once it is due."""
    keys = IssuerKeys("http://127.0.0.1:9")  # nothing listens on the discard port
    for _ in range(2000):
        keys._failed(OSError("connection refused"))
    assert not keys._fetching
    assert keys._retry_at - time.monotonic() <= BACKOFF_MAX
    keys._retry_at = 0.0  # due now
    with pytest.raises(IssuerUnavailable):
        keys.key("any")
    assert not keys._fetching
