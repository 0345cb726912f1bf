"""The HTTP API's settings refuse, in production, what would let someone else speak for a user."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from viewer_api.settings import ApiSettings

OIDC = {"oidc_issuer": "https://login.example.org", "oidc_audience": "pacs"}


@pytest.fixture(autouse=True)
def _no_pacs_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the settings a test names: none of this process's PACS_* variables."""
    for name in list(os.environ):
        if name.startswith("PACS_"):
            monkeypatch.delenv(name)


def production(**settings: Any) -> ApiSettings:
    return ApiSettings(environment="production", **settings)


def test_production_refuses_the_embedded_secret_without_the_override() -> None:
    with pytest.raises(ValidationError, match="PACS_OIDC_ISSUER") as refused:
        production()
    assert "PACS_ALLOW_EMBEDDED_TOKENS=true" in str(refused.value)
    production(**OIDC)
    production(allow_embedded_tokens=True)  # a single site without an identity provider
    ApiSettings()  # development: the embedded secret, as on every laptop


def test_the_override_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_ENVIRONMENT", "production")
    monkeypatch.setenv("PACS_ALLOW_EMBEDDED_TOKENS", "false")
    with pytest.raises(ValidationError, match="PACS_OIDC_ISSUER"):
        ApiSettings()
    monkeypatch.setenv("PACS_ALLOW_EMBEDDED_TOKENS", "true")
    assert ApiSettings().allow_embedded_tokens


@pytest.mark.parametrize(
    "origins", [["*"], ["https://viewer.example.org", "*"], ["https://*.example.org"], ["null"]]
)
def test_production_refuses_wildcard_cors_origins(origins: list[str]) -> None:
    with pytest.raises(ValidationError, match=r"PACS_CORS_ORIGINS.*exact origins"):
        production(cors_origins=origins, **OIDC)
    ApiSettings(cors_origins=origins)  # development: a viewer on any dev server


def test_production_takes_exact_cors_origins() -> None:
    settings = production(cors_origins=["https://viewer.example.org"], **OIDC)
    assert settings.cors_origins == ["https://viewer.example.org"]


@pytest.mark.parametrize("public_url", [None, "http://pacs.example.org", "pacs.example.org"])
def test_production_behind_a_proxy_needs_an_https_public_url(public_url: str | None) -> None:
    with pytest.raises(ValidationError, match=r"PACS_TRUSTED_PROXIES.*PACS_PUBLIC_URL.*https://"):
        production(trusted_proxies=["10.0.0.2"], public_url=public_url, **OIDC)
    ApiSettings(trusted_proxies=["10.0.0.2"], public_url=public_url)


def test_production_behind_a_proxy_with_https_starts() -> None:
    production(trusted_proxies=["10.0.0.2"], public_url="https://pacs.example.org", **OIDC)
    production(public_url="http://127.0.0.1:8000", **OIDC)  # no proxy declared: not our call


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PACS_TOKEN_MAX_TTL", "59"), ("PACS_TOKEN_LEEWAY", "-1"), ("PACS_TOKEN_LEEWAY", "301")],
)
def test_token_limits_have_bounds(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("PACS_").lower()):
        ApiSettings()


def test_token_limit_defaults() -> None:
    settings = ApiSettings()
    assert (settings.token_max_ttl, settings.token_leeway) == (24 * 3600, 30)


def test_serve_refuses_to_start_in_production_with_the_embedded_secret(tmp_path: Path) -> None:
    """The whole server, not only the settings class: nothing listens, the reason is printed."""
    env = {
        "PATH": os.environ["PATH"],
        "PACS_HOME": str(tmp_path / "home"),
        "PACS_ENVIRONMENT": "production",
        "PACS_WORKERS": "0",
    }

    def pacs(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pacs.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert pacs("db", "upgrade").returncode == 0  # production does not migrate on start
    result = pacs("serve")
    assert result.returncode != 0
    assert "PACS_OIDC_ISSUER" in result.stdout + result.stderr
