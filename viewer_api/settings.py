"""Settings of the HTTP API, from ``PACS_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """Validated configuration of the HTTP API (DICOMweb)."""

    model_config = SettingsConfigDict(env_prefix="PACS_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    http_port: int = Field(default=8000, ge=1, le=65535)
    # Production: verify tokens from this OIDC issuer (JWKS) instead of the embedded secret.
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    # Browser origins allowed to call the API (viewers such as OHIF run elsewhere).
    cors_origins: list[str] = Field(default_factory=list)
    # The API's public root as clients reach it (e.g. https://pacs.example.org): the base of
    # RetrieveURL, BulkDataURI and FHIR links. Unset: the address the request came to, which
    # is only right without a proxy in front.
    public_url: str | None = None
    # Addresses of reverse proxies whose X-Forwarded-Proto/Host are believed (when no
    # public_url is set); any other client's forwarding headers are ignored.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Largest STOW-RS request body accepted (413 above).
    max_stow_bytes: int = Field(default=2 * 1024**3, ge=1)
    # Largest body of every other request (JSON: webhooks, ...); 413 above, 401 before reading.
    max_json_bytes: int = Field(default=1024**2, ge=1)
    # Same as PacsSettings.change_settle: a sequence gap younger than this may still commit.
    change_settle: float = Field(default=5.0, ge=0)
    # The unpacked OHIF viewer (npm @ohif/app's dist/) served at /viewer; unset: build/ohif of
    # the checkout, where `make install` puts it.
    ohif_dir: Path | None = None

    @model_validator(mode="after")
    def _audience_in_production(self) -> Self:
        # Without an audience any token of the issuer, minted for any application, would do.
        if self.environment == "production" and self.oidc_issuer and not self.oidc_audience:
            raise ValueError("PACS_OIDC_AUDIENCE is required with PACS_OIDC_ISSUER in production")
        return self
