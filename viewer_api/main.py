"""The HTTP application: DICOMweb under /dicom-web, /healthz, OpenAPI docs."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from pacs.audit.covering import CoveredEvents
from pacs.egress import EgressPolicy
from pacs.ingest import Archive
from pacs.secretbox import SecretBox
from pacs.webhooks import configured_egress
from viewer_api import (
    changes,
    exports,
    findings,
    limits,
    observability,
    ohif,
    pages,
    problems,
    qido,
    render,
    review,
    shares,
    stow,
    wado,
    wado_uri,
    worklist,
)
from viewer_api.audit import AuditMiddleware
from viewer_api.auth import TokenVerifier
from viewer_api.compressed import CompressedBodies
from viewer_api.fhir import audit as fhir_audit
from viewer_api.fhir import routes as fhir
from viewer_api.settings import ApiSettings


def create_app(
    archive: Archive,
    verifier: TokenVerifier,
    settings: ApiSettings,
    egress: EgressPolicy | None = None,
    secret_box: SecretBox | None = None,
) -> FastAPI:
    """Assemble the API around an open archive, a token verifier (held to the settings' token
    lifetime and clock skew) and the webhook egress policy (default: the one
    ``PACS_WEBHOOK_ALLOW`` and the ports describe), and the box that seals webhook secrets
    (default: the one under ``PACS_HOME``, made when first needed)."""
    app = FastAPI(title="PACS-AI", version="0.1.0", docs_url="/docs")
    app.state.archive = archive
    # The lifetime and skew limits are settings of the API, whoever built the verifier.
    app.state.verifier = verifier.limited(
        settings.token_max_ttl, settings.token_leeway, settings.facilities_claim
    )
    app.state.max_stow_bytes = settings.max_stow_bytes
    app.state.change_settle = settings.change_settle
    app.state.public_url = settings.public_url
    app.state.trusted_proxies = frozenset(settings.trusted_proxies)
    app.state.egress = egress or configured_egress()
    app.state.secret_box = secret_box
    app.state.export_key_file = settings.export_key_file
    app.state.metadata_gzip = CompressedBodies()
    app.state.frame_reads = CoveredEvents(archive.audit.record, settings.audit_frame_window)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Accept", "If-Match", "If-None-Match"],
            expose_headers=["ETag"],
        )
    problems.install(app)
    limits.install(app, settings.max_json_bytes)
    # Outside the body limit, so that a refused request is audited too.
    app.add_middleware(AuditMiddleware)
    for module in (
        qido,
        wado,
        wado_uri,
        render,
        stow,
        findings,
        changes,
        fhir,
        worklist,
        review,
        shares,
        exports,
    ):
        app.include_router(module.router)
    app.include_router(fhir_audit.router)

    app.include_router(pages.router(pages.PageSettings(oidc_issuer=settings.oidc_issuer)))

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        # A coroutine: a sync route (and its response's validation) took two worker-thread
        # hand-overs per probe.
        return {"status": "ok"}

    # /metrics, /readyz, and the request id and metrics of every request (outermost).
    observability.install(app, settings.scrape_token())

    # Last: OHIF's files are served at the root by a catch-all that takes any GET left over.
    app.include_router(ohif.router(ohif.OhifDist.open(settings.ohif_dir or ohif.DEFAULT_DIST)))

    return app
