"""FHIR per facility (issue 12): searches, reads, _include/_revinclude and paging see only the
caller's facilities' studies and those shared with them; a global admin sees every one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pacs.facilities import Scope
from pacs.index import Database, upgrade
from pacs.ingest import Archive
from pacs.jobs import complete
from pacs.sharing import share_study
from pacs.storage import open_store
from tests.servers import PacsServer, running
from tests.studies import Study, nodule, save, start_job, store_study

# The same MRN at two facilities is two patients; south's patient PS2 has two studies, one
# shared with north (a referral), one not.
STUDIES = {
    "n1": Study("NORTH^ONE", "SAME", "20240101", facility="north"),
    "s1": Study("SOUTH^ONE", "SAME", "20240102", facility="south"),
    "s2": Study("SOUTH^TWO", "PS2", "20240103", facility="south"),
    "s3": Study("SOUTH^TWO", "PS2", "20240104", facility="south"),
}
NORTH_SEES = {"n1", "s2"}
SOUTH_SEES = {"s1", "s2", "s3"}


def _prepare(home: Path) -> dict[str, int]:
    """The studies, an AI run on n1, s1 and s2 (their ids), s2 shared with north."""
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    archive = Archive(db, open_store(f"file://{home / 'storage'}", None, None))
    runs = {}
    for name, study in STUDIES.items():
        store_study(archive, study)
        if name != "s3":
            job_id = start_job(archive, study)
            runs[name] = save(archive, study, job_id, [nodule(0.9, 12)])
            complete(db, job_id, "test", f"ai_run:{runs[name]}")
    with db.write() as conn:
        share_study(conn, Scope.everything(), STUDIES["s2"].StudyInstanceUID, "north", "test")
    db.dispose()
    return runs


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PacsServer, dict[str, int]]]:
    home = tmp_path_factory.mktemp("fhir-isolation") / "home"
    home.mkdir()
    runs = _prepare(home)
    with running(PacsServer(home, {"PACS_STABLE_AGE": "86400"})) as pacs:
        yield pacs, runs


def _client(server: PacsServer, role: str, *facilities: str) -> httpx.Client:
    token = server.token(role, facilities=facilities)
    return httpx.Client(base_url=f"{server.url}/fhir", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def north(site: tuple[PacsServer, dict[str, int]]) -> Iterator[httpx.Client]:
    with _client(site[0], "emr", "north") as client:
        yield client


@pytest.fixture(scope="module")
def south(site: tuple[PacsServer, dict[str, int]]) -> Iterator[httpx.Client]:
    with _client(site[0], "emr", "south") as client:
        yield client


def get(client: httpx.Client, url: str, **params: Any) -> dict[str, Any]:
    response = client.get(url, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def names(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    """The studies (by their name in STUDIES) of the bundle's ImagingStudy or report entries."""
    by_uid = {s.StudyInstanceUID: name for name, s in STUDIES.items()}
    found = set()
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        if entry["search"]["mode"] != mode:
            continue
        if resource["resourceType"] == "ImagingStudy":
            found.add(by_uid[resource["id"]])
        elif resource["resourceType"] == "DiagnosticReport":
            found.add(by_uid[resource["imagingStudy"][0]["reference"].split("/")[-1]])
    return found


def patient_id(client: httpx.Client, name: str) -> str:
    study = get(client, f"/ImagingStudy/{STUDIES[name].StudyInstanceUID}")
    return str(study["subject"]["reference"])


def test_searches_see_own_and_shared_studies(north: httpx.Client, south: httpx.Client) -> None:
    assert names(get(north, "/ImagingStudy")) == NORTH_SEES
    assert get(north, "/ImagingStudy")["total"] == len(NORTH_SEES)
    assert names(get(south, "/ImagingStudy")) == SOUTH_SEES
    # A search naming another facility's study finds nothing (no "forbidden": no leak).
    s1 = STUDIES["s1"].StudyInstanceUID
    assert get(north, "/ImagingStudy", _id=s1)["total"] == 0
    assert get(north, "/ImagingStudy", identifier=STUDIES["s1"].AccessionNumber)["total"] == 0
    assert names(get(north, "/DiagnosticReport")) == {"n1", "s2"}
    assert names(get(south, "/DiagnosticReport")) == {"s1", "s2"}


def test_reads_outside_the_scope_are_not_found(
    site: tuple[PacsServer, dict[str, int]], north: httpx.Client, south: httpx.Client
) -> None:
    _, runs = site
    for name in STUDIES:
        code = north.get(f"/ImagingStudy/{STUDIES[name].StudyInstanceUID}").status_code
        assert code == (200 if name in NORTH_SEES else 404), name
    assert north.get(f"/DiagnosticReport/ai-{runs['s1']}").status_code == 404
    assert north.get(f"/Observation/ai-{runs['s1']}-1").status_code == 404
    assert north.get(f"/DiagnosticReport/ai-{runs['s2']}").status_code == 200
    assert north.get(f"/Observation/ai-{runs['s2']}-1").status_code == 200
    assert south.get(f"/DiagnosticReport/ai-{runs['n1']}").status_code == 404


def test_patients(north: httpx.Client, south: httpx.Client) -> None:
    south_same = patient_id(south, "s1")
    north_same = patient_id(north, "n1")
    assert south_same != north_same
    # Another facility's patient is not found, by read or by search on its MRN.
    assert north.get(f"/{south_same}").status_code == 404
    found = get(north, "/Patient", identifier="SAME")
    assert [e["resource"]["id"] for e in found["entry"]] == [north_same.split("/")[1]]
    assert get(north, "/Patient", _id=south_same.split("/")[1])["total"] == 0
    # A patient with a study shared into the scope is visible, with only the shared study.
    shared = patient_id(north, "s2")
    assert get(north, f"/{shared}")["identifier"][0]["value"] == "PS2"
    assert get(north, "/Patient", identifier="PS2")["total"] == 1
    assert names(get(north, "/ImagingStudy", patient=shared)) == {"s2"}
    assert names(get(south, "/ImagingStudy", patient=shared)) == {"s2", "s3"}
    assert names(get(north, "/ImagingStudy", **{"patient.identifier": "PS2"})) == {"s2"}


def test_include_and_revinclude_stay_in_scope(north: httpx.Client) -> None:
    bundle = get(
        north,
        "/ImagingStudy",
        _include="ImagingStudy:patient",
        _revinclude="DiagnosticReport:imaging-study",
    )
    included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    patients = {r["identifier"][0]["value"] for r in included if r["resourceType"] == "Patient"}
    assert patients == {"SAME", "PS2"}
    assert len([r for r in included if r["resourceType"] == "Patient"]) == 2
    assert names(bundle, "include") == {"n1", "s2"}  # the reports, of visible studies only
    reports = get(north, "/DiagnosticReport", _include="DiagnosticReport:patient")
    assert names(reports) == {"n1", "s2"}
    included = [e["resource"] for e in reports["entry"] if e["search"]["mode"] == "include"]
    assert {r["subject"]["reference"] for r in included if r["resourceType"] == "Observation"} <= {
        patient_id(north, "n1"),
        patient_id(north, "s2"),
    }


def test_paging_links_are_answered_in_the_follower_s_scope(
    north: httpx.Client, south: httpx.Client
) -> None:
    first = get(north, "/ImagingStudy", _count=1)
    assert first["total"] == 2 and len(first["entry"]) == 1
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    # North's next page, followed by north: the other of north's studies.
    page = north.get(following)
    assert page.status_code == 200
    assert names(page.json()) | names(first) == NORTH_SEES
    # The same link followed with south's token: south's second study, none of north's.
    leaked = south.get(following)
    assert leaked.status_code == 200
    body = leaked.json()
    assert body["total"] == len(SOUTH_SEES)
    assert names(body) <= SOUTH_SEES and "n1" not in names(body)


def test_a_global_admin_sees_every_facility(site: tuple[PacsServer, dict[str, int]]) -> None:
    server, runs = site
    with _client(server, "admin", "*") as admin:
        assert names(get(admin, "/ImagingStudy")) == set(STUDIES)
        assert admin.get(f"/DiagnosticReport/ai-{runs['s1']}").status_code == 200
        assert get(admin, "/Patient", identifier="SAME")["total"] == 2
    with _client(server, "admin", "north", "south") as both:
        assert names(get(both, "/ImagingStudy")) == set(STUDIES)
