"""``POST /api/v1/exports`` over real HTTP: a `pacs serve` with a project key, studies of two
facilities, the zip read back with pydicom, the audit trail read from the index."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from pacs.audit import AuditAction, EventFilter, find_events
from pacs.facilities import add_facility
from pacs.index import Database, upgrade
from pacs.ingest import Archive, Source
from pacs.storage import open_store
from tests.dicom import derived, encode
from tests.servers import PacsServer, running
from viewer_api.auth import Role, create_token, load_or_create_secret

ROUTE = "/api/v1/exports"


@dataclass
class World:
    server: PacsServer
    home: Path
    north: str  # StudyInstanceUID of north's study (two instances, PatientID N-1)
    north_sops: tuple[str, ...]
    south: str  # south's study (one instance, PatientID S-1)
    tokens: dict[str, str]

    def post(self, token: str, body: Any) -> httpx.Response:
        return httpx.post(
            f"{self.server.url}{ROUTE}",
            headers={"Authorization": f"Bearer {self.tokens[token]}"},
            content=body if isinstance(body, bytes) else json.dumps(body).encode(),
            timeout=30,
        )


def _store(archive: Archive, facility: str, patient_id: str, count: int) -> tuple[str, list[str]]:
    study_uid, series_uid = str(generate_uid()), str(generate_uid())
    sops = []
    for index in range(count):
        ds = derived(
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series_uid,
            PatientID=patient_id,
            PatientName="Export^Test",
            InstanceNumber=index + 1,
        )
        archive.store(encode(ds), Source("IMPORT", facility=facility))
        sops.append(str(ds.SOPInstanceUID))
    return study_uid, sops


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("exports")
    home = root / "home"
    home.mkdir()
    key = root / "project.key"
    key.write_bytes(bytes(range(32)))
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    archive = Archive(db, open_store(f"file://{home / 'storage'}", None, None))
    with db.write() as conn:
        add_facility(conn, "north", "NORTH")
        add_facility(conn, "south", "SOUTH")
    north, north_sops = _store(archive, "north", "N-1", 2)
    south, _ = _store(archive, "south", "S-1", 1)
    db.dispose()
    with running(PacsServer(home, env={"PACS_EXPORT_KEY_FILE": str(key)})) as server:
        secret = load_or_create_secret(home)
        tokens = {
            "north-admin": create_token(secret, "north-admin", [Role.ADMIN], 3600, ["north"]),
            "north-radiologist": create_token(
                secret, "north-radiologist", [Role.RADIOLOGIST], 3600, ["north"]
            ),
        }
        yield World(server, home, north, tuple(north_sops), south, tokens)


def _zip(response: httpx.Response) -> zipfile.ZipFile:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(response.content))


def test_the_zip_holds_deidentified_part10_files_and_a_manifest(world: World) -> None:
    body = {"studies": [world.north], "modified_dates": True}
    zipped = _zip(world.post("north-admin", body))
    names = sorted(zipped.namelist())
    manifest = json.loads(zipped.read("manifest.json"))
    files = [name for name in names if name.endswith(".dcm")]
    assert len(files) == 2 and len(names) == 3
    datasets = [pydicom.dcmread(io.BytesIO(zipped.read(name))) for name in files]
    for name, ds in zip(files, datasets, strict=True):
        assert name == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert ds.PatientID != "N-1"
        assert ds.StudyInstanceUID != world.north
        assert str(ds.SOPInstanceUID) not in world.north_sops
    everything = b"".join(zipped.read(name) for name in names)
    for uid in (world.north, *world.north_sops):
        assert uid.encode() not in everything  # nor in the manifest
    assert manifest["studies"] == 1 and manifest["instances"] == 2
    assert manifest["exported"] == [str(datasets[0].StudyInstanceUID)]
    assert manifest["refused"] == {} and manifest["skipped"] == {}
    # The same key gives the same pseudonyms as the CLI would: same UIDs on a second export.
    again = _zip(world.post("north-admin", {"query": {"PatientID": "N-*"}}))
    assert sorted(again.namelist()) == names


def test_each_exported_study_is_audited_with_the_caller(world: World) -> None:
    _zip(world.post("north-admin", {"studies": [world.north]}))
    db = Database(f"sqlite:///{world.home / 'index.db'}")
    try:
        with db.read() as conn:
            events = [
                stored.event
                for stored in find_events(conn, EventFilter(agent="north-admin"))
                if stored.event.action is AuditAction.EXPORT
            ]
    finally:
        db.dispose()
    per_study = [e for e in events if e.StudyInstanceUID == world.north]
    assert per_study, events
    last = per_study[-1]
    assert last.remote_address == "127.0.0.1"
    assert last.facility == "north"
    assert last.detail["instances"] == 2 and last.detail["deidentified"] is True
    assert any(e.StudyInstanceUID is None and e.detail.get("route") == ROUTE for e in events)


def test_another_facilitys_study_is_not_found(world: World) -> None:
    response = world.post("north-admin", {"studies": [world.south]})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert world.post("north-admin", {"query": {"PatientID": "S-1"}}).status_code == 404
    # Beside one of its own: skipped, the same as an unknown study, and nothing of it sent.
    zipped = _zip(world.post("north-admin", {"studies": [world.north, world.south]}))
    manifest = json.loads(zipped.read("manifest.json"))
    assert manifest["studies"] == 1
    (reason,) = manifest["skipped"].values()
    assert reason == "no such study in facility north"
    assert world.south.encode() not in b"".join(zipped.read(n) for n in zipped.namelist())


def test_non_admins_and_bad_bodies_are_refused(world: World) -> None:
    assert world.post("north-radiologist", {"studies": [world.north]}).status_code == 403
    for body, reason in (
        (b"not json", "invalid export"),
        ({}, "name the studies"),
        ({"studies": [world.north], "key": "secret"}, "invalid export (key)"),
        ({"query": {"NotAKeyword": "1"}}, "NotAKeyword cannot be searched on"),
        ({"query": {"StudyDate": "2024-99"}}, ""),
    ):
        response = world.post("north-admin", body)
        assert response.status_code == 400, (body, response.text)
        assert reason in response.json()["detail"]


def test_without_a_usable_project_key_the_server_exports_nothing(
    world: World, tmp_path: Path
) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"fifteen bytes!!")
    for env, status, reason in (
        ({}, 409, "no project key configured"),
        ({"PACS_EXPORT_KEY_FILE": str(short)}, 503, "project key cannot be used"),
    ):
        with running(PacsServer(world.home, env=env)) as bare:
            response = httpx.post(
                f"{bare.url}{ROUTE}",
                headers={"Authorization": f"Bearer {world.tokens['north-admin']}"},
                json={"studies": [world.north]},
                timeout=30,
            )
        assert response.status_code == status, response.text
        assert reason in response.json()["detail"]
        assert str(short) not in response.text
