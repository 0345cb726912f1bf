"""Settings of the archive core, read once at start-up from ``PACS_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pacs.egress import EgressPolicy
from pacs.uids import is_valid_ae_title


class PacsSettings(BaseSettings):
    """Validated configuration of the archive core.

    Embedded defaults: SQLite at ``$PACS_HOME/index.db``, blobs under ``$PACS_HOME/storage``,
    DICOM on 127.0.0.1:11112 as AE ``PACS``.
    """

    model_config = SettingsConfigDict(env_prefix="PACS_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    home: Path = Path("var")
    database_url: str | None = None
    storage_url: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    facility: str = Field(default="default", min_length=1, max_length=64)

    ae_title: str = "PACS"
    host: str = "127.0.0.1"
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    # DICOM over TLS (PS3.15 B.1) on its own port (2762 by convention), beside the plain port
    # or instead of it (PACS_DICOM_PLAIN=false); None: no TLS listener.
    dicom_tls_port: int | None = Field(default=None, ge=1, le=65535)
    dicom_tls_cert: Path | None = None  # our certificate (chain), PEM
    dicom_tls_key: Path | None = None  # its private key, PEM
    # CA bundle: client certificates are verified against it, and so are the certificates of
    # C-MOVE destinations registered with --tls (the system's CAs when unset).
    dicom_tls_ca: Path | None = None
    dicom_tls_require_client_cert: bool = False
    # Whether the plain (unencrypted) port PACS_DICOM_PORT is opened.
    dicom_plain: bool = True
    # Several receiver processes share the DICOM port to use more than one core
    # (pacs.dimse.accept); several processes serve the HTTP API (pacs.cli.serve_http).
    receivers: int = Field(default=1, ge=1, le=64)
    http_processes: int = Field(default=1, ge=1, le=64)
    max_associations: int = Field(default=32, ge=1)
    # Associations one peer address may hold open at once (pacs.dimse.limits): one peer that
    # opens associations and sends nothing must not hold every PACS_MAX_ASSOCIATIONS slot.
    max_associations_per_peer: int = Field(default=8, ge=1)
    network_timeout: float = Field(default=60.0, gt=0)
    # Seconds an association may stay silent before its first P-DATA (and a connection before
    # its A-ASSOCIATE-RQ); then it is aborted and its slot freed. PACS_NETWORK_TIMEOUT after.
    association_idle_timeout: float = Field(default=10.0, gt=0)
    # Seconds after its last instance that a study counts as complete (study.stable event).
    stable_age: float = Field(default=60.0, gt=0)
    # Seconds a study that looks incomplete waits instead (its last DIMSE send was broken off
    # or failed transiently, or a series has InstanceNumber gaps: pacs.stability). Unset: ten
    # times stable_age.
    stable_age_incomplete: float | None = Field(default=None, gt=0)
    # Matches one C-FIND returns at most (a query for everything must not flood the peer).
    max_query_results: int = Field(default=1000, ge=1)
    # Whether an AE title missing from the AE registry may associate (with every permission
    # but replace).
    # Default: yes in development, no in production (where yes is refused).
    dimse_allow_unknown: bool | None = None
    # Days a superseded instance version (a permitted replacement's old blob) is kept before
    # ``pacs versions --purge-expired`` (and the sweeper of ``pacs serve``) deletes it.
    version_retention_days: float = Field(default=365.0, ge=0)
    # Seconds one audited store covers the same sender's further stores of that series (they
    # are counted in a summary event when the window closes: pacs.audit.covering); 0: one
    # event per stored instance.
    audit_store_window: float = Field(default=60.0, ge=0, le=3600)
    # Change feed: how long a gap in the sequence may be an uncommitted transaction (seconds).
    change_settle: float = Field(default=5.0, ge=0)
    # Webhook retries: first back-off and its cap (seconds).
    webhook_backoff: float = Field(default=2.0, gt=0)
    webhook_max_backoff: float = Field(default=600.0, gt=0)
    # Where webhooks may go (JSON list of host names, addresses and networks); empty: public
    # and private addresses (see pacs.egress). Loopback only when listed here.
    webhook_allow: list[str] = Field(default_factory=list)
    # The HS256 secret of embedded tokens, when several nodes must accept each other's tokens:
    # one file (0600, 32+ bytes) every node reads. Unset: $PACS_HOME/jwt-secret, this node's.
    jwt_secret_file: Path | None = None
    # The AES key sealing webhook secrets, when several nodes deliver webhooks: one file
    # (0600, 32+ bytes) every node reads. Unset: $PACS_HOME/secret-key, this node's.
    secret_key_file: Path | None = None
    # PostgreSQL connections each pool keeps, and may add under load: every process opens one
    # pool for its archive (the README's "Operating it" sizes them against max_connections).
    db_pool_size: int = Field(default=5, ge=1, le=1000)
    db_max_overflow: int = Field(default=5, ge=0, le=1000)
    # Log lines as text or as one JSON object each (request / association id on every line).
    log_format: Literal["text", "json"] = "text"
    # The API's port (ApiSettings.http_port, same variable): never a webhook destination.
    http_port: int = Field(default=8000, ge=1, le=65535)

    @model_validator(mode="after")
    def _check(self) -> PacsSettings:
        if not is_valid_ae_title(self.ae_title):
            raise ValueError(f"PACS_AE_TITLE {self.ae_title!r} is not a valid AE title")
        if self.resolved_stable_age_incomplete < self.stable_age:
            raise ValueError("PACS_STABLE_AGE_INCOMPLETE is shorter than PACS_STABLE_AGE")
        self._check_tls()
        try:
            self.egress_policy()
        except ValueError as exc:
            raise ValueError(f"PACS_WEBHOOK_ALLOW: {exc}") from exc
        if self.environment == "production":
            if (
                self.storage_url
                and self.storage_url.startswith("s3://")
                and not (self.s3_access_key and self.s3_secret_key)
            ):
                raise ValueError("production S3 storage needs PACS_S3_ACCESS_KEY/SECRET_KEY")
            if self.host not in ("127.0.0.1", "localhost", "::1") and (
                self.database_url is None or self.database_url.startswith("sqlite")
            ):
                raise ValueError(
                    "production on a network address needs PACS_DATABASE_URL (PostgreSQL)"
                )
            if self.dimse_allow_unknown:
                raise ValueError(
                    "PACS_DIMSE_ALLOW_UNKNOWN=true is refused in production: register each "
                    "peer with `pacs ae add`"
                )
        return self

    def _check_tls(self) -> None:
        """The TLS settings must agree with each other (the files are read at start-up)."""
        if self.dicom_tls_port is not None:
            if self.dicom_tls_cert is None or self.dicom_tls_key is None:
                raise ValueError("PACS_DICOM_TLS_PORT needs PACS_DICOM_TLS_CERT and _KEY")
            if self.dicom_plain and self.dicom_tls_port == self.dicom_port:
                raise ValueError("PACS_DICOM_TLS_PORT must differ from PACS_DICOM_PORT")
        elif not self.dicom_plain:
            raise ValueError("PACS_DICOM_PLAIN=false needs PACS_DICOM_TLS_PORT")
        if (self.dicom_tls_cert is None) != (self.dicom_tls_key is None):
            raise ValueError("PACS_DICOM_TLS_CERT and PACS_DICOM_TLS_KEY go together")
        if self.dicom_tls_require_client_cert and (
            self.dicom_tls_ca is None or self.dicom_tls_port is None
        ):
            raise ValueError(
                "PACS_DICOM_TLS_REQUIRE_CLIENT_CERT needs PACS_DICOM_TLS_PORT and "
                "PACS_DICOM_TLS_CA (the CA client certificates are verified against)"
            )

    @property
    def allows_unknown_aes(self) -> bool:
        """PACS_DIMSE_ALLOW_UNKNOWN, or its default for the environment."""
        if self.dimse_allow_unknown is None:
            return self.environment == "development"
        return self.dimse_allow_unknown

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'index.db').resolve()}"

    @property
    def resolved_stable_age_incomplete(self) -> float:
        """PACS_STABLE_AGE_INCOMPLETE, ten times PACS_STABLE_AGE when unset."""
        if self.stable_age_incomplete is None:
            return self.stable_age * 10
        return self.stable_age_incomplete

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.home / 'storage').resolve()}"

    def egress_policy(self) -> EgressPolicy:
        """Where webhooks may be sent: the allow-list, never to our own ports."""
        tls = () if self.dicom_tls_port is None else (self.dicom_tls_port,)
        own_ports = (self.dicom_port, *tls, self.http_port)
        return EgressPolicy.parse(self.webhook_allow, own_ports, self.host)
