"""Every API route x {no token, bad tokens, each role} gives the documented status."""

from __future__ import annotations

import re
import time

import httpx
import jwt
import pytest

from tests.servers import PacsServer

UID = "1.2.3.4"
# Images and the change feed: radiologist and admin; the EMR reads results only (least
# privilege: pixels reach a clinician through a viewer link and the clinician's own token).
IMAGE_ROUTES = [
    "/dicom-web/studies",
    "/dicom-web/series",
    "/dicom-web/instances",
    f"/dicom-web/studies/{UID}/series",
    f"/dicom-web/studies/{UID}/instances",
    f"/dicom-web/studies/{UID}/series/{UID}/instances",
    f"/dicom-web/studies/{UID}",
    f"/dicom-web/studies/{UID}/series/{UID}",
    f"/dicom-web/studies/{UID}/series/{UID}/instances/{UID}",
    f"/dicom-web/studies/{UID}/metadata",
    f"/dicom-web/studies/{UID}/series/{UID}/metadata",
    f"/dicom-web/studies/{UID}/series/{UID}/instances/{UID}/metadata",
    "/wado",
    f"/dicom-web/studies/{UID}/series/{UID}/instances/{UID}/bulkdata/7FE00010",
    f"/dicom-web/studies/{UID}/series/{UID}/instances/{UID}/frames/1",
    f"/dicom-web/studies/{UID}/series/{UID}/instances/{UID}/rendered",
    f"/dicom-web/studies/{UID}/series/{UID}/instances/{UID}/frames/1/rendered",
    f"/dicom-web/studies/{UID}/series/{UID}/instances/{UID}/thumbnail",
    f"/dicom-web/studies/{UID}/series/{UID}/thumbnail",
    f"/dicom-web/studies/{UID}/thumbnail",
    "/api/v1/changes",
]
# Results: FHIR and the findings API, for the EMR too.
RESULT_ROUTES = [
    f"/api/v1/studies/{UID}/findings",
    "/fhir/metadata",
    "/fhir/ImagingStudy",
    f"/fhir/ImagingStudy/{UID}",
    "/fhir/Patient",
    "/fhir/Patient/1",
    "/fhir/Endpoint/wado-rs",
    "/fhir/DiagnosticReport",
    "/fhir/DiagnosticReport/ai-1",
    "/fhir/Observation/ai-1-1",
]
READ_ROUTES = IMAGE_ROUTES + RESULT_ROUTES
WRITE_ROUTES = ["/dicom-web/studies", f"/dicom-web/studies/{UID}"]
# Administration: admin only, whatever the method.
ADMIN_ROUTES = [
    ("GET", "/api/v1/webhooks"),
    ("POST", "/api/v1/webhooks"),
    ("DELETE", "/api/v1/webhooks/1"),
    ("GET", "/fhir/AuditEvent"),
    ("GET", "/fhir/AuditEvent/1"),
    ("GET", f"/api/v1/studies/{UID}/shares"),
    ("POST", f"/api/v1/studies/{UID}/shares"),
    ("DELETE", "/api/v1/shares/1"),
    ("POST", "/api/v1/exports"),
    ("GET", "/metrics"),  # or PACS_METRICS_TOKEN (tests/viewer_api/test_metrics.py)
]
# Open to anyone: liveness and readiness probes.
OPEN_ROUTES = ["/healthz", "/readyz"]
# Radiologists and administrators only (the worklist, the review): not the EMR, not a modality.
REVIEW = f"/api/v1/studies/{UID}/review"
RADIOLOGIST_ROUTES = [
    ("GET", "/api/v1/worklist"),
    ("GET", REVIEW),
    *[
        ("POST", f"{REVIEW}{action}")
        for action in (
            f"/findings/{UID}/confirm",
            f"/findings/{UID}/reject",
            f"/findings/{UID}/correct",
            "/findings",
            "/impression",
            "/lung-rads",
            "/sign",
        )
    ],
]
ROLES = ["modality", "radiologist", "emr", "admin"]
IMAGE_READERS = {"radiologist", "admin"}
RESULT_READERS = {"radiologist", "emr", "admin"}
WRITERS = {"modality", "admin"}
STOW_HEADERS = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
EMPTY_STOW = b"--b--\r\n"


def call(server: PacsServer, method: str, route: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if method == "POST":
        headers |= STOW_HEADERS
        return httpx.post(server.url + route, content=EMPTY_STOW, headers=headers).status_code
    return httpx.get(server.url + route, headers=headers).status_code


@pytest.fixture(scope="module")
def tokens(server: PacsServer) -> dict[str, str]:
    # The admin speaks for every facility: the audit trail is read by such an admin only.
    return {
        role: server.token(role, facilities=("*",) if role == "admin" else ()) for role in ROLES
    }


def test_every_route_is_in_this_matrix(server: PacsServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    for path, operations in spec["paths"].items():
        if path in OPEN_ROUTES:
            continue
        concrete = re.sub(r"\{(study|series|instance|finding)\}", UID, path)
        concrete = (
            concrete.replace("{tag}", "7FE00010").replace("{frames}", "1").replace("{frame}", "1")
        )
        concrete = re.sub(r"\{(patient|webhook_id|share_id|event)\}", "1", concrete)
        concrete = concrete.replace("{endpoint}", "wado-rs").replace("{report}", "ai-1")
        concrete = concrete.replace("{observation}", "ai-1-1")
        for method in operations:
            if (method.upper(), concrete) in ADMIN_ROUTES + RADIOLOGIST_ROUTES:
                continue
            matrix = READ_ROUTES if method == "get" else WRITE_ROUTES
            assert concrete in matrix, (method, path)


@pytest.mark.parametrize(
    ("route", "readers"),
    [(r, IMAGE_READERS) for r in IMAGE_ROUTES] + [(r, RESULT_READERS) for r in RESULT_ROUTES],
)
def test_read_routes(
    server: PacsServer, tokens: dict[str, str], route: str, readers: set[str]
) -> None:
    assert call(server, "GET", route, None) == 401
    assert call(server, "GET", route, "not-a-jwt") == 401
    for role in ROLES:
        code = call(server, "GET", route, tokens[role])
        if role in readers:
            assert code not in (401, 403), (route, role, code)
        else:
            assert code == 403, (route, role, code)


@pytest.mark.parametrize("route", WRITE_ROUTES)
def test_write_routes(server: PacsServer, tokens: dict[str, str], route: str) -> None:
    assert call(server, "POST", route, None) == 401
    for role in ROLES:
        code = call(server, "POST", route, tokens[role])
        if role in WRITERS:
            assert code not in (401, 403), (route, role, code)
        else:
            assert code == 403, (route, role, code)


@pytest.mark.parametrize(("method", "route"), ADMIN_ROUTES)
def test_admin_routes(server: PacsServer, tokens: dict[str, str], method: str, route: str) -> None:
    def status(token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.request(
            method, server.url + route, headers=headers, json={"url": "x", "events": []}
        ).status_code

    assert status(None) == 401
    for role in ROLES:
        code = status(tokens[role])
        if role == "admin":
            assert code not in (401, 403), (route, role, code)
        else:
            assert code == 403, (route, role, code)


@pytest.mark.parametrize(("method", "route"), RADIOLOGIST_ROUTES)
def test_radiologist_routes(
    server: PacsServer, tokens: dict[str, str], method: str, route: str
) -> None:
    assert call(server, method, route, None) == 401
    for role in ROLES:
        code = call(server, method, route, tokens[role])
        if role in ("radiologist", "admin"):
            assert code not in (401, 403), (route, role, code)
        else:
            assert code == 403, (route, role, code)


def test_forged_and_expired_tokens_are_refused(server: PacsServer) -> None:
    now = int(time.time())
    claims = {"iss": "pacs-embedded", "sub": "x", "roles": ["admin"], "iat": now, "exp": now + 60}
    forged = jwt.encode(claims, b"another secret entirely, 32 bytes!", algorithm="HS256")
    response = httpx.get(
        f"{server.url}/dicom-web/studies", headers={"Authorization": f"Bearer {forged}"}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "invalid token" in response.json()["detail"]
    secret = (server.home / "jwt-secret").read_bytes()
    # Expired beyond the 30 s of clock skew tolerated by default (PACS_TOKEN_LEEWAY).
    expired = jwt.encode(claims | {"exp": now - 120}, secret, algorithm="HS256")
    response = httpx.get(
        f"{server.url}/dicom-web/studies", headers={"Authorization": f"Bearer {expired}"}
    )
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]
    for route in OPEN_ROUTES:  # the open routes
        assert httpx.get(server.url + route).status_code == 200
