"""``GET /api/v1/studies/{study}/findings`` and ``pacs findings``: one JSON shape, from typed
objects, over HTTP against a running ``pacs serve`` and from the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from pacs.index import Database, upgrade
from pacs.ingest import Archive
from pacs.results import Character, Rejection, RunOutcome
from pacs.storage import open_store
from tests.servers import PacsServer, running
from tests.studies import MODEL, Study, analyse, nodule, store_study

ANALYSED = Study("DOE^JOHN", "P1", "20240101")
NOT_APPLICABLE = Study("DOE^JANE", "P2", "20240102")
NEVER_QUEUED = Study("DOE^JIM", "P3", "20240103")
#: What the outline step measured of the larger nodule (models.characterise).
CHARACTER = Character("part-solid", 0.8712, 24.61, 19.83, 22.22, 5210.5, 9.41)


def _prepare(home: Path) -> None:
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    archive = Archive(db, open_store(f"file://{home / 'storage'}", None, None))
    for study in (ANALYSED, NOT_APPLICABLE, NEVER_QUEUED):
        store_study(archive, study)
    characterised = replace(nodule(0.912345, 21.004), character=CHARACTER)
    analyse(archive, ANALYSED, [nodule(0.612345, 8.126), characterised])
    rejected = [Rejection(NOT_APPLICABLE.SeriesInstanceUID, "only 1 slice")]
    analyse(archive, NOT_APPLICABLE, [], RunOutcome.NO_ELIGIBLE_SERIES, rejected)
    db.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    home = tmp_path_factory.mktemp("findings") / "home"
    home.mkdir()
    _prepare(home)
    with running(PacsServer(home, {"PACS_STABLE_AGE": "86400"})) as pacs:
        yield pacs


@pytest.fixture(scope="module")
def emr(server: PacsServer) -> Iterator[httpx.Client]:
    # The studies are north's (tests.studies): an EMR of north reads their findings.
    headers = {"Authorization": f"Bearer {server.token('emr', facilities=('north',))}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers) as client:
        yield client


def findings(client: httpx.Client, study: Study) -> dict[str, Any]:
    response = client.get(f"/studies/{study.StudyInstanceUID}/findings")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_an_analysed_study(emr: httpx.Client) -> None:
    body = findings(emr, ANALYSED)
    run = body["run"]
    datetime.fromisoformat(run.pop("created_at"))
    assert body["job"].pop("id") == run["job_id"]
    assert body == {
        "StudyInstanceUID": ANALYSED.StudyInstanceUID,
        "status": "done",
        "job": {"status": "done", "attempts": 1, "max_attempts": 3, "last_error": None},
        "run": {
            "id": run["id"],
            "job_id": run["job_id"],
            "SeriesInstanceUID": ANALYSED.SeriesInstanceUID,
            "model": {"name": MODEL[0], "version": MODEL[1]},
            "outcome": "analysed",
            "seconds": 1.5,
            "results": {"SR": None, "SEG": None},
            "rejected_series": [],
            "prior": None,  # no earlier CT of the patient compared
        },
        "findings": [  # most probable first; diameter to 0.01 mm, probability to 4 places
            {
                "tracking_uid": body["findings"][0]["tracking_uid"],
                "position_mm": {"x": 10.0, "y": 20.0, "z": -30.0},
                "coordinate_system": "DICOM patient (LPS)",
                "diameter_mm": 21.0,
                "probability": 0.9123,
                "character": {
                    "type": "part-solid",
                    "type_probability": 0.8712,
                    "long_axis_mm": 24.61,
                    "short_axis_mm": 19.83,
                    "mean_diameter_mm": 22.22,
                    "volume_mm3": 5210.5,
                    "solid_diameter_mm": 9.41,
                },
                "prior": None,
            },
            {
                "tracking_uid": body["findings"][1]["tracking_uid"],
                "position_mm": {"x": 10.0, "y": 20.0, "z": -30.0},
                "coordinate_system": "DICOM patient (LPS)",
                "diameter_mm": 8.13,
                "probability": 0.6123,
                "character": None,  # not outlined (or analysed before characterisation)
                "prior": None,
            },
        ],
    }


def test_a_study_without_an_eligible_series_says_why(emr: httpx.Client) -> None:
    body = findings(emr, NOT_APPLICABLE)
    assert body["status"] == "done" and body["findings"] == []
    assert body["run"]["outcome"] == "no_eligible_series"
    assert body["run"]["SeriesInstanceUID"] is None
    assert body["run"]["rejected_series"] == [
        {"SeriesInstanceUID": NOT_APPLICABLE.SeriesInstanceUID, "reason": "only 1 slice"}
    ]


def test_a_study_never_queued(emr: httpx.Client) -> None:
    assert findings(emr, NEVER_QUEUED) == {
        "StudyInstanceUID": NEVER_QUEUED.StudyInstanceUID,
        "status": "not_queued",
        "job": None,
        "run": None,
        "findings": [],
    }


def test_unknown_and_invalid_studies(server: PacsServer, emr: httpx.Client) -> None:
    assert emr.get("/studies/1.2.3.999/findings").status_code == 404
    invalid = emr.get("/studies/1.02.3/findings")
    assert invalid.status_code == 400 and "not a valid UID" in invalid.json()["detail"]
    # The token is checked before the study: no answer about a study without one.
    assert httpx.get(f"{server.url}/api/v1/studies/1.2.3.999/findings").status_code == 401


def test_the_cli_prints_what_the_api_answers(server: PacsServer, emr: httpx.Client) -> None:
    for study in (ANALYSED, NOT_APPLICABLE, NEVER_QUEUED):
        printed = server.pacs("findings", study.StudyInstanceUID, "--json").stdout
        assert json.loads(printed) == findings(emr, study)
    text = server.pacs("findings", ANALYSED.StudyInstanceUID).stdout.splitlines()
    assert text[0] == f"study {ANALYSED.StudyInstanceUID}: job done"
    assert (
        text[1].startswith("run ") and "(demo-nodule-centernet 1.0.0, analysed, 1.500 s)" in text[1]
    )
    assert text[2:] == [
        "  nodule at (10.0, 20.0, -30.0) mm LPS, 21.0 mm, p=0.912",
        "    part-solid (p=0.87), long 24.6 x short 19.8 mm, mean 22.2 mm, 5210 mm3, solid 9.4 mm",
        "  nodule at (10.0, 20.0, -30.0) mm LPS, 8.1 mm, p=0.612",
    ]
    text = server.pacs("findings", NOT_APPLICABLE.StudyInstanceUID).stdout.splitlines()
    assert text[2:] == [
        f"  not analysed: {NOT_APPLICABLE.SeriesInstanceUID}: only 1 slice",
        "  no nodules found",
    ]
    never = server.pacs("findings", NEVER_QUEUED.StudyInstanceUID).stdout
    assert never == f"study {NEVER_QUEUED.StudyInstanceUID}: job not_queued\n"
    unknown = server.pacs("findings", "1.2.3.999", check=False)
    assert unknown.returncode == 1 and "no study 1.2.3.999" in unknown.stderr
