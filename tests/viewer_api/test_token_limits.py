"""Token lifetime (PACS_TOKEN_MAX_TTL) and clock skew (PACS_TOKEN_LEEWAY), over the real API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.servers import PacsServer, running

MAX_TTL = 600
LEEWAY = 20


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    env = {"PACS_TOKEN_MAX_TTL": str(MAX_TTL), "PACS_TOKEN_LEEWAY": str(LEEWAY)}
    with running(PacsServer(tmp_path_factory.mktemp("token-limits") / "home", env)) as pacs:
        yield pacs


def signed(server: PacsServer, drop: tuple[str, ...] = (), **times: int) -> str:
    """An embedded token whose iat/exp/nbf are offsets from now (seconds)."""
    now = int(time.time())
    offsets = {"iat": 0, "exp": 300} | times
    claims: dict[str, Any] = {"iss": "pacs-embedded", "sub": "x", "roles": ["radiologist"]}
    claims |= {name: now + offset for name, offset in offsets.items() if name not in drop}
    secret = (server.home / "jwt-secret").read_bytes()
    return jwt.encode(claims, secret, algorithm="HS256")


def get(server: PacsServer, token: str) -> httpx.Response:
    return httpx.get(
        f"{server.url}/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}
    )


def test_lifetime_up_to_the_maximum(limited: PacsServer) -> None:
    assert get(limited, signed(limited, exp=MAX_TTL)).status_code == 200
    too_long = get(limited, signed(limited, exp=MAX_TTL + 1))
    assert too_long.status_code == 401
    assert "PACS_TOKEN_MAX_TTL" in too_long.json()["detail"]
    # Refused for its lifetime alone, though its exp is still ahead.
    assert get(limited, signed(limited, iat=-MAX_TTL - 100, exp=100)).status_code == 401


def test_a_token_must_say_when_it_was_issued(limited: PacsServer) -> None:
    response = get(limited, signed(limited, drop=("iat",)))
    assert response.status_code == 401
    assert "iat" in response.json()["detail"]


def test_clock_skew_within_the_leeway_is_tolerated(limited: PacsServer) -> None:
    # The issuing clock ahead of ours (iat, nbf in our future), or ours ahead (just expired).
    assert get(limited, signed(limited, iat=LEEWAY // 2, exp=300)).status_code == 200
    assert get(limited, signed(limited, nbf=LEEWAY // 2)).status_code == 200
    assert get(limited, signed(limited, iat=-300, exp=-LEEWAY // 2)).status_code == 200


def test_clock_skew_beyond_the_leeway_is_refused(limited: PacsServer) -> None:
    future = get(limited, signed(limited, iat=LEEWAY * 3, exp=300))
    assert future.status_code == 401 and "iat" in future.json()["detail"]
    assert get(limited, signed(limited, nbf=LEEWAY * 3)).status_code == 401
    expired = get(limited, signed(limited, iat=-300, exp=-LEEWAY * 3))
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]


def test_token_create_respects_the_maximum(limited: PacsServer) -> None:
    token = limited.pacs("token", "create", "--role", "radiologist", "--ttl", str(MAX_TTL))
    assert get(limited, token.stdout.strip()).status_code == 200
    refused = limited.pacs(
        "token", "create", "--role", "radiologist", "--ttl", str(MAX_TTL + 1), check=False
    )
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert "PACS_TOKEN_MAX_TTL" in refused.stderr


def test_defaults_allow_a_day_and_thirty_seconds_of_skew(server: PacsServer) -> None:
    """The shared API server runs on the defaults (24 h, 30 s)."""
    day = 24 * 3600
    assert get(server, signed(server, exp=day)).status_code == 200
    assert get(server, signed(server, exp=day + 1)).status_code == 401
    assert get(server, signed(server, iat=-300, exp=-10)).status_code == 200
    assert get(server, signed(server, iat=-300, exp=-60)).status_code == 401
    refused = server.pacs("token", "create", "--role", "admin", "--ttl", str(day + 1), check=False)
    assert refused.returncode == 2
