"""The change feed and webhook subscriptions per facility (issue 12): a principal reads the
changes of the studies its facilities see, and an administrator makes, lists and removes
only its facilities' subscriptions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pacs.facilities import Scope
from pacs.index import Database, upgrade
from pacs.ingest import Archive
from pacs.sharing import share_study
from pacs.storage import open_store
from tests.servers import PacsServer, PostgresServer, running
from tests.studies import Study, store_study

STUDIES = {
    "n1": Study("NORTH^ONE", "PN", "20240101", facility="north"),
    "s1": Study("SOUTH^ONE", "PS", "20240101", facility="south"),
    "s2": Study("SOUTH^TWO", "PT", "20240101", facility="south"),
    "s3": Study("SOUTH^THREE", "PU", "20240101", facility="south"),
}
HOOK = "http://127.0.0.1:9/hook"


def _prepare(home: Path, database: str) -> None:
    """Four studies, one change each (instance.stored); s3 shared with north."""
    db = Database(database)
    upgrade(db)
    archive = Archive(db, open_store(f"file://{home / 'storage'}", None, None))
    for study in STUDIES.values():
        store_study(archive, study)
    with db.write() as conn:
        share_study(conn, Scope.everything(), STUDIES["s3"].StudyInstanceUID, "north", "test")
    db.dispose()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer
) -> Iterator[PacsServer]:
    """On PostgreSQL (the other modules of this API run on SQLite)."""
    home = tmp_path_factory.mktemp("changes") / "home"
    home.mkdir()
    database = postgres.new_database()
    _prepare(home, database)
    env = {
        "PACS_STABLE_AGE": "86400",
        "PACS_CHANGE_SETTLE": "0",
        "PACS_WEBHOOK_ALLOW": '["127.0.0.1"]',
        "PACS_DATABASE_URL": database,
    }
    with running(PacsServer(home, env)) as pacs:
        yield pacs


@pytest.fixture(scope="module")
def clients(server: PacsServer) -> Iterator[dict[str, httpx.Client]]:
    made = {
        "north": server.client("radiologist", facilities=("north",)),
        "south": server.client("radiologist", facilities=("south",)),
        "north-admin": server.client("admin", facilities=("north",)),
        "south-admin": server.client("admin", facilities=("south",)),
        "both-admin": server.client("admin", facilities=("north", "south")),
        "global-admin": server.client("admin", facilities=("*",)),
    }
    yield made
    for client in made.values():
        client.close()


def feed(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/api/v1/changes", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def studies(body: dict[str, Any]) -> list[str]:
    by_uid = {s.StudyInstanceUID: name for name, s in STUDIES.items()}
    return [by_uid[c["StudyInstanceUID"]] for c in body["changes"]]


def test_the_feed_shows_the_scope_s_studies(clients: dict[str, httpx.Client]) -> None:
    everything = feed(clients["global-admin"])
    assert studies(everything) == ["n1", "s1", "s2", "s3"]
    last = everything["last"]
    north = feed(clients["north"])
    assert studies(north) == ["n1", "s3"] and north["last"] == last
    assert studies(feed(clients["south"])) == ["s1", "s2", "s3"]


def test_a_poller_s_cursor_moves_past_other_facilities_changes(
    clients: dict[str, httpx.Client],
) -> None:
    seqs = [c["seq"] for c in feed(clients["global-admin"])["changes"]]
    # Two rows after n1 are south's own: north gets none of them, and a cursor past both.
    page = feed(clients["north"], since=seqs[0], limit=2)
    assert page == {"changes": [], "last": seqs[2]}
    rest = feed(clients["north"], since=page["last"], limit=2)
    assert studies(rest) == ["s3"] and rest["last"] == seqs[3]
    assert feed(clients["north"], since=rest["last"]) == {"changes": [], "last": seqs[3]}


def make_hook(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/api/v1/webhooks", json={"url": HOOK, "events": ["study.stable"], **body})


def test_subscriptions_belong_to_facilities(clients: dict[str, httpx.Client]) -> None:
    north, south = clients["north-admin"], clients["south-admin"]
    both, every = clients["both-admin"], clients["global-admin"]
    mine = make_hook(north)
    assert mine.status_code == 201 and mine.json()["facility"] == "north"
    # An administrator of several facilities says which; only one it speaks for.
    unsaid = make_hook(both)
    assert unsaid.status_code == 400 and "say which one" in unsaid.json()["detail"]
    theirs = make_hook(north, facility="south")
    assert theirs.status_code == 400 and "does not speak for facility 'south'" in theirs.text
    southern = make_hook(both, facility="south")
    assert southern.status_code == 201 and southern.json()["facility"] == "south"
    # A global administrator's is for every facility, or for the one it names (a known one).
    assert make_hook(every).json()["facility"] is None
    assert make_hook(every, facility="north").json()["facility"] == "north"
    unknown = make_hook(every, facility="west")
    assert unknown.status_code == 400 and "no facility 'west'" in unknown.json()["detail"]

    def listed(client: httpx.Client) -> list[str | None]:
        response = client.get("/api/v1/webhooks")
        assert response.status_code == 200
        return [hook["facility"] for hook in response.json()]

    assert listed(north) == ["north", "north"]
    assert listed(south) == ["south"]
    assert sorted(listed(both)) == ["north", "north", "south"]
    assert len(listed(every)) == 4
    # Another facility's subscription is not found, for removal too.
    assert south.delete(f"/api/v1/webhooks/{mine.json()['id']}").status_code == 404
    assert north.delete(f"/api/v1/webhooks/{southern.json()['id']}").status_code == 404
    assert north.delete(f"/api/v1/webhooks/{mine.json()['id']}").status_code == 204
    assert listed(north) == ["north"]
