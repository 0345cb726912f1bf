"""``GET /api/v1/worklist`` over HTTP against a running ``pacs serve``: order, filters, paging,
roles, and 400s that say what is wrong."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pacs.index import Database, upgrade
from pacs.ingest import Archive
from pacs.storage import open_store
from tests.servers import PacsServer, running
from tests.studies import WARD_ORDER, Study, build_ward

URL = "/api/v1/worklist"


def _prepare(home: Path) -> dict[str, Study]:
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    ward = build_ward(Archive(db, open_store(f"file://{home / 'storage'}", None, None)))
    db.dispose()
    return ward


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PacsServer, dict[str, Study]]]:
    home = tmp_path_factory.mktemp("worklist") / "home"
    home.mkdir()
    studies = _prepare(home)
    # A day before anything becomes stable: the sweeper queues no job behind the tests' back.
    with running(PacsServer(home, {"PACS_STABLE_AGE": "86400"})) as pacs:
        yield pacs, studies


@pytest.fixture(scope="module")
def radiologist(ward: tuple[PacsServer, dict[str, Study]]) -> Iterator[httpx.Client]:
    server, _ = ward
    token = server.token("radiologist", facilities=("north", "south"))
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def get(client: httpx.Client, **params: str) -> dict[str, Any]:
    response = client.get(URL, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return dict(response.json())


def names(body: dict[str, Any], ward: dict[str, Study]) -> list[str]:
    by_uid = {s.StudyInstanceUID: name for name, s in ward.items()}
    return [by_uid[item["StudyInstanceUID"]] for item in body["items"]]


def test_worklist_order_and_items(
    ward: tuple[PacsServer, dict[str, Study]], radiologist: httpx.Client
) -> None:
    server, studies = ward
    body = get(radiologist)
    assert names(body, studies) == WARD_ORDER
    assert (body["total"], body["limit"], body["offset"]) == (len(WARD_ORDER), 50, 0)
    first = body["items"][0]
    uid = studies["c"].StudyInstanceUID
    assert first == {
        "StudyInstanceUID": uid,
        "PatientName": "DOE^JOHN",
        "PatientID": "PC",
        "StudyDate": "20240601",
        "StudyTime": "120000",
        "StudyDescription": "e+1",  # CT_small's
        "AccessionNumber": studies["c"].AccessionNumber,
        "ModalitiesInStudy": ["CT"],
        "facility": "north",
        "flagged": True,
        "nodules": 1,
        "largest_diameter_mm": 5.0,
        "highest_probability": 0.95,
        "ai_status": "done",
        "ai_reason": None,
        "review_status": "unread",
        "links": {
            "viewer": f"{server.url}/viewer?StudyInstanceUIDs={uid}",
            "review": f"{server.url}/api/v1/studies/{uid}/review",
            "findings": f"{server.url}/api/v1/studies/{uid}/findings",
        },
    }
    items = dict(zip(WARD_ORDER, body["items"], strict=True))
    assert [items[n]["review_status"] for n in ("a", "b")] == ["in_review", "final"]
    assert items["h"]["ai_status"] == "not_applicable"
    assert items["h"]["ai_reason"].endswith(": Modality MR is not CT")
    assert items["g"]["ai_status"] == "not_queued" and not items["g"]["flagged"]
    assert items["i"]["ai_status"] == "failed"
    # The findings link answers, with the run the worklist summarised.
    findings = radiologist.get(first["links"]["findings"]).json()
    assert [f["probability"] for f in findings["findings"]] == [0.95]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"review_status": "unread"}, ["c", "d", "i", "e", "g", "h", "f", "l", "j", "k", "n"]),
        ({"review_status": "in_review,final"}, ["b", "a"]),
        ({"ai_status": "done"}, ["c", "d", "b", "a", "e", "f"]),
        ({"ai_status": "queued, running"}, ["l", "j", "k"]),
        ({"ai_status": "failed"}, ["i"]),
        ({"ai_status": "not_applicable"}, ["h"]),
        ({"ai_status": "not_queued"}, ["g", "n"]),
        ({"modality": "MR"}, ["h"]),
        ({"modality": "MR,CR"}, ["h"]),
        ({"StudyDate": "20240101-20240331"}, ["b", "a", "k"]),
        ({"from": "20240101", "to": "20240331"}, ["b", "a", "k"]),
        ({"from": "2024-03-01"}, ["c", "b"]),
        ({"to": "2020-12-31"}, ["i", "e"]),
        ({"PatientName": "doe^*"}, ["c", "b", "k"]),
        ({"PatientName": "Smith^Jane"}, ["d"]),
        ({"PatientID": "P?"}, WARD_ORDER),
        ({"PatientID": "PH"}, ["h"]),
        ({"facility": "south"}, ["d", "i", "g"]),
        ({"facility": "south,north"}, WARD_ORDER),
        ({"facility": "north", "ai_status": "done", "review_status": "unread"}, ["c", "e", "f"]),
    ],
)
def test_filters(
    ward: tuple[PacsServer, dict[str, Study]],
    radiologist: httpx.Client,
    params: dict[str, str],
    expected: list[str],
) -> None:
    _, studies = ward
    body = get(radiologist, **params)
    assert names(body, studies) == expected
    assert body["total"] == len(expected)


def test_paging(ward: tuple[PacsServer, dict[str, Study]], radiologist: httpx.Client) -> None:
    _, studies = ward
    pages = [get(radiologist, limit="5", offset=str(offset)) for offset in (0, 5, 10, 15)]
    assert [name for body in pages for name in names(body, studies)] == WARD_ORDER
    assert {body["total"] for body in pages} == {len(WARD_ORDER)}
    assert [body["offset"] for body in pages] == [0, 5, 10, 15]
    filtered = get(radiologist, limit="2", offset="1", ai_status="done")
    assert (names(filtered, studies), filtered["total"]) == (["d", "b"], 6)
    # A limit past the maximum is clamped, as QIDO-RS clamps it; the answer says so.
    assert get(radiologist, limit="100000")["limit"] == 1000


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"review_status": "read"}, "review_status: 'read' is not one of unread, in_review"),
        ({"ai_status": "finished"}, "ai_status: 'finished' is not one of"),
        ({"modality": "c t;"}, "ModalitiesInStudy"),
        ({"StudyDate": "2024-01-01"}, "StudyDate"),
        ({"StudyDate": "20240230"}, "StudyDate"),
        ({"StudyDate": "20240101", "from": "20240101"}, "StudyDate or from/to, not both"),
        ({"from": "01/02/2024"}, "from must be a date"),
        ({"to": "2024-13-01"}, "StudyDate"),
        ({"PatientName": "A=B=C=D"}, "PatientName"),
        ({"PatientID": "x" * 65}, "PatientID"),
        ({"facility": "x" * 65}, "facility"),
        ({"limit": "0"}, "limit must be an integer from 1"),
        ({"limit": "ten"}, "limit must be an integer"),
        ({"offset": "-1"}, "offset must be an integer from 0"),
        ({"StudyDescription": "CHEST"}, "'StudyDescription' is not a worklist parameter"),
    ],
)
def test_malformed_filters_are_400_with_the_reason(
    radiologist: httpx.Client, params: dict[str, str], reason: str
) -> None:
    response = radiologist.get(URL, params=params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert reason in response.json()["detail"]


def test_a_repeated_filter_is_400(radiologist: httpx.Client) -> None:
    response = radiologist.get(f"{URL}?ai_status=done&ai_status=failed")
    assert response.status_code == 400
    assert "ai_status given more than once (separate values with commas)" in response.text


@pytest.mark.parametrize(
    ("roles", "status"),
    [
        (("radiologist",), 200),
        (("admin",), 200),
        (("emr",), 403),
        (("modality",), 403),
        (("emr", "modality"), 403),
    ],
)
def test_roles(
    ward: tuple[PacsServer, dict[str, Study]], roles: tuple[str, ...], status: int
) -> None:
    server, _ = ward
    token = server.token(*roles, facilities=("north", "south"))
    response = httpx.get(server.url + URL, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == status, response.text
    assert httpx.get(server.url + URL).status_code == 401
