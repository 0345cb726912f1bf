"""``/fhir``: read and search, JSON only (``application/fhir+json``), searchset Bundles with
``_count``/``_offset`` paging. Same bearer tokens and reader roles as the rest of the API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import ColumnElement, false

from pacs.ingest import Archive
from pacs.results import current_run
from pacs.uids import is_valid_uid
from viewer_api.auth import Reader
from viewer_api.dicomjson import base_url
from viewer_api.fhir import query
from viewer_api.fhir.resources import (
    DICOM_UID,
    LOCAL_PATIENT_ID,
    WADO_ENDPOINT_ID,
    diagnostic_report_resource,
    endpoint_resource,
    imaging_study_resource,
    observation_resource,
    patient_resource,
    report_id,
)
from viewer_api.problems import BadRequest, NotFound

router = APIRouter(prefix="/fhir", tags=["FHIR R4"])
FHIR_JSON = "application/fhir+json"
DEFAULT_COUNT, MAX_COUNT = 20, 100
_PREFIXES = {"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"}


def _fhir(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


@router.get("/metadata")
def capability_statement(request: Request, _: Reader) -> JSONResponse:
    """CapabilityStatement: what this server reads and searches."""
    search = {
        "ImagingStudy": ["patient", "identifier", "_lastUpdated"],
        "DiagnosticReport": ["patient", "study", "status"],
        "Patient": ["identifier"],
        "Observation": [],
        "Endpoint": [],
    }
    return _fhir(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-11-26",
            "kind": "instance",
            "software": {"name": "PACS-AI", "version": "0.1.0"},
            "implementation": {"description": "PACS-AI FHIR facade", "url": _fhir_base(request)},
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "service": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                        "code": "OAuth",
                                    }
                                ]
                            }
                        ],
                        "description": "Bearer JWT; roles emr, radiologist or admin read.",
                    },
                    "resource": [
                        {
                            "type": kind,
                            "interaction": [{"code": "read"}, {"code": "search-type"}],
                            "searchParam": [
                                {"name": name, "type": _param_type(name)} for name in params
                            ],
                        }
                        for kind, params in search.items()
                    ],
                }
            ],
        }
    )


def _param_type(name: str) -> str:
    return {
        "patient": "reference",
        "study": "reference",
        "identifier": "token",
        "status": "token",
        "_lastUpdated": "date",
    }[name]


def _fhir_base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def _paging(request: Request) -> tuple[int, int]:
    try:
        count = int(request.query_params.get("_count", DEFAULT_COUNT))
        offset = int(request.query_params.get("_offset", 0))
    except ValueError as exc:
        raise BadRequest("_count and _offset must be integers") from exc
    if count < 0 or offset < 0:
        raise BadRequest("_count and _offset must not be negative")
    return min(count, MAX_COUNT), offset


def _bundle(
    request: Request,
    resource_type: str,
    total: int,
    matches: list[dict[str, Any]],
    included: list[dict[str, Any]],
    count: int,
    offset: int,
) -> JSONResponse:
    base = _fhir_base(request)
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in {"_offset"}]

    def page(at: int) -> str:
        return f"{base}/{resource_type}?{urlencode([*params, ('_offset', str(at))])}"

    links = [{"relation": "self", "url": page(offset)}]
    if offset + count < total:
        links.append({"relation": "next", "url": page(offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": page(max(0, offset - count))})
    entries = [
        {
            "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": mode},
        }
        for mode, group in (("match", matches), ("include", included))
        for r in group
    ]
    return _fhir(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": links,
            "entry": entries,
        }
    )


def _reference_id(value: str, resource_type: str) -> str:
    """``Patient/12``, ``12`` or a full URL ending in ``Patient/12`` -> ``12``."""
    match = re.fullmatch(rf"(?:.*/)?(?:{resource_type}/)?([A-Za-z0-9\-.]{{1,64}})", value)
    if match is None:
        raise BadRequest(f"{value!r} is not a {resource_type} reference")
    return match.group(1)


def _patient_condition(value: str) -> ColumnElement[bool]:
    pk = _reference_id(value, "Patient")
    if not pk.isdigit():
        return false()
    column: ColumnElement[bool] = query.study_conditions()["patient"] == int(pk)
    return column


def _token(value: str) -> tuple[str | None, str]:
    system, bar, code = value.partition("|")
    return (system or None, code) if bar else (None, value)


def _date_conditions(values: list[str]) -> list[ColumnElement[bool]]:
    column = query.study_conditions()["updated"]
    conditions: list[ColumnElement[bool]] = []
    for value in values:
        prefix, moment = value[:2], value[2:]
        if prefix not in _PREFIXES:
            prefix, moment = "eq", value
        try:
            when = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError as exc:
            raise BadRequest(f"_lastUpdated {value!r} is not a FHIR date") from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.now().astimezone().tzinfo)
        conditions.append(
            {
                "gt": column > when,
                "sa": column > when,
                "ge": column >= when,
                "lt": column < when,
                "eb": column < when,
                "le": column <= when,
                "ne": column != when,
            }.get(prefix, column == when)
        )
    return conditions


@router.get("/ImagingStudy")
def search_imaging_studies(request: Request, _: Reader) -> JSONResponse:
    """Search by ``patient``, ``identifier`` (Study Instance UID or accession) and
    ``_lastUpdated`` (with FHIR prefixes ge, le, gt, lt, ...)."""
    conditions: list[ColumnElement[bool]] = []
    columns = query.study_conditions()
    params = request.query_params
    for value in params.getlist("patient"):
        conditions.append(_patient_condition(value))
    for value in params.getlist("identifier"):
        system, code = _token(value)
        if system in (None, DICOM_UID) and code.startswith("urn:oid:"):
            conditions.append(columns["uid"] == code.removeprefix("urn:oid:"))
        elif system is None and is_valid_uid(code):
            conditions.append((columns["uid"] == code) | (columns["accession"] == code))
        else:
            conditions.append(columns["accession"] == code)
    conditions += _date_conditions(params.getlist("_lastUpdated"))
    count, offset = _paging(request)
    with _archive(request).db.read() as conn:
        total, studies = query.find_studies(conn, conditions, count, offset)
    return _bundle(
        request,
        "ImagingStudy",
        total,
        [imaging_study_resource(s) for s in studies],
        [],
        count,
        offset,
    )


def _one_study(request: Request, uid: str) -> query.StudyRow:
    if not is_valid_uid(uid):
        raise NotFound(f"no ImagingStudy {uid}")
    with _archive(request).db.read() as conn:
        _, studies = query.find_studies(conn, [query.study_conditions()["uid"] == uid], 1, 0)
    if not studies:
        raise NotFound(f"no ImagingStudy {uid}")
    return studies[0]


@router.get("/ImagingStudy/{study}")
def read_imaging_study(request: Request, study: str, _: Reader) -> JSONResponse:
    return _fhir(imaging_study_resource(_one_study(request, study)))


@router.get("/Patient")
def search_patients(request: Request, _: Reader) -> JSONResponse:
    """Search by ``identifier`` (``system|value``; PatientID with IssuerOfPatientID)."""
    count, offset = _paging(request)
    values = request.query_params.getlist("identifier")
    if not values:
        raise BadRequest("Patient search needs an identifier")
    found: dict[int, query.PatientRow] = {}
    with _archive(request).db.read() as conn:
        for value in values:
            system, code = _token(value)
            issuer = None if system is None else ("" if system == LOCAL_PATIENT_ID else system)
            for p in query.find_patients(conn, issuer, code):
                found[p.id] = p
    rows = [patient_resource(p) for p in sorted(found.values(), key=lambda p: p.id)]
    return _bundle(request, "Patient", len(rows), rows[offset : offset + count], [], count, offset)


@router.get("/Patient/{patient}")
def read_patient(request: Request, patient: str, _: Reader) -> JSONResponse:
    with _archive(request).db.read() as conn:
        found = query.get_patient(conn, int(patient)) if patient.isdigit() else None
    if found is None:
        raise NotFound(f"no Patient {patient}")
    return _fhir(patient_resource(found))


@router.get("/Endpoint/{endpoint}")
def read_endpoint(request: Request, endpoint: str, _: Reader) -> JSONResponse:
    if endpoint != WADO_ENDPOINT_ID:
        raise NotFound(f"no Endpoint {endpoint}")
    return _fhir(endpoint_resource(base_url(request)))


@router.get("/DiagnosticReport")
def search_diagnostic_reports(request: Request, _: Reader) -> JSONResponse:
    """The AI reports (current run per study), by ``patient``, ``study`` (ImagingStudy
    reference) and ``status``; their Observations are included in the Bundle."""
    conditions: list[ColumnElement[bool]] = []
    params = request.query_params
    for value in params.getlist("patient"):
        conditions.append(_patient_condition(value))
    for value in params.getlist("study"):
        conditions.append(query.study_conditions()["uid"] == _reference_id(value, "ImagingStudy"))
    statuses = {s for value in params.getlist("status") for s in value.split(",")}
    if statuses and "preliminary" not in statuses:
        conditions.append(false())  # no report is final until radiologist review exists
    count, offset = _paging(request)
    with _archive(request).db.read() as conn:
        total, reports = query.current_reports(conn, conditions, count, offset)
    matches = [diagnostic_report_resource(s, run) for s, run in reports]
    included = [
        observation_resource(s, run, i) for s, run in reports for i in range(len(run.findings))
    ]
    return _bundle(request, "DiagnosticReport", total, matches, included, count, offset)


def _run_for(request: Request, resource_id: str, kind: str) -> tuple[query.StudyRow, Any, int]:
    match = re.fullmatch(r"ai-(\d+)(?:-(\d+))?", resource_id)
    if match is None:
        raise NotFound(f"no {kind} {resource_id}")
    run_id, index = int(match.group(1)), match.group(2)
    with _archive(request).db.read() as conn:
        uid = query.study_of_run(conn, run_id)
        run = current_run(conn, uid) if uid else None
    if uid is None or run is None or run.id != run_id:
        raise NotFound(f"no {kind} {resource_id}")
    position = int(index) - 1 if index else -1
    if (kind == "Observation") != (index is not None) or position >= len(run.findings):
        raise NotFound(f"no {kind} {resource_id}")
    return _one_study(request, uid), run, position


@router.get("/DiagnosticReport/{report}")
def read_diagnostic_report(request: Request, report: str, _: Reader) -> JSONResponse:
    study, run, _position = _run_for(request, report, "DiagnosticReport")
    assert report_id(run) == report
    return _fhir(diagnostic_report_resource(study, run))


@router.get("/Observation/{observation}")
def read_observation(request: Request, observation: str, _: Reader) -> JSONResponse:
    study, run, position = _run_for(request, observation, "Observation")
    return _fhir(observation_resource(study, run, position))
