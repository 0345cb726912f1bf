"""``/fhir/AuditEvent``: the audit trail as FHIR R4 AuditEvent resources (IHE BALP shapes),
for administrators only. Search by ``patient`` (a Patient reference, or the chained
``patient.identifier``), ``agent`` (a token subject or calling AE title), ``date``
(``ge``/``gt``/``le``/``lt``/``eq`` prefixes) with ``_count``/``_offset`` paging; read by id.
Reading the trail is itself audited (``audit_read``, PS3.15 "Audit Log Used")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import ColumnElement, Connection, or_, select

from pacs import fhir_reads as query
from pacs.audit import EventFilter, StoredEvent, count_events, event_by_id, find_events
from pacs.audit.codes import SOURCE_ID
from pacs.audit.fhir import audit_event_resource
from pacs.index.schema import patient
from pacs.ingest import Archive
from viewer_api.auth import GlobalAdmin
from viewer_api.fhir import params
from viewer_api.fhir.bundle import fhir_response, searchset
from viewer_api.fhir.resources import ISSUER_PREFIX, LOCAL_PATIENT_ID
from viewer_api.fhir.search import RESULT_PARAMETERS, identifier_condition
from viewer_api.problems import BadRequest, NotFound

router = APIRouter(prefix="/fhir", tags=["FHIR R4"])

_PATIENT = ("patient", "patient:Patient")
_PATIENT_IDENTIFIER = ("patient.identifier", "patient:Patient.identifier", "patient:identifier")
ACCEPTED = frozenset({*_PATIENT, *_PATIENT_IDENTIFIER, "agent", "date"}) | RESULT_PARAMETERS


@router.get("/AuditEvent")
def search_audit_events(request: Request, _: GlobalAdmin) -> JSONResponse:
    """AuditEvents by ``patient``, ``patient.identifier``, ``agent`` and ``date``, oldest
    first (the chain's order)."""
    q = request.query_params
    for name in q:
        if name not in ACCEPTED:
            raise BadRequest(f"AuditEvent cannot be searched by {name!r}")
    paging = params.paging(q.get("_count"), q.get("_offset"), q.get("_summary"))
    archive: Archive = request.app.state.archive
    with archive.db.read() as conn:
        where = EventFilter(
            *_dates(q.getlist("date")),
            patients=_patients(conn, q.multi_items()),
            agent=q.get("agent"),
        )
        total = count_events(conn, where)
        page = find_events(conn, where, paging.count, paging.offset) if paging.count else []
    return searchset(request, "AuditEvent", total, [_resource(e) for e in page], [], paging)


@router.get("/AuditEvent/{event}")
def read_audit_event(event: str, request: Request, _: GlobalAdmin) -> JSONResponse:
    found = None
    if event.isdigit() and len(event) < 19:
        archive: Archive = request.app.state.archive
        with archive.db.read() as conn:
            found = event_by_id(conn, int(event))
    if found is None:
        raise NotFound(f"no AuditEvent {event}")
    return fhir_response(_resource(found))


def _resource(stored: StoredEvent) -> dict[str, Any]:
    event = stored.event
    reference = None
    if event.PatientID is not None:
        issuer = event.IssuerOfPatientID
        system = (
            LOCAL_PATIENT_ID if not issuer else issuer if ":" in issuer else ISSUER_PREFIX + issuer
        )
        reference = {"identifier": {"system": system, "value": event.PatientID}}
    return audit_event_resource(stored, SOURCE_ID, reference)


def _patients(conn: Connection, items: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """The (PatientID, issuer) pairs the patient parameters name; None: no such parameter."""
    conditions: list[ColumnElement[bool]] = []
    for name, value in items:
        if name in _PATIENT:
            ids = [params.reference_id(name, v, "Patient") for v in params.split_or(value)]
            conditions.append(or_(*(query.patient_fhir_id(i) for i in ids)))
        elif name in _PATIENT_IDENTIFIER:
            conditions.append(identifier_condition(name, value))
    if not conditions:
        return None
    rows = conn.execute(
        select(patient.c.patient_id, patient.c.issuer_of_patient_id).where(*conditions)
    )
    return sorted({(row.patient_id, row.issuer_of_patient_id) for row in rows})


def _dates(values: list[str]) -> tuple[datetime | None, datetime | None]:
    """``date`` values (repeated: AND) as one half-open [since, until) interval."""
    since: datetime | None = None
    until: datetime | None = None
    for value in values:
        d = params.date("date", value)
        low, high = {
            "eq": (d.low, d.high),
            "ge": (d.low, None),
            "gt": (d.high, None),
            "sa": (d.high, None),
            "le": (None, d.high),
            "lt": (None, d.low),
            "eb": (None, d.low),
        }.get(d.prefix, (None, None))
        if low is None and high is None:
            raise BadRequest(f"date={value!r}: prefix {d.prefix} is not supported here")
        since = low if since is None or (low is not None and low > since) else since
        until = high if until is None or (high is not None and high < until) else until
    return since, until
