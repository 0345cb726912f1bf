"""``pacs share``: grants made, listed and revoked from the command line (every facility's
studies; attributed to the OS user), and what a grant changes for the other facility."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

from pacs.facilities import Scope, add_facility, visible_study
from pacs.index import Database, upgrade
from pacs.ingest import Archive
from pacs.storage import open_store
from tests.servers import PacsServer
from tests.studies import Study, store_study

NORTH = Study("NORTH^ONE", "PN", "20240101", facility="north")


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    store_study(Archive(db, open_store(f"file://{home / 'storage'}", None, None)), NORTH)
    with db.write() as conn:
        add_facility(conn, "south", None)
    db.dispose()
    return home


def south_sees(home: Path) -> bool:
    db = Database(f"sqlite:///{home / 'index.db'}")
    try:
        with db.read() as conn:
            return visible_study(conn, Scope.of(["south"]), NORTH.StudyInstanceUID) is not None
    finally:
        db.dispose()


def test_share_list_and_revoke(tmp_path: Path) -> None:
    home = _home(tmp_path)
    server = PacsServer(home)  # not started: the CLI works on the index alone
    uid = NORTH.StudyInstanceUID
    assert not south_sees(home)
    made = json.loads(server.pacs("share", uid, "--to", "south", "--until", "2999-12-31").stdout)
    assert made["facility"] == "south" and made["StudyInstanceUID"] == uid
    assert made["granted_by"] == f"cli:{getpass.getuser()}"
    assert made["until"] == "3000-01-01T00:00:00+00:00"
    assert south_sees(home)
    # `add` spelled out is the same command.
    again = json.loads(server.pacs("share", "add", uid, "--to", "south").stdout)
    listed = [json.loads(line) for line in server.pacs("share", "list", uid).stdout.splitlines()]
    assert [s["id"] for s in listed] == [made["id"], again["id"]]
    assert listed[1]["until"] is None

    for grant in (made, again):
        revoked = json.loads(server.pacs("share", "revoke", str(grant["id"])).stdout)
        assert revoked["revoked_by"] == f"cli:{getpass.getuser()}" and revoked["revoked_at"]
    assert not south_sees(home)


def test_bad_shares_fail_with_a_reason(tmp_path: Path) -> None:
    # (The API tests cover every refusal; the CLI shows the archive's reason for some.)
    server = PacsServer(_home(tmp_path))
    uid = NORTH.StudyInstanceUID
    for args, reason in [
        (("share", uid, "--to", "west"), "no facility 'west'"),
        (("share", uid, "--to", "south", "--until", "2000-01-01"), "is not in the future"),
        (("share", "1.2.3", "--to", "south"), "no study 1.2.3"),
        (("share", "revoke", "42"), "no sharing grant 42"),
    ]:
        result = server.pacs(*args, check=False)
        assert result.returncode != 0, args
        assert reason in " ".join((result.stdout + result.stderr).split()), (args, result)
    assert server.pacs("share", "list", uid).stdout == ""
