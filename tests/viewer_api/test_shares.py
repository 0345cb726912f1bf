"""Sharing over the API (issue 12): an administrator shows a study of its facility to another
facility, lists and revokes grants; a grant opens the study to the other facility's
principals at once, and revoking closes it at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from pacs.facilities import add_facility
from pacs.index import Database, upgrade
from pacs.ingest import Archive
from pacs.storage import open_store
from tests.servers import PacsServer, running
from tests.studies import Study, store_study

NORTH = Study("NORTH^ONE", "PN", "20240101", facility="north")
SOUTH = Study("SOUTH^ONE", "PS", "20240101", facility="south")


def _prepare(home: Path) -> None:
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    archive = Archive(db, open_store(f"file://{home / 'storage'}", None, None))
    for study in (NORTH, SOUTH):
        store_study(archive, study)
    with db.write() as conn:
        add_facility(conn, "west", None)  # registered, without a study
    db.dispose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    home = tmp_path_factory.mktemp("shares") / "home"
    home.mkdir()
    _prepare(home)
    with running(PacsServer(home, {"PACS_STABLE_AGE": "86400"})) as pacs:
        yield pacs


@pytest.fixture(scope="module")
def clients(server: PacsServer) -> Iterator[dict[str, httpx.Client]]:
    made = {
        "north": server.client("admin", facilities=("north",)),
        "south": server.client("admin", facilities=("south",)),
        "west": server.client("admin", facilities=("west",)),
        "south-reader": server.client("radiologist", facilities=("south",)),
    }
    yield made
    for client in made.values():
        client.close()


def shares_of(study: Study) -> str:
    return f"/api/v1/studies/{study.StudyInstanceUID}/shares"


def sees(client: httpx.Client, study: Study) -> bool:
    """Whether QIDO-RS finds the study for the client."""
    found = client.get("/dicom-web/studies", params={"StudyInstanceUID": study.StudyInstanceUID})
    assert found.status_code in (200, 204), found.text
    return found.status_code == 200 and len(found.json()) == 1


def test_share_list_and_revoke(clients: dict[str, httpx.Client]) -> None:
    north, south, reader = clients["north"], clients["south"], clients["south-reader"]
    assert not sees(reader, NORTH)
    # South's administrator cannot share (or see the grants of) a study it does not see.
    assert south.post(shares_of(NORTH), json={"facility": "south"}).status_code == 404
    assert south.get(shares_of(NORTH)).status_code == 404

    made = north.post(shares_of(NORTH), json={"facility": "south", "until": "2999-01-01"})
    assert made.status_code == 201, made.text
    share = made.json()
    assert share["StudyInstanceUID"] == NORTH.StudyInstanceUID
    assert share["facility"] == "south" and share["revoked_at"] is None
    assert share["until"] == "2999-01-02T00:00:00+00:00"  # a date: through that day (UTC)
    assert share["granted_by"] == "pacs-cli"  # the token's subject
    assert sees(reader, NORTH) and sees(reader, SOUTH)
    listed = north.get(shares_of(NORTH))
    assert listed.status_code == 200 and [s["id"] for s in listed.json()] == [share["id"]]

    # A facility that neither owns nor was given the study cannot revoke the grant.
    assert clients["west"].delete(f"/api/v1/shares/{share['id']}").status_code == 404
    assert north.delete("/api/v1/shares/999999").status_code == 404
    assert north.delete(f"/api/v1/shares/{2**63}").status_code == 404
    assert north.delete(f"/api/v1/shares/{share['id']}").status_code == 204
    assert not sees(reader, NORTH)
    (revoked,) = north.get(shares_of(NORTH)).json()
    assert revoked["revoked_at"] is not None and revoked["revoked_by"] == "pacs-cli"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"facility": "nowhere"}, "no facility 'nowhere'"),
        ({"facility": "north"}, "already belongs to facility north"),
        ({"facility": "a,b"}, "is not a facility name"),
        ({"facility": "south", "until": "2001-01-01"}, "is not in the future"),
        ({"facility": "south", "until": "soon"}, "is not an ISO 8601 date"),
        ({"until": "2999-01-01"}, "invalid share (facility)"),
        ({"facility": "x" * 65}, "invalid share (facility)"),
    ],
)
def test_bad_shares_are_400_with_a_reason(
    clients: dict[str, httpx.Client], body: dict[str, str], reason: str
) -> None:
    refused = clients["north"].post(shares_of(NORTH), json=body)
    assert refused.status_code == 400, refused.text
    assert reason in refused.json()["detail"]
    assert clients["north"].post(shares_of(NORTH), content=b"{").status_code == 400


def test_a_grant_ends_at_its_time(clients: dict[str, httpx.Client]) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    made = clients["south"].post(shares_of(SOUTH), json={"facility": "west", "until": soon})
    assert made.status_code == 201, made.text
    west = clients["west"]
    assert west.get(shares_of(SOUTH)).status_code == 200  # the grantee sees the study
    deadline = datetime.fromisoformat(made.json()["until"])
    time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 0.1)
    assert west.get(shares_of(SOUTH)).status_code == 404
