"""Verified tokens taken again from memory (viewer_api.auth.VERIFIED_FOR): not decoded twice,
never past their expiry, never across verifiers with other limits, never when forged."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from viewer_api import auth
from viewer_api.auth import ISSUER, Role, TokenVerifier, create_token
from viewer_api.problems import Unauthorized

SECRET = b"s" * 32


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens PyJWT was asked to verify."""
    seen: list[str] = []
    decode = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting)
    return seen


def test_a_verified_token_is_not_decoded_again(decodes: list[str]) -> None:
    verifier = TokenVerifier(secret=SECRET)
    token = create_token(SECRET, "dr-a", [Role.RADIOLOGIST], 3600)
    first = verifier.verify(token)
    assert [verifier.verify(token) for _ in range(5)] == [first] * 5
    assert decodes == [token]


def test_a_cached_token_expires_when_it_says(decodes: list[str]) -> None:
    verifier = TokenVerifier(secret=SECRET, leeway=0)
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "dr-a", "roles": ["radiologist"], "iat": now, "exp": now + 2}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert verifier.verify(token).subject == "dr-a"
    time.sleep(max(0.0, now + 2.1 - time.time()))
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token)
    assert decodes == [token, token]


def test_a_cached_token_is_verified_again_after_verified_for(
    decodes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(secret=SECRET)
    token = create_token(SECRET, "dr-a", [Role.RADIOLOGIST], 3600)
    verifier.verify(token)
    monkeypatch.setattr(auth, "VERIFIED_FOR", 0.0)
    verifier.verify(token)
    assert decodes == [token, token]


def test_a_forged_token_is_never_taken_from_memory() -> None:
    verifier = TokenVerifier(secret=SECRET)
    token = create_token(SECRET, "dr-a", [Role.RADIOLOGIST], 3600)
    verifier.verify(token)
    forged = create_token(b"x" * 32, "dr-a", [Role.RADIOLOGIST], 3600)
    with pytest.raises(Unauthorized):
        verifier.verify(forged)
    head, payload, _ = token.split(".")
    with pytest.raises(Unauthorized):
        verifier.verify(f"{head}.{payload}.{forged.split('.')[2]}")


def test_verifiers_with_other_limits_do_not_share_what_they_verified() -> None:
    verifier = TokenVerifier(secret=SECRET)
    token = create_token(SECRET, "dr-a", [Role.RADIOLOGIST], 3600)
    assert verifier.verify(token).subject == "dr-a"
    shorter = verifier.limited(max_ttl=600, leeway=30)
    with pytest.raises(Unauthorized, match="lifetime"):
        shorter.verify(token)
    assert verifier.verify(token).subject == "dr-a"
