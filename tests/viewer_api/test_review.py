"""The review over HTTP against ``pacs serve``: every transition, signing into a verified SR
(WADO-RS, dciodvfy), FHIR final then amended, the change feed and a webhook, 409 on stale
versions, the role matrix, and bad input refused with nothing changed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.uid import generate_uid

from pacs.index import Database, upgrade
from pacs.ingest import Archive
from pacs.storage import open_store
from tests.pacs.test_review import LARGE, SMALL, AnalysedStudy, analysed_study
from tests.pacs.test_webhooks import Receiver
from tests.servers import PacsServer, running, wait_for
from tests.viewer_api.test_fhir import get as fhir_get
from tests.viewer_api.test_fhir_validators import validate

STUDIES = ("signed", "race", "bad", "pending", "unanalysed")


def _prepare(home: Path) -> dict[str, AnalysedStudy]:
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    archive = Archive(db, open_store(f"file://{home / 'storage'}", None, None))
    made = {
        name: analysed_study(archive, [LARGE, SMALL], run=name != "unanalysed") for name in STUDIES
    }
    db.dispose()
    return made


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[PacsServer, dict[str, Any]]]:
    home = tmp_path_factory.mktemp("review") / "home"
    home.mkdir()
    studies = _prepare(home)
    env = {
        "PACS_CHANGE_SETTLE": "1",
        "PACS_WEBHOOK_BACKOFF": "0.2",
        "PACS_WEBHOOK_ALLOW": '["127.0.0.1"]',  # the test's webhook receiver
    }
    with running(PacsServer(home, env)) as pacs:
        yield pacs, studies


@pytest.fixture(scope="module")
def server(prepared: tuple[PacsServer, dict[str, Any]]) -> PacsServer:
    return prepared[0]


@pytest.fixture(scope="module")
def studies(prepared: tuple[PacsServer, dict[str, Any]]) -> dict[str, AnalysedStudy]:
    return prepared[1]


def token(server: PacsServer, role: str, subject: str, every_facility: bool = False) -> str:
    """A token of the default facility; *every_facility*: a global admin (reads the audit)."""
    return server.token(role, facilities=("*",) if every_facility else (), subject=subject)


@pytest.fixture(scope="module")
def tokens(server: PacsServer) -> dict[str, str]:
    return {
        "dr-a": token(server, "radiologist", "dr-a"),
        "dr-b": token(server, "radiologist", "dr-b"),
        "admin": token(server, "admin", "admin-1", every_facility=True),
        "emr": token(server, "emr", "emr-1"),
        "modality": token(server, "modality", "ct-1"),
    }


class Radiologist:
    """One radiologist's client for a study's review."""

    def __init__(self, server: PacsServer, bearer: str, study: str) -> None:
        self.url = f"{server.url}/api/v1/studies/{study}/review"
        self.headers = {"Authorization": f"Bearer {bearer}"}

    def get(self) -> dict[str, Any]:
        response = httpx.get(self.url, headers=self.headers)
        assert response.status_code == 200, response.text
        assert response.headers["etag"] == f'"{response.json()["version"]}"'
        return dict(response.json())

    def post(self, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers | headers, timeout=60)

    def act(self, path: str, version: int, **body: Any) -> dict[str, Any]:
        response = self.post(path, {"version": version, **body})
        assert response.status_code == 200, response.text
        answer = dict(response.json())
        assert answer["version"] == version + 1
        return answer


def _dciodvfy(ds: Dataset, path: Path) -> list[str]:
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _changes(server: PacsServer, bearer: str, study: str) -> list[tuple[str, str | None]]:
    feed = httpx.get(
        f"{server.url}/api/v1/changes",
        params={"limit": 1000},
        headers={"Authorization": f"Bearer {bearer}"},
    ).json()["changes"]
    return [
        (c["kind"], c["SOPInstanceUID"])
        for c in feed
        if c["StudyInstanceUID"] == study and c["kind"].startswith("report.")
    ]


def test_review_sign_and_amend(
    server: PacsServer, studies: dict[str, AnalysedStudy], tokens: dict[str, str], tmp_path: Path
) -> None:
    s = studies["signed"]
    uid = s.StudyInstanceUID
    a = Radiologist(server, tokens["dr-a"], uid)
    receiver = Receiver("hook-secret").start()
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    hook = httpx.post(
        f"{server.url}/api/v1/webhooks",
        json={
            "url": receiver.url,
            "events": ["report.final", "report.amended"],
            "secret": "hook-secret",
        },
        headers=admin,
    )
    assert hook.status_code == 201, hook.text
    try:
        _review_sign_and_amend(server, s, a, tokens, tmp_path, receiver)
        _audited(server, admin, "dr-a", uid)
    finally:
        httpx.delete(f"{server.url}/api/v1/webhooks/{hook.json()['id']}", headers=admin)
        receiver.stop()


def _audited(server: PacsServer, admin: dict[str, str], subject: str, uid: str) -> None:
    """The radiologist's review actions and signatures are in the audit trail, each twice: the
    request (with its address) and the change (in its own transaction), on the study."""
    url: str | None = f"{server.url}/fhir/AuditEvent?agent={subject}&_count=100"
    trail: list[dict[str, Any]] = []
    while url is not None:
        page = httpx.get(url, headers=admin).json()
        trail += [entry["resource"] for entry in page.get("entry", [])]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    study = {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}
    trail = [
        r for r in trail if any(e["what"] == {"identifier": study} for e in r.get("entity", []))
    ]
    assert "review" in {r["subtype"][-1]["code"] for r in trail}
    signs = [r for r in trail if r["subtype"][-1]["code"] == "sign" and r["outcome"] == "0"]
    requests = [r for r in signs if "network" in r["agent"][0]]
    assert {r["agent"][0]["network"]["address"] for r in requests} == {"127.0.0.1"}
    assert len(requests) * 2 == len(signs) >= 2  # each signature: its request and its change
    stored = [r for r in trail if r["subtype"][-1]["code"] == "store"]  # the signed SRs
    assert len(stored) == len(requests)


def _review_sign_and_amend(
    server: PacsServer,
    s: AnalysedStudy,
    a: Radiologist,
    tokens: dict[str, str],
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    uid = s.StudyInstanceUID
    review = a.get()
    assert (review["status"], review["version"], review["revision"]) == ("unread", 0, 0)
    assert [f["decision"] for f in review["findings"]] == ["pending", "pending"]
    assert review["pending"] == [LARGE.tracking_uid, SMALL.tracking_uid]

    # Each transition, versioned and attributed.
    review = a.act(f"/findings/{LARGE.tracking_uid}/confirm", 0)
    assert review["status"] == "in_review"
    review = a.act(f"/findings/{SMALL.tracking_uid}/reject", 1, reason="vessel")
    review = a.act(f"/findings/{LARGE.tracking_uid}/correct", 2, diameter_mm=21.0)
    review = a.act("/findings", 3, centre={"x": -20.0, "y": 10.0, "z": -118.0}, diameter_mm=6.5)
    added = review["findings"][-1]
    assert (added["origin"], added["decision"], added["probability"]) == (
        "radiologist",
        "confirmed",
        None,
    )
    review = a.act("/lung-rads", 4, category="4B")
    assert review["lung_rads"]["suggestion"]["category"] == "4B"  # 21.0 mm, solid assumed
    assert review["lung_rads"]["suggestion"]["driving_nodule"] == LARGE.tracking_uid
    assert "solid" in review["lung_rads"]["suggestion"]["caveat"]
    suggested = review["lung_rads"]["suggestion"]
    assert (suggested["row"], suggested["context"], suggested["compared"]) == (
        "solid-baseline-4B",
        "baseline",
        False,
    )
    assert [a["input"] for a in suggested["assumptions"]] == ["type", "prior CT"]
    review = a.act("/impression", 5, text="Solitary 21 mm nodule, right upper lobe.")
    assert [(h["version"], h["actor"], h["action"]) for h in review["history"]] == [
        (1, "dr-a", "confirm"),
        (2, "dr-a", "reject"),
        (3, "dr-a", "correct"),
        (4, "dr-a", "add"),
        (5, "dr-a", "lung_rads"),
        (6, "dr-a", "impression"),
    ]

    # Sign (If-Match carries the version this time).
    response = a.post("/sign", {}, **{"If-Match": '"6"'})
    assert response.status_code == 200, response.text
    review = response.json()
    assert (review["status"], review["revision"], review["version"]) == ("final", 1, 7)
    first = review["signed"]
    assert first["signed_by"] == "dr-a" and first["revision"] == 1

    # The signed SR over WADO-RS: verified, complete, valid, nodules with tracking UIDs.
    web = DICOMwebClient(f"{server.url}/dicom-web", headers=a.headers)
    sr = web.retrieve_instance(uid, first["SeriesInstanceUID"], first["SOPInstanceUID"])
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.InstanceNumber) == (
        "VERIFIED",
        "COMPLETE",
        1,
    )
    assert sr.VerifyingObserverSequence[0].VerifyingObserverName == "dr-a^"  # family name
    assert _predecessors(sr) == {s.ai_sr}
    assert _dciodvfy(sr, tmp_path / "signed.dcm") == []
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    tracked = [str(g.tracking_uid) for g in report.content.get_volumetric_roi_measurement_groups()]
    assert tracked == [LARGE.tracking_uid, added["tracking_uid"]]
    # The AI SR is untouched.
    ai_sr = web.retrieve_instance(uid, *_ai_sr(web, uid, s))
    assert ai_sr.get("VerificationFlag", "UNVERIFIED") == "UNVERIFIED"

    # FHIR: final, one Observation per confirmed or added nodule, the radiologist as performer.
    emr = httpx.Client(
        base_url=f"{server.url}/fhir", headers={"Authorization": f"Bearer {tokens['emr']}"}
    )
    with emr:
        bundle = fhir_get(emr, "/DiagnosticReport", study=uid)
        (fhir_report,) = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        observations = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
        assert fhir_report["status"] == "final"
        assert fhir_report["performer"] == [{"display": "dr-a"}]
        assert "Lung-RADS category 4B" in fhir_report["conclusion"]
        assert len(fhir_report["result"]) == len(observations) == 2
        assert {o["status"] for o in observations} == {"final"}
        diameters = [o["component"][0]["valueQuantity"]["value"] for o in observations]
        assert diameters == [21.0, 6.5]
        assert [o["identifier"][0]["value"] for o in observations] == [
            f"urn:oid:{LARGE.tracking_uid}",
            f"urn:oid:{added['tracking_uid']}",
        ]
        # Ids keep naming one nodule: the AI's finding 1 stays ai-<run>-1, the rejected
        # finding 2 leaves a gap, the added nodule is 3; coordinates in the reviewed series.
        run_id = fhir_report["id"]
        assert [o["id"] for o in observations] == [f"{run_id}-1", f"{run_id}-3"]
        assert all(review["SeriesInstanceUID"] in o["note"][0]["text"] for o in observations)
        assert (
            fhir_get(emr, f"/Observation/{run_id}-3")["identifier"]
            == (observations[1]["identifier"])
        )
        assert emr.get(f"/Observation/{run_id}-2").status_code == 404
        assert fhir_get(emr, "/DiagnosticReport", study=uid, status="final")["total"] == 1
        assert fhir_get(emr, f"/DiagnosticReport/{fhir_report['id']}") == fhir_report
        failures = {
            name: errors
            for name, errors in validate([fhir_report, *observations], tmp_path).items()
            if errors["fhirjs"] or errors["schema"]
        }
        assert failures == {}

        # Nothing new to sign; an edit after signing is an amendment in progress, and FHIR
        # keeps the signed report meanwhile.
        assert a.post("/sign", {"version": 7}).status_code == 409
        review = a.act("/impression", 7, text="Solitary 21 mm nodule; see prior.")
        assert (review["status"], review["amending"], review["revision"]) == (
            "in_review",
            True,
            1,
        )
        assert fhir_get(emr, f"/DiagnosticReport/{fhir_report['id']}")["status"] == "final"
        review = a.act("/sign", 8)
        assert (review["status"], review["revision"]) == ("final", 2)
        second = review["signed"]
        assert second["SeriesInstanceUID"] == first["SeriesInstanceUID"]  # one report series
        amended = fhir_get(emr, f"/DiagnosticReport/{fhir_report['id']}")
        assert amended["status"] == "amended"
        assert fhir_get(emr, "/DiagnosticReport", study=uid, status="amended")["total"] == 1

    sr2 = web.retrieve_instance(uid, second["SeriesInstanceUID"], second["SOPInstanceUID"])
    assert sr2.InstanceNumber == 2
    assert _predecessors(sr2) == {s.ai_sr, first["SOPInstanceUID"]}
    assert _dciodvfy(sr2, tmp_path / "amended.dcm") == []

    # The change feed and the webhook: report.final, then report.amended.
    expected = [
        ("report.final", first["SOPInstanceUID"]),
        ("report.amended", second["SOPInstanceUID"]),
    ]
    assert _changes(server, tokens["dr-b"], uid) == expected

    def delivered() -> list[dict[str, Any]] | None:
        events = [e for e in receiver.received if e["StudyInstanceUID"] == uid]
        return events if len(events) >= len(expected) else None

    events = wait_for(delivered, 30, "the report webhooks")
    assert [(e["event"], e["SOPInstanceUID"]) for e in events] == expected


def _ai_sr(web: DICOMwebClient, study: str, s: AnalysedStudy) -> tuple[str, str]:
    """(series, SOP instance) of the study's AI SR."""
    found = web.search_for_instances(study, search_filters={"SOPInstanceUID": s.ai_sr})
    assert len(found) == 1
    return found[0]["0020000E"]["Value"][0], str(s.ai_sr)


def _predecessors(sr: Dataset) -> set[str]:
    return {
        sop.ReferencedSOPInstanceUID
        for study in sr.PredecessorDocumentsSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def test_a_stale_version_is_409_and_nothing_is_lost(
    server: PacsServer, studies: dict[str, AnalysedStudy], tokens: dict[str, str]
) -> None:
    uid = studies["race"].StudyInstanceUID
    a = Radiologist(server, tokens["dr-a"], uid)
    b = Radiologist(server, tokens["dr-b"], uid)
    seen_by_a, seen_by_b = a.get()["version"], b.get()["version"]
    a.act(f"/findings/{LARGE.tracking_uid}/confirm", seen_by_a)
    refused = b.post(f"/findings/{LARGE.tracking_uid}/reject", {"version": seen_by_b})
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert "version 1" in refused.json()["detail"]
    refused = b.post("/impression", {"text": "mine"}, **{"If-Match": f'"{seen_by_b}"'})
    assert refused.status_code == 409
    review = b.get()
    assert review["findings"][0]["decision"] == "confirmed"
    assert review["impression"] == ""
    assert [(h["actor"], h["action"]) for h in review["history"]] == [("dr-a", "confirm")]
    # b reloads and acts on what a did.
    review = b.act(f"/findings/{SMALL.tracking_uid}/reject", review["version"])
    assert [h["actor"] for h in review["history"]] == ["dr-a", "dr-b"]


def test_bad_input_is_refused_with_a_reason_and_nothing_changes(
    server: PacsServer, studies: dict[str, AnalysedStudy], tokens: dict[str, str]
) -> None:
    a = Radiologist(server, tokens["dr-a"], studies["bad"].StudyInstanceUID)
    a.act("/impression", 0, text="draft")
    before = a.get()
    inside = {"x": 0.0, "y": 0.0, "z": -118.0}
    refusals: list[tuple[str, dict[str, Any], int, str]] = [
        (f"/findings/{generate_uid()}/confirm", {}, 404, "no finding"),
        ("/findings/not-a-uid/reject", {}, 404, "no finding"),
        (f"/findings/{LARGE.tracking_uid}/correct", {"diameter_mm": -4.0}, 400, "diameter"),
        (f"/findings/{LARGE.tracking_uid}/correct", {"diameter_mm": 0}, 400, "diameter"),
        (f"/findings/{LARGE.tracking_uid}/correct", {"diameter_mm": 1e6}, 400, "diameter"),
        (f"/findings/{LARGE.tracking_uid}/correct", {}, 400, "needs a diameter"),
        ("/findings", {"centre": inside, "diameter_mm": -1.0}, 400, "diameter"),
        ("/findings", {"centre": {"x": 0, "y": 0, "z": -400}, "diameter_mm": 5}, 400, "outside"),
        ("/findings", {"centre": {"x": 900, "y": 0, "z": -118}, "diameter_mm": 5}, 400, "outside"),
        (
            f"/findings/{LARGE.tracking_uid}/correct",
            {"centre": {"x": 0, "y": 0, "z": 50}},
            400,
            "outside",
        ),
        ("/findings", {"centre": {"x": 0, "y": 0}, "diameter_mm": 5}, 400, "centre.z"),
        ("/findings", {"centre": inside, "diameter_mm": "big"}, 400, "diameter_mm"),
        ("/lung-rads", {"category": "5"}, 400, "not a Lung-RADS v2022 category"),
        ("/lung-rads", {"category": "4C"}, 400, "Lung-RADS"),
        ("/impression", {"text": "x", "colour": "blue"}, 400, "colour"),
        ("/impression", {"text": "a\x00b"}, 400, "NUL"),
        (f"/findings/{LARGE.tracking_uid}/reject", {"reason": "a\x00b"}, 400, "NUL"),
        ("/sign", {}, 409, "still pending"),
    ]
    for path, body, status, reason in refusals:
        response = a.post(path, {"version": before["version"], **body})
        assert response.status_code == status, (path, body, response.text)
        assert reason in response.json()["detail"], (path, response.json())
    # No version at all, or two that disagree.
    missing = a.post("/impression", {"text": "x"})
    assert missing.status_code == 400 and "version" in missing.json()["detail"]
    both = a.post("/impression", {"text": "x", "version": 1}, **{"If-Match": '"2"'})
    assert both.status_code == 400
    not_json = httpx.post(a.url + "/impression", content=b"{", headers=a.headers)
    assert not_json.status_code == 400
    assert a.get() == before
    # Unknown study.
    other = Radiologist(server, tokens["dr-a"], str(generate_uid()))
    assert httpx.get(other.url, headers=other.headers).status_code == 404


def test_signing_with_pending_findings_names_them(
    server: PacsServer, studies: dict[str, AnalysedStudy], tokens: dict[str, str]
) -> None:
    a = Radiologist(server, tokens["admin"], studies["pending"].StudyInstanceUID)
    review = a.act(f"/findings/{LARGE.tracking_uid}/confirm", 0)
    refused = a.post("/sign", {"version": review["version"]})
    assert refused.status_code == 409
    assert SMALL.tracking_uid in refused.json()["detail"]
    assert LARGE.tracking_uid not in refused.json()["detail"]
    review = a.act(f"/findings/{SMALL.tracking_uid}/reject", review["version"])
    # No impression written: the report says what was confirmed; admin may sign too.
    review = a.act("/sign", review["version"])
    assert review["signed"]["signed_by"] == "admin-1"
    assert review["lung_rads"]["reported"] == "4B"


def test_a_study_without_an_ai_run_cannot_be_reviewed(
    server: PacsServer, studies: dict[str, AnalysedStudy], tokens: dict[str, str]
) -> None:
    a = Radiologist(server, tokens["dr-a"], studies["unanalysed"].StudyInstanceUID)
    review = a.get()
    assert (review["status"], review["ai_run"], review["findings"]) == ("unread", None, [])
    inside = {"x": 0.0, "y": 0.0, "z": -118.0}
    for path, body in (("/findings", {"centre": inside, "diameter_mm": 5.0}), ("/sign", {})):
        refused = a.post(path, {"version": 0, **body})
        assert refused.status_code == 409 and "AI run" in refused.json()["detail"]
    assert a.get() == review


@pytest.mark.parametrize("role", ["emr", "modality"])
def test_emr_and_modality_cannot_review(
    server: PacsServer, studies: dict[str, AnalysedStudy], tokens: dict[str, str], role: str
) -> None:
    uid = studies["race"].StudyInstanceUID
    r = Radiologist(server, tokens[role], uid)
    before = Radiologist(server, tokens["dr-a"], uid).get()
    assert httpx.get(r.url, headers=r.headers).status_code == 403
    for path in (
        f"/findings/{LARGE.tracking_uid}/confirm",
        f"/findings/{LARGE.tracking_uid}/reject",
        f"/findings/{LARGE.tracking_uid}/correct",
        "/findings",
        "/impression",
        "/lung-rads",
        "/sign",
    ):
        assert r.post(path, {"version": before["version"], "text": "x"}).status_code == 403
        assert httpx.post(r.url + path, content=b"junk", headers=r.headers).status_code == 403
        assert httpx.post(r.url + path, json={}).status_code == 401
    assert Radiologist(server, tokens["dr-a"], uid).get() == before
