"""``/fhir``: read and search, JSON only (``application/fhir+json``), searchset Bundles with
``_count``/``_offset`` paging, chained patient searches and ``_include``/``_revinclude``.
Same bearer tokens and reader roles as the rest of the API."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import ColumnElement, Connection, or_

from pacs import fhir_reads as query
from pacs.facilities import Scope
from pacs.ingest import Archive
from pacs.results import current_run
from pacs.review import signed_reports
from pacs.uids import is_valid_uid
from viewer_api.auth import ResultReader
from viewer_api.deps import ScopeDep
from viewer_api.dicomjson import base_url
from viewer_api.fhir import capability, params, search
from viewer_api.fhir.bundle import fhir_response, searchset
from viewer_api.fhir.resources import (
    WADO_ENDPOINT_ID,
    diagnostic_report_resource,
    endpoint_resource,
    imaging_study_resource,
    observation_resource,
    patient_resource,
)
from viewer_api.problems import BadRequest, NotFound

router = APIRouter(prefix="/fhir", tags=["FHIR R4"])
router.include_router(capability.router)
#: ``ai-<run>`` and ``ai-<run>-<n>``, with bounded numbers (a 40-digit id is a 404, not an
#: integer overflow in the database).
# ai-<run>[-<finding>], numbers without leading zeros: each resource has exactly one id.
_AI_ID = re.compile(r"ai-([1-9][0-9]{0,8})(?:-([1-9][0-9]{0,3}))?")


def _archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def _paging(request: Request) -> params.Paging:
    q = request.query_params
    return params.paging(q.get("_count"), q.get("_offset"), q.get("_summary"))


@router.get("/ImagingStudy")
def search_imaging_studies(request: Request, _: ResultReader, scope: ScopeDep) -> JSONResponse:
    """Search by ``patient`` (or chained ``patient.identifier``), ``_id``, ``identifier``
    (Study Instance UID or accession) and ``_lastUpdated``; ``_include`` the Patient or
    Endpoint, ``_revinclude`` the AI DiagnosticReport."""
    q = request.query_params
    search.check("ImagingStudy", q)
    included_types = search.includes("ImagingStudy", q, "_include")
    revincluded = search.includes("ImagingStudy", q, "_revinclude")
    conditions = search.study_conditions(q)
    paging = _paging(request)
    with _archive(request).db.read() as conn:
        total, studies = query.find_studies(conn, scope, conditions, paging.count, paging.offset)
        reports = _reports_of(conn, scope, studies) if revincluded else []
    included: list[dict[str, Any]] = []
    if "Patient" in included_types:
        included += [patient_resource(s.patient) for s in studies]
    if "Endpoint" in included_types and studies:
        included.append(endpoint_resource(base_url(request)))
    included += [diagnostic_report_resource(report) for report in reports]
    matches = [imaging_study_resource(s) for s in studies]
    return searchset(request, "ImagingStudy", total, matches, included, paging)


def _reports_of(
    conn: Connection, scope: Scope, studies: list[query.StudyRow]
) -> list[query.Report]:
    uids = [s.StudyInstanceUID for s in studies]
    if not uids:
        return []
    column = query.study_conditions()["uid"]
    _, reports = query.current_reports(conn, scope, [column.in_(uids)], len(uids), 0)
    return reports


def _one_study(request: Request, scope: Scope, uid: str) -> query.StudyRow:
    if not is_valid_uid(uid):
        raise NotFound(f"no ImagingStudy {uid}")
    with _archive(request).db.read() as conn:
        _, studies = query.find_studies(conn, scope, [query.study_conditions()["uid"] == uid], 1, 0)
    if not studies:
        raise NotFound(f"no ImagingStudy {uid}")
    return studies[0]


@router.get("/ImagingStudy/{study}")
def read_imaging_study(
    request: Request, study: str, _: ResultReader, scope: ScopeDep
) -> JSONResponse:
    return fhir_response(imaging_study_resource(_one_study(request, scope, study)))


@router.get("/Patient")
def search_patients(request: Request, _: ResultReader, scope: ScopeDep) -> JSONResponse:
    """Search by ``identifier`` (``system|MRN``, ``|MRN`` or ``MRN``; the system is derived
    from IssuerOfPatientID) or ``_id``; one of them is required (no listing of all patients)."""
    q = request.query_params
    search.check("Patient", q)
    conditions: list[ColumnElement[bool]] = [
        search.identifier_condition("identifier", value) for value in q.getlist("identifier")
    ]
    conditions += [
        or_(*(query.patient_fhir_id(i) for i in search.ids(value))) for value in q.getlist("_id")
    ]
    if not conditions:
        raise BadRequest("Patient search needs an identifier or an _id")
    paging = _paging(request)
    with _archive(request).db.read() as conn:
        total, patients = query.find_patients(conn, scope, conditions, paging.count, paging.offset)
    rows = [patient_resource(p) for p in patients]
    return searchset(request, "Patient", total, rows, [], paging)


@router.get("/Patient/{patient}")
def read_patient(request: Request, patient: str, _: ResultReader, scope: ScopeDep) -> JSONResponse:
    found = None
    if params.ID.fullmatch(patient):
        with _archive(request).db.read() as conn:
            found = query.get_patient(conn, scope, patient)
    if found is None:
        raise NotFound(f"no Patient {patient}")
    return fhir_response(patient_resource(found))


@router.get("/Endpoint/{endpoint}")
def read_endpoint(request: Request, endpoint: str, _: ResultReader) -> JSONResponse:
    if endpoint != WADO_ENDPOINT_ID:
        raise NotFound(f"no Endpoint {endpoint}")
    return fhir_response(endpoint_resource(base_url(request)))


@router.get("/DiagnosticReport")
def search_diagnostic_reports(request: Request, _: ResultReader, scope: ScopeDep) -> JSONResponse:
    """The reports (current AI run per study, signed by a radiologist or not), by ``patient``
    (or chained ``patient.identifier``), ``imaging-study`` (alias ``study``) and ``status``
    (partial, final, amended). Their Observations are always included; ``_include`` adds the
    ImagingStudy and the Patient."""
    q = request.query_params
    search.check("DiagnosticReport", q)
    included_types = search.includes("DiagnosticReport", q, "_include")
    conditions = search.patient_conditions(q)
    column = query.study_conditions()["uid"]
    for name in search.IMAGING_STUDY_REFERENCES:
        for value in q.getlist(name):
            uids = [params.reference_id(name, v, "ImagingStudy") for v in params.split_or(value)]
            conditions.append(column.in_(uids))
    for value in q.getlist("status"):
        conditions.append(query.report_status(set(params.split_or(value))))
    paging = _paging(request)
    with _archive(request).db.read() as conn:
        total, reports = query.current_reports(conn, scope, conditions, paging.count, paging.offset)
    matches = [diagnostic_report_resource(report) for report in reports]
    included = [observation_resource(r, i) for r in reports for i in range(r.observations)]
    if "ImagingStudy" in included_types:
        included += [imaging_study_resource(r.study) for r in reports]
    if "Patient" in included_types:
        included += [patient_resource(r.study.patient) for r in reports]
    return searchset(request, "DiagnosticReport", total, matches, included, paging)


def _report_for(
    request: Request, scope: Scope, resource_id: str, kind: str
) -> tuple[query.Report, int]:
    match = _AI_ID.fullmatch(resource_id)
    if match is None:
        raise NotFound(f"no {kind} {resource_id}")
    run_id, index = int(match.group(1)), match.group(2)
    with _archive(request).db.read() as conn:
        uid = query.study_of_run(conn, scope, run_id)
        run = current_run(conn, uid) if uid else None
        signed = signed_reports(conn, [uid]).get(uid) if uid else None
    if uid is None or run is None or run.id != run_id:
        raise NotFound(f"no {kind} {resource_id}")
    report = query.Report(_one_study(request, scope, uid), run, signed)
    if kind == "DiagnosticReport" and index is None:
        return report, -1
    position = report.index_of(int(index)) if kind == "Observation" and index else None
    if position is None:
        raise NotFound(f"no {kind} {resource_id}")
    return report, position


@router.get("/DiagnosticReport/{report}")
def read_diagnostic_report(
    request: Request, report: str, _: ResultReader, scope: ScopeDep
) -> JSONResponse:
    found, _position = _report_for(request, scope, report, "DiagnosticReport")
    return fhir_response(diagnostic_report_resource(found))


@router.get("/Observation/{observation}")
def read_observation(
    request: Request, observation: str, _: ResultReader, scope: ScopeDep
) -> JSONResponse:
    found, position = _report_for(request, scope, observation, "Observation")
    return fhir_response(observation_resource(found, position))
