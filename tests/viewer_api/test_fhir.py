"""FHIR R4 for the EMR: resources validate (fhir.resources, R4B models), link, search, page."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from pacs.index import Database, upgrade
from pacs.ingest import Archive, Source
from pacs.jobs import claim_next_job, complete, enqueue
from pacs.results import NODULE_DETECTION, Character, Finding, NewRun, RunOutcome, save_run
from pacs.storage import open_store
from tests.dicom import CT_SMALL, LIDC_0001, dicom_files
from tests.servers import PacsServer, PostgresServer, running

MODELS = {
    "ImagingStudy": ImagingStudy,
    "DiagnosticReport": DiagnosticReport,
    "Observation": Observation,
    "Patient": Patient,
    "Endpoint": Endpoint,
    "Bundle": Bundle,
    "CapabilityStatement": CapabilityStatement,
}
LIDC = pydicom.dcmread(dicom_files(LIDC_0001)[0], stop_before_pixels=True)
SMALL = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
#: The first nodule was outlined (models.characterise); the second was not.
SOLID = Character("solid", 0.96, 26.94, 25.41, 26.18, 6862.1, 26.18)
NODULES = [
    Finding(56.2, 86.3, -115.9, 23.4, 0.93, character=SOLID),
    Finding(-60.0, 20.0, -150.0, 6.0, 0.61),
]


def _prepare(home: Path, database: str) -> None:
    """Two studies; the LIDC one analysed by the AI (a done job and its run)."""
    db = Database(database)
    upgrade(db)
    archive = Archive(db, open_store(f"file://{home / 'storage'}", None, None))
    for path in [*dicom_files(LIDC_0001)[:3], CT_SMALL]:
        archive.store(path.read_bytes(), Source("IMPORT"))
    with db.write() as conn:
        enqueue(conn, NODULE_DETECTION, str(LIDC.StudyInstanceUID))
    job = claim_next_job(db, "test", [NODULE_DETECTION], timedelta(seconds=60))
    assert job is not None
    new = NewRun(
        job.id,
        str(LIDC.StudyInstanceUID),
        str(LIDC.SeriesInstanceUID),
        ("demo-nodule-centernet", "1.0.0"),
        RunOutcome.ANALYSED,
        [],
        NODULES,
        4.2,
    )
    save_run(db, new)
    complete(db, job.id, "test", "ai_run:1")
    db.dispose()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer
) -> Iterator[PacsServer]:
    """On PostgreSQL (the other modules of this API run on SQLite)."""
    home = tmp_path_factory.mktemp("fhir") / "home"
    home.mkdir()
    database = postgres.new_database()
    _prepare(home, database)
    with running(PacsServer(home, {"PACS_DATABASE_URL": database})) as pacs:
        yield pacs


@pytest.fixture(scope="module")
def emr(server: PacsServer) -> httpx.Client:
    client = httpx.Client(
        base_url=f"{server.url}/fhir", headers={"Authorization": f"Bearer {server.token('emr')}"}
    )
    yield client  # type: ignore[misc]
    client.close()


def get(client: httpx.Client, url: str, **params: Any) -> dict[str, Any]:
    response = client.get(url, params=params) if params else client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = dict(response.json())
    MODELS[body["resourceType"]].model_validate(body)  # raises on an invalid resource
    for entry in body.get("entry", []):
        MODELS[entry["resource"]["resourceType"]].model_validate(entry["resource"])
    return body


def test_capability_statement(emr: httpx.Client) -> None:
    body = get(emr, "/metadata")
    types = {r["type"] for r in body["rest"][0]["resource"]}
    assert {"ImagingStudy", "DiagnosticReport", "Observation", "Patient", "Endpoint"} <= types
    assert body["fhirVersion"] == "4.0.1"


def test_imaging_study_search_read_and_endpoint(emr: httpx.Client, server: PacsServer) -> None:
    uid = str(LIDC.StudyInstanceUID)
    bundle = get(emr, "/ImagingStudy", identifier=f"urn:dicom:uid|urn:oid:{uid}")
    assert bundle["total"] == 1
    study = bundle["entry"][0]["resource"]
    assert study["id"] == uid and study["numberOfInstances"] == 3
    assert study["series"][0]["uid"] == str(LIDC.SeriesInstanceUID)
    assert study["modality"] == [
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
    ]
    assert get(emr, f"/ImagingStudy/{uid}") == study
    # The study links to its patient and to a WADO-RS endpoint that serves it.
    patient = get(emr, "/" + study["subject"]["reference"])
    assert patient["identifier"][0]["value"] == str(LIDC.PatientID)
    endpoint = get(emr, "/" + study["endpoint"][0]["reference"])
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    # A viewer opened by a clinician reads it with the clinician's token; the EMR's may not.
    address = f"{endpoint['address']}/studies/{uid}/metadata"
    viewer = {"Authorization": f"Bearer {server.token('radiologist')}"}
    metadata = httpx.get(address, headers=viewer)
    assert metadata.status_code == 200 and len(metadata.json()) == 3
    assert (
        httpx.get(address, headers={"Authorization": emr.headers["Authorization"]}).status_code
        == 403
    )
    # Search by patient reference, and by identifier token.
    by_patient = get(emr, "/ImagingStudy", patient=study["subject"]["reference"])
    assert [e["resource"]["id"] for e in by_patient["entry"]] == [uid]
    found = get(emr, "/Patient", identifier=str(LIDC.PatientID))
    assert [e["resource"]["id"] for e in found["entry"]] == [patient["id"]]


def test_last_updated_and_paging(emr: httpx.Client) -> None:
    now = datetime.now(UTC)
    recent = get(emr, "/ImagingStudy", _lastUpdated=f"ge{(now - timedelta(hours=1)).isoformat()}")
    assert recent["total"] == 2
    future = get(emr, "/ImagingStudy", _lastUpdated=f"gt{(now + timedelta(hours=1)).isoformat()}")
    assert (future["total"] == 0 and "entry" not in future) or future["entry"] == []
    first = get(emr, "/ImagingStudy", _count=1)
    assert first["total"] == 2 and len(first["entry"]) == 1
    (next_link,) = [link["url"] for link in first["link"] if link["relation"] == "next"]
    second = get(emr, next_link)
    assert len(second["entry"]) == 1
    assert second["entry"][0]["resource"]["id"] != first["entry"][0]["resource"]["id"]
    assert not [link for link in second["link"] if link["relation"] == "next"]


def test_diagnostic_report_with_observations(emr: httpx.Client) -> None:
    uid = str(LIDC.StudyInstanceUID)
    bundle = get(emr, "/DiagnosticReport", study=f"ImagingStudy/{uid}")
    assert bundle["total"] == 1
    matches = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    included = {
        e["resource"]["id"]: e["resource"]
        for e in bundle["entry"]
        if e["search"]["mode"] == "include"
    }
    (report,) = matches
    assert report["status"] == "partial"  # AI results nobody has reviewed yet
    assert "performer" not in report
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{uid}"}]
    assert "2 lung nodule candidate(s)" in report["conclusion"]
    observations = [get(emr, "/" + ref["reference"]) for ref in report["result"]]
    assert [o["id"] for o in observations] == sorted(included)
    diameters = [
        c["valueQuantity"]["value"]
        for o in observations
        for c in o["component"]
        if c["code"]["coding"][0]["code"] == "81827009"
    ]
    # The outlined nodule reports its mean diameter, the other the detector's.
    assert diameters == [26.18, 6.0]
    assert observations[1]["component"][0]["code"].get("text") is None
    components = {c["code"]["coding"][0]["code"]: c for c in observations[0]["component"]}
    assert components["81827009"]["code"]["text"] == "Mean diameter (long axis + short axis) / 2"
    assert components["type"]["valueCodeableConcept"]["coding"][0]["code"] == "solid"
    assert components["type"]["valueCodeableConcept"]["text"] == "solid (probability 0.96)"
    measured = {
        code: (c["valueQuantity"]["value"], c["valueQuantity"]["code"])
        for code, c in components.items()
        if "valueQuantity" in c
    }
    assert measured == {
        "81827009": (26.18, "mm"),
        "111012": (93.0, "%"),
        "103339001": (26.94, "mm"),  # long axis
        "103340004": (25.41, "mm"),  # short axis
        "118565006": (6862.1, "mm3"),  # volume
        "solid-diameter": (26.18, "mm"),
    }
    assert {len(o["component"]) for o in observations} == {7, 2}
    assert observations[0]["bodySite"]["coding"][0]["display"] == "Lung"
    assert get(emr, f"/DiagnosticReport/{report['id']}") == report
    # Links: report -> study -> endpoint.
    study = get(emr, "/" + report["imagingStudy"][0]["reference"])
    assert get(emr, "/" + study["endpoint"][0]["reference"])["resourceType"] == "Endpoint"
    # Searches by patient and by status.
    by_patient = get(emr, "/DiagnosticReport", patient=report["subject"]["reference"])
    assert by_patient["total"] == 1
    assert get(emr, "/DiagnosticReport", status="final")["total"] == 0
    assert get(emr, "/DiagnosticReport", status="preliminary")["total"] == 0
    assert get(emr, "/DiagnosticReport", status="partial")["total"] == 1
    assert get(emr, "/DiagnosticReport", status="final,partial")["total"] == 1
    assert {o["status"] for o in observations} == {"preliminary"}
    # The study without an AI run has no report.
    other = get(emr, "/DiagnosticReport", study=str(SMALL.StudyInstanceUID))
    assert other["total"] == 0


def test_errors_are_operation_outcomes(emr: httpx.Client, server: PacsServer) -> None:
    for url in (
        "/ImagingStudy/1.2.3.999",
        "/Observation/ai-1-99",
        "/DiagnosticReport/x",
        "/Patient/999",
    ):
        response = emr.get(url)
        assert response.status_code == 404, url
        assert response.json()["resourceType"] == "OperationOutcome"
    bad = emr.get("/ImagingStudy", params={"_lastUpdated": "gesoon"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["code"] == "invalid"
    anonymous = httpx.get(f"{server.url}/fhir/ImagingStudy")
    assert anonymous.status_code == 401 and anonymous.json()["resourceType"] == "OperationOutcome"
