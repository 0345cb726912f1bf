"""FHIR searches an EMR makes (issue 10 items 13, 2, 19): by MRN (identifier tokens and chains
through the patient), _include/_revinclude, paging links, and hostile values that must be a
400/404 with an OperationOutcome, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from pacs.index import Database
from pacs.ingest import Archive, Source
from pacs.jobs import claim_next_job, complete, enqueue
from pacs.results import NODULE_DETECTION, NewRun, RunOutcome, save_run
from pacs.storage import open_store
from tests.dicom import derived, encode
from tests.servers import PacsServer, running
from tests.viewer_api.test_fhir import LIDC, SMALL, _prepare, get

#: A patient whose IssuerOfPatientID is a bare name, and one with the same MRN under a URI.
HOSP = "urn:pacs-ai:issuer:HOSP"
OTHER_SYSTEM = "urn:oid:1.2.3.4"
LIDC_SYSTEM = "urn:pacs-ai:patient-id"  # LIDC has no IssuerOfPatientID


def _prepare_more(home: Path) -> None:
    """test_fhir's two studies, plus two MRN-7 patients under different issuers, and an AI
    run without findings on CT_small (a report with no Observation)."""
    _prepare(home, f"sqlite:///{home / 'index.db'}")  # on SQLite (test_fhir: PostgreSQL)
    db = Database(f"sqlite:///{home / 'index.db'}")
    archive = Archive(db, open_store(f"file://{home / 'storage'}", None, None))
    for issuer in ("HOSP", OTHER_SYSTEM):
        ds = derived(
            PatientID="MRN-7",
            IssuerOfPatientID=issuer,
            StudyInstanceUID=generate_uid(),
            SeriesInstanceUID=generate_uid(),
        )
        archive.store(encode(ds), Source("IMPORT"))
    with db.write() as conn:
        enqueue(conn, NODULE_DETECTION, str(SMALL.StudyInstanceUID))
    job = claim_next_job(db, "test", [NODULE_DETECTION], timedelta(seconds=60))
    assert job is not None
    run = NewRun(
        job.id,
        str(SMALL.StudyInstanceUID),
        str(SMALL.SeriesInstanceUID),
        ("demo-nodule-centernet", "1.0.0"),
        RunOutcome.ANALYSED,
        [],
        [],
        1.0,
    )
    save_run(db, run)
    complete(db, job.id, "test", "ai_run:2")
    db.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    home = tmp_path_factory.mktemp("fhir-search") / "home"
    home.mkdir()
    _prepare_more(home)
    with running(PacsServer(home)) as pacs:
        yield pacs


@pytest.fixture(scope="module")
def emr(server: PacsServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.token('emr')}"}
    with httpx.Client(base_url=f"{server.url}/fhir", headers=headers) as client:
        yield client


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def links(bundle: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle["link"]}


def test_patient_ids_are_opaque(emr: httpx.Client) -> None:
    bundle = get(emr, "/Patient", identifier="MRN-7")
    patient_ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert len(patient_ids) == 2
    for patient_id in patient_ids:
        assert len(patient_id) == 32 and not patient_id.isdigit()
        assert get(emr, f"/Patient/{patient_id}")["id"] == patient_id
        assert [e["resource"]["id"] for e in get(emr, "/Patient", _id=patient_id)["entry"]] == [
            patient_id
        ]
    uid = str(LIDC.StudyInstanceUID)
    assert ids(get(emr, "/ImagingStudy", _id=uid)) == [f"ImagingStudy/{uid}"]
    for sequential in ("1", "2", "3"):  # the row numbers no longer name a patient
        assert emr.get(f"/Patient/{sequential}").status_code == 404


@pytest.mark.parametrize(
    ("token", "issuers"),
    [
        (f"{HOSP}|MRN-7", ["HOSP"]),
        (f"{OTHER_SYSTEM}|MRN-7", [OTHER_SYSTEM]),
        ("MRN-7", ["HOSP", OTHER_SYSTEM]),  # any system
        ("|MRN-7", []),  # only identifiers without a system: we always send one
        ("HOSP|MRN-7", []),  # not the system we send for that issuer
        (f"{HOSP}|MRN-7,{OTHER_SYSTEM}|MRN-7", ["HOSP", OTHER_SYSTEM]),  # comma: OR
        (f"{LIDC_SYSTEM}|MRN-7", []),
    ],
)
def test_patient_identifier_token_rules(emr: httpx.Client, token: str, issuers: list[str]) -> None:
    bundle = get(emr, "/Patient", identifier=token)
    systems = {e["resource"]["identifier"][0]["system"] for e in bundle.get("entry", [])}
    expected = {HOSP if i == "HOSP" else i for i in issuers}
    assert bundle["total"] == len(issuers) and systems == expected


@pytest.mark.parametrize(
    "chain",
    [
        "patient.identifier",
        "subject.identifier",
        "subject:Patient.identifier",
        "patient:Patient.identifier",
        "patient:identifier",
    ],
)
def test_reports_and_studies_by_mrn(emr: httpx.Client, chain: str) -> None:
    mrn = f"{LIDC_SYSTEM}|{LIDC.PatientID}"
    reports = get(emr, "/DiagnosticReport", **{chain: mrn})
    assert reports["total"] == 1
    (report,) = [e["resource"] for e in reports["entry"] if e["search"]["mode"] == "match"]
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{LIDC.StudyInstanceUID}"}]
    studies = get(emr, "/ImagingStudy", **{chain: mrn})
    assert ids(studies) == [f"ImagingStudy/{LIDC.StudyInstanceUID}"]
    # Another patient's MRN, or the right MRN under another system, finds nothing.
    assert get(emr, "/DiagnosticReport", **{chain: f"{HOSP}|{LIDC.PatientID}"})["total"] == 0
    assert get(emr, "/ImagingStudy", **{chain: f"{HOSP}|MRN-7"})["total"] == 1


def test_report_includes_study_and_patient(emr: httpx.Client) -> None:
    params = [
        ("patient.identifier", f"{LIDC_SYSTEM}|{LIDC.PatientID}"),
        ("_include", "DiagnosticReport:imagingStudy"),
        ("_include", "DiagnosticReport:subject"),
    ]
    response = emr.get("/DiagnosticReport", params=params)
    assert response.status_code == 200, response.text
    bundle = response.json()
    (report,) = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    included = ids(bundle, "include")
    assert f"ImagingStudy/{LIDC.StudyInstanceUID}" in included
    assert report["subject"]["reference"] in included
    assert sum(i.startswith("Observation/") for i in included) == 2  # the findings, as before
    assert len(included) == len(set(included))  # each included resource once
    # Without _include, no study or patient comes along.
    plain = get(
        emr, "/DiagnosticReport", **{"patient.identifier": f"{LIDC_SYSTEM}|{LIDC.PatientID}"}
    )
    assert not [i for i in ids(plain, "include") if not i.startswith("Observation/")]


def test_study_revincludes_its_report_and_includes_patient(emr: httpx.Client) -> None:
    params = [
        ("identifier", f"urn:dicom:uid|urn:oid:{LIDC.StudyInstanceUID}"),
        ("_revinclude", "DiagnosticReport:imaging-study"),
        ("_include", "ImagingStudy:patient"),
    ]
    response = emr.get("/ImagingStudy", params=params)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert ids(bundle) == [f"ImagingStudy/{LIDC.StudyInstanceUID}"]
    included = ids(bundle, "include")
    assert [i for i in included if i.startswith("DiagnosticReport/")] == ["DiagnosticReport/ai-1"]
    study = bundle["entry"][0]["resource"]
    assert study["subject"]["reference"] in included
    for value in ("DiagnosticReport:nonsense", "Observation:subject"):
        assert emr.get("/ImagingStudy", params={"_revinclude": value}).status_code == 400


def test_capability_statement_advertises_searches(emr: httpx.Client) -> None:
    body = get(emr, "/metadata")
    resources = {r["type"]: r for r in body["rest"][0]["resource"]}
    report = resources["DiagnosticReport"]
    assert "DiagnosticReport:imaging-study" in report["searchInclude"]
    assert "DiagnosticReport:subject" in report["searchInclude"]
    assert "DiagnosticReport:imaging-study" in resources["ImagingStudy"]["searchRevInclude"]
    assert "patient.identifier" in report["searchParam"][0]["documentation"]
    assert {"identifier", "_id"} <= {p["name"] for p in resources["Patient"]["searchParam"]}
    assert [i["code"] for i in resources["Observation"]["interaction"]] == ["read"]


def test_next_links_walk_every_match_and_stop(emr: httpx.Client) -> None:
    seen: list[str] = []
    bundle = get(emr, "/ImagingStudy", _count=1)
    while True:
        assert bundle["total"] == 4 and len(bundle["entry"]) == 1
        seen += ids(bundle)
        if "next" not in links(bundle):
            break
        bundle = get(emr, links(bundle)["next"])
    assert len(seen) == len(set(seen)) == 4


def test_count_zero_and_summary_count_give_the_total_only(emr: httpx.Client) -> None:
    for params in ({"_count": 0}, {"_summary": "count"}, {"_count": 0, "_offset": 2}):
        bundle = get(emr, "/ImagingStudy", **params)
        assert bundle["total"] == 4 and "entry" not in bundle
        assert set(links(bundle)) == {"self"}, params  # no next link to itself


def test_count_above_the_maximum_is_clamped(emr: httpx.Client) -> None:
    for count in ("1000", "9" * 40):
        bundle = get(emr, "/ImagingStudy", _count=count)
        assert len(bundle["entry"]) == 4
        assert "_count=100&" in links(bundle)["self"]


@pytest.mark.parametrize(
    ("url", "params", "status"),
    [
        ("/ImagingStudy", {"_offset": "9" * 40}, 400),
        ("/ImagingStudy", {"_offset": "-1"}, 400),
        ("/ImagingStudy", {"_count": "ten"}, 400),
        ("/ImagingStudy", {"_count": "1e3"}, 400),
        ("/ImagingStudy", {"_count": "٣"}, 400),  # a non-ASCII digit int() would accept
        ("/ImagingStudy", {"_summary": "true"}, 400),
        ("/ImagingStudy", {"_lastUpdated": "ge99999"}, 400),
        ("/ImagingStudy", {"_lastUpdated": "2024-13"}, 400),
        ("/ImagingStudy", {"_lastUpdated": "2024-02-30"}, 400),
        ("/ImagingStudy", {"_lastUpdated": "gt9999"}, 400),
        ("/ImagingStudy", {"_lastUpdated": "0000"}, 400),
        ("/ImagingStudy", {"identifier": "a\x00b"}, 400),
        ("/ImagingStudy", {"identifier": "urn:dicom:uid|"}, 400),
        ("/ImagingStudy", {"patient": "Patient/" + "x" * 65}, 400),
        ("/ImagingStudy", {"patient": "Observation/abc"}, 400),
        ("/ImagingStudy", {"modality": "CT"}, 400),  # unsupported: never silently ignored
        ("/ImagingStudy", {"patient.name": "x"}, 400),
        ("/DiagnosticReport", {"imaging-study": "ImagingStudy/" + "1" * 70}, 400),
        ("/DiagnosticReport", {"code": "24627-2"}, 400),
        ("/Patient", {}, 400),
        ("/Patient", {"name": "x"}, 400),
        ("/Patient/" + "9" * 40, {}, 404),
        ("/Patient/" + "a" * 65, {}, 404),
        ("/DiagnosticReport/ai-" + "9" * 40, {}, 404),
        ("/Observation/ai-1-" + "9" * 40, {}, 404),
        ("/Observation/ai-1-0", {}, 404),  # findings count from 1; 0 used to be the last one
        ("/Observation/ai-" + "9" * 19 + "-1", {}, 404),
        ("/ImagingStudy/" + "1" * 40, {}, 404),
        # Long OR lists: a 400 naming the limit, not a database error (SQLite's depth limit).
        ("/ImagingStudy", {"patient": ",".join(["Patient/a"] * 1200)}, 400),
        ("/DiagnosticReport", {"patient.identifier": ",".join(["x|1"] * 1200)}, 400),
        ("/ImagingStudy", {"_lastUpdated": ",".join(["2024"] * 1200)}, 400),
        ("/ImagingStudy", {"identifier": ",".join(["ACC"] * 1200)}, 400),
        ("/DiagnosticReport/ai-007", {}, 404),  # a leading zero names no report
        ("/Observation/ai-01-1", {}, 404),
    ],
)
def test_out_of_range_and_malformed_values(
    emr: httpx.Client, url: str, params: dict[str, str], status: int
) -> None:
    response = emr.get(url, params=params)
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]


def test_last_updated_partial_dates_and_or(emr: httpx.Client) -> None:
    year = datetime.now(UTC).year
    assert get(emr, "/ImagingStudy", _lastUpdated=str(year))["total"] == 4
    assert get(emr, "/ImagingStudy", _lastUpdated=f"lt{year}")["total"] == 0
    assert get(emr, "/ImagingStudy", _lastUpdated=f"{year - 5},{year}")["total"] == 4
    assert get(emr, "/ImagingStudy", _lastUpdated=f"gt{year}-01")["total"] <= 4
    assert get(emr, "/ImagingStudy", _lastUpdated=f"ge{year + 1}")["total"] == 0
