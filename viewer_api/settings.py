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
    # Production without an issuer: tokens signed with the embedded secret are refused unless
    # this says a single site runs without an identity provider on purpose.
    allow_embedded_tokens: bool = False
    # The longest lifetime (exp - iat, seconds) a token may have: `pacs token create --ttl`
    # may not ask for more, and a verified token spanning more is a 401.
    token_max_ttl: int = Field(default=24 * 3600, ge=60)
    # Clock skew tolerated on exp, nbf and iat (seconds); PyJWT's leeway.
    token_leeway: int = Field(default=30, ge=0, le=300)
    # The token claim listing the facilities a token speaks for (an OIDC issuer's mapper may
    # emit another name); "*" in it: every facility (admin tokens only).
    facilities_claim: str = Field(default="facilities", min_length=1, max_length=64)
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
    # Seconds a client has to send a request's headers before its connection is closed
    # (slow-loris defence: viewer_api.http_protocol).
    http_header_timeout: float = Field(default=10.0, gt=0)
    # While a request body is incomplete, every window of this many seconds must bring 1 KiB
    # of it, or the connection is closed (slow-loris defence: viewer_api.http_protocol).
    http_body_timeout: float = Field(default=30.0, gt=0)
    # Seconds one audit event covers a reader's further frame reads of the same series (the
    # rest are counted in a summary event when the window closes: pacs.audit.covering); 0: one
    # event per frame request.
    audit_frame_window: float = Field(default=60.0, ge=0, le=3600)
    # Same as PacsSettings.change_settle: a sequence gap younger than this may still commit.
    change_settle: float = Field(default=5.0, ge=0)
    # The project's secret key for de-identified export (POST /api/v1/exports; the same file
    # `pacs export --project-key-file` reads): unset, the API exports nothing.
    export_key_file: Path | None = None
    # The unpacked OHIF viewer (npm @ohif/app's dist/) served at /viewer; unset: build/ohif of
    # the checkout, where `make install` puts it.
    ohif_dir: Path | None = None
    # A bearer token (16+ characters) Prometheus may scrape /metrics with, besides an admin
    # token: it grants nothing else. PACS_METRICS_TOKEN_FILE: the same, read from a file.
    metrics_token: str | None = Field(default=None, min_length=16)
    metrics_token_file: Path | None = None

    def scrape_token(self) -> str | None:
        """PACS_METRICS_TOKEN, or the first line of PACS_METRICS_TOKEN_FILE.

        Raises
        ------
        ValueError
            The file cannot be read, or its token is shorter than 16 characters.
        """
        if self.metrics_token_file is None:
            return self.metrics_token
        try:
            token = self.metrics_token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"PACS_METRICS_TOKEN_FILE: {exc}") from exc
        if len(token) < 16:
            raise ValueError("PACS_METRICS_TOKEN_FILE holds a token shorter than 16 characters")
        return token

    @model_validator(mode="after")
    def _production(self) -> Self:
        """Refuse, in production, what would let someone else speak for a user."""
        if self.environment != "production":
            return self
        if self.oidc_issuer and not self.oidc_audience:
            # Without an audience any token of the issuer, minted for any application, would do.
            raise ValueError("PACS_OIDC_AUDIENCE is required with PACS_OIDC_ISSUER in production")
        if not self.oidc_issuer and not self.allow_embedded_tokens:
            raise ValueError(
                "production needs PACS_OIDC_ISSUER and PACS_OIDC_AUDIENCE: tokens signed with "
                "the embedded secret ($PACS_HOME/jwt-secret) cannot be revoked and name no "
                "managed account; a single site without an identity provider may set "
                "PACS_ALLOW_EMBEDDED_TOKENS=true instead"
            )
        wildcards = [o for o in self.cors_origins if "*" in o or o.strip().lower() == "null"]
        if wildcards:
            raise ValueError(
                f"PACS_CORS_ORIGINS {wildcards} is refused in production: list the exact "
                'origins of the viewers (e.g. ["https://viewer.example.org"])'
            )
        if self.trusted_proxies and not (self.public_url or "").lower().startswith("https://"):
            raise ValueError(
                "PACS_TRUSTED_PROXIES is set, so clients come through a proxy: in production "
                "PACS_PUBLIC_URL must be the https:// address they use "
                "(e.g. https://pacs.example.org)"
            )
        return self
