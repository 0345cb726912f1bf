"""The audit trail of the HTTP API: one event per request that touches patient data.

One ASGI middleware, so no route can forget it. It writes the event when the response
starts, before the first byte of the body goes out (for a streamed response: before
streaming starts), with the final status as outcome; when the event cannot be written the
client gets a 503 problem instead of the data. Who comes from the verified token the route's
role check left in the request state (subject, roles, facilities, jti); a 401 is a
``login_failure`` with the remote address only. What comes from the route: its action (QIDO
and FHIR searches query; WADO, frames, rendered, metadata and FHIR reads retrieve; review
actions review; sign signs; ...) and its ``{study}``/``{series}``/``{instance}`` path
parameters, the query string in the detail.

A successful STOW-RS request is not recorded here: the ingest path records each stored
instance with the same who and where, in the instance's own transaction. Review actions,
signatures and sharing grants are recorded twice on purpose: the request here (from where,
with what status), the change in its transaction (:mod:`pacs.review`, :mod:`pacs.sharing`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs.audit import AuditAction, AuditEvent, AuditOutcome
from pacs.audit.covering import CoveredEvents
from pacs.errors import IndexUnavailable
from pacs.index.schema import patient
from pacs.ingest import Archive
from pacs.uids import is_valid_uid
from viewer_api.auth import Principal

log = logging.getLogger(__name__)

#: Paths that serve or change patient data (everything else: pages, OHIF, docs, health).
AUDITED_PREFIXES = ("/dicom-web/", "/wado", "/fhir/", "/api/v1/")
#: Of those, the ones that do not: server metadata and webhook configuration.
NOT_PATIENT_DATA = ("/fhir/metadata", "/api/v1/webhooks")
# Query strings are kept in the event up to this length (they are the search's keys).
MAX_QUERY = 2000
_QIDO_RESOURCES = ("/studies", "/series", "/instances")
# Routes whose successful reads one event covers per series and reader (pacs.audit.covering).
FRAME_ROUTES = ("/frames/{frames}", "/frames/{frame}/rendered")
# Request state: the status a route recorded its request with itself (audited_response).
AUDITED = "audited_status"


class AuditMiddleware:
    """Record every patient-data request before its response body is sent (see module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _audited_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # shared with the request, whose route sets principal
        started = refused = False

        async def audited_send(message: Message) -> None:
            nonlocal started, refused
            if message["type"] == "http.response.start" and not started:
                started = True
                status = int(message["status"])
                if scope["state"].get(AUDITED) == status:
                    await send(message)  # recorded by its route's thread (audited_response)
                    return
                try:
                    await _audit(scope, status)
                except IndexUnavailable as exc:
                    log.error("request %s %s not audited, refused: %s", *_line(scope), exc)
                    refused = True
                    await _unavailable(scope)(scope, receive, send)
                    return
            if not refused:
                await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if not started:  # an unexpected error: audited (best effort) as a serious failure
                try:
                    await run_in_threadpool(_record, scope, 500)
                except IndexUnavailable as exc:
                    log.error("failed request %s %s not audited: %s", *_line(scope), exc)
            raise


def audited_response(request: Request, response: Response) -> Response:
    """*response*, its request's event committed first, by the calling thread: for a sync
    route, whose worker thread would otherwise hand the response to the event loop, which
    hands the event to a worker thread again (that hand-over and back: ~0.2 ms of a ~3 ms
    study QIDO). The middleware then sends the response without recording it again. When the
    event cannot be written, the 503 the middleware would send instead."""
    scope = request.scope
    try:
        _record(scope, response.status_code)
    except IndexUnavailable as exc:
        log.error("request %s %s not audited, refused: %s", *_line(scope), exc)
        response = _unavailable(scope)
    scope["state"][AUDITED] = response.status_code
    return response


def _audited_path(path: str) -> bool:
    return path.startswith(AUDITED_PREFIXES) and not path.startswith(NOT_PATIENT_DATA)


async def _audit(scope: Scope, status: int) -> None:
    """Record the request answered with *status* (see :func:`_record`); a successful frame
    read is built here and, when an open window covers it, only counted
    (:class:`pacs.audit.covering.CoveredEvents`): no worker thread, no commit."""
    path = _route_path(scope)
    if scope["method"] == "GET" and status == 200 and path.endswith(FRAME_ROUTES):
        frame_reads: CoveredEvents = scope["app"].state.frame_reads
        event = _event(scope, status, path)
        if event is not None and not frame_reads.covered(event):
            await run_in_threadpool(frame_reads.record, event)
        return
    await run_in_threadpool(_record, scope, status)


def _record(scope: Scope, status: int) -> None:
    """Write the event of a request answered with *status*, returning once it is committed
    (IndexUnavailable: not written). Concurrent requests share commits
    (:class:`pacs.audit.group.GroupCommit`)."""
    path = _route_path(scope)
    event = _event(scope, status, path)
    if event is None:
        return
    archive: Archive = scope["app"].state.archive
    if "patient" in (scope.get("path_params") or {}) and path.startswith("/fhir/"):
        with archive.db.read() as conn:
            event = _with_fhir_patient(conn, event, scope["path_params"]["patient"])
    archive.audit.record(event)  # committed, with the events of concurrent requests


def _event(scope: Scope, status: int, path: str) -> AuditEvent | None:
    """The event of a request to route *path* answered with *status*; None: not one to record
    here."""
    method = scope["method"]
    action = action_of(method, path, status)
    if action is None:
        return None
    principal: Principal | None = scope["state"].get("principal")
    params: dict[str, str] = scope.get("path_params") or {}
    detail: dict[str, Any] = {"method": method, "route": path, "status": status}
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        detail["query"] = query[:MAX_QUERY]
    uids = {k: params.get(k) for k in ("study", "series", "instance")}
    for name, value in uids.items():
        if value is not None and not is_valid_uid(value):
            detail[name] = value[:128]  # not a UID: kept as text, not as one
            uids[name] = None
    return AuditEvent(
        action,
        outcome=_outcome(status),
        subject=principal.subject if principal else None,
        roles=tuple(role.value for role in principal.roles) if principal else (),
        facility=_facilities(principal),
        token_id=principal.token_id if principal else None,
        remote_address=client_address(scope),
        StudyInstanceUID=uids["study"],
        SeriesInstanceUID=uids["series"],
        SOPInstanceUID=uids["instance"],
        outcome_reason=None if status < 400 else f"HTTP {status}",
        detail=detail,
    )


def action_of(method: str, path: str, status: int) -> AuditAction | None:
    """The audit action of a request to route *path* (a template, e.g. ``/fhir/Patient/{patient}``)
    answered with *status*; None: not recorded here (a STOW-RS the ingest path recorded)."""
    if status == 401:
        return AuditAction.LOGIN_FAILURE
    if path.startswith("/fhir/AuditEvent"):
        return AuditAction.AUDIT_READ
    if "/share" in path:  # a grant given, revoked (DELETE) or listed
        return AuditAction.SHARE
    if method == "DELETE":
        return AuditAction.DELETE
    if "/export" in path:
        return AuditAction.EXPORT
    if method == "POST" and path.startswith("/dicom-web/"):
        return None if status < 400 else AuditAction.STORE
    if method == "POST" and "/review" in path:
        return AuditAction.SIGN if path.endswith("/sign") else AuditAction.REVIEW
    if path.startswith("/dicom-web/"):
        return AuditAction.QUERY if path.endswith(_QIDO_RESOURCES) else AuditAction.RETRIEVE
    if path.startswith("/fhir/"):
        return AuditAction.RETRIEVE if path.count("/") >= 3 else AuditAction.QUERY
    if path.startswith(("/api/v1/worklist", "/api/v1/changes")):
        return AuditAction.QUERY
    return AuditAction.RETRIEVE  # /wado, findings, a review read


def client_address(scope: Scope) -> str | None:
    """The client's address: the peer's, or the one a trusted proxy (PACS_TRUSTED_PROXIES)
    says it forwarded for (the last X-Forwarded-For entry: the one that proxy appended)."""
    client = scope.get("client")
    peer: str | None = str(client[0]) if client else None
    trusted: frozenset[str] = getattr(scope["app"].state, "trusted_proxies", frozenset())
    if peer is not None and peer in trusted:
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                forwarded: str = value.decode("latin-1").split(",")[-1].strip()
                if forwarded:
                    return forwarded
    return peer


def _route_path(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else str(scope["path"])


def _outcome(status: int) -> AuditOutcome:
    if status < 400:
        return AuditOutcome.SUCCESS
    return AuditOutcome.MINOR_FAILURE if status < 500 else AuditOutcome.SERIOUS_FAILURE


def _facilities(principal: Principal | None) -> str | None:
    if principal is None:
        return None
    if principal.all_facilities:
        return "*"
    return ",".join(sorted(principal.facilities)) or None


def _with_fhir_patient(conn: Connection, event: AuditEvent, fhir_id: str) -> AuditEvent:
    found = conn.execute(
        select(patient.c.patient_id, patient.c.issuer_of_patient_id).where(
            patient.c.fhir_id == fhir_id
        )
    ).first()
    if found is None:
        return event
    return replace(
        event, PatientID=found.patient_id, IssuerOfPatientID=found.issuer_of_patient_id or None
    )


def _line(scope: Scope) -> tuple[str, str]:
    return scope["method"], scope["path"]


def _unavailable(scope: Scope) -> JSONResponse:
    detail = "the audit trail cannot be written: retry later"
    if scope["path"].startswith("/fhir/"):
        body: dict[str, Any] = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "transient", "diagnostics": detail}],
        }
        return JSONResponse(body, 503, media_type="application/fhir+json")
    body = {"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": detail}
    return JSONResponse(body, 503, media_type="application/problem+json")
