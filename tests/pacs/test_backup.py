"""Backup and restore (pacs/backup.py, ``pacs backup`` / ``pacs restore``).

The main test takes a backup of a running server while a modality is still sending a CT
series to it, wipes that server, restores into a fresh home and serves the restored archive:
every instance acknowledged before the backup began comes back byte for byte over WADO-RS.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pydicom
import pytest
from sqlalchemy import create_engine, text

from pacs.backup import BLOB_DIR, backup, read_manifest, restore
from pacs.errors import BackupError
from pacs.fsck import fsck
from pacs.index import Database, upgrade
from pacs.ingest import Archive, Source
from pacs.storage import open_store
from tests.conftest import database_url, storage_url
from tests.dicom import CT_SMALL, MR_SMALL
from tests.servers import DATA, PacsServer, PostgresServer, S3Server, running, wait_for
from tests.studies import Study, analyse, nodule, set_review, store_study

LIDC = sorted((DATA / "ct" / "LIDC-IDRI-0001").rglob("*.dcm"))
MULTIPART_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class Sender(threading.Thread):
    """A modality sending a CT series over one association, one instance at a time (a short
    pause between them, as a scanner reconstructing slices); records each acknowledged
    SOP Instance UID."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.acknowledged: list[str] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from pynetdicom import AE, _config

        _config.STORE_SEND_CHUNKED_DATASET = True  # the file's own bytes
        ae = AE(ae_title="CT_SCANNER")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", self.port, ae_title="PACS")
        try:
            for path in LIDC:
                if self.stop.is_set():
                    break
                reply = assoc.send_c_store(path)
                if "Status" in reply and reply.Status == 0x0000:
                    self.acknowledged.append(path.name)
                time.sleep(0.05)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            assoc.release()


def _sop_uids() -> dict[str, tuple[str, bytes]]:
    """File name -> (SOP Instance UID, the data set's bytes after the file meta group)."""
    found = {}
    for path in LIDC:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
        found[path.name] = (str(ds.SOPInstanceUID), path.read_bytes()[meta_end:])
    return found


def _wado(server: PacsServer, token: str, study: str, series: str, sop: str) -> bytes:
    """The stored bytes of one instance over WADO-RS (transfer-syntax=*: as stored)."""
    response = httpx.get(
        f"{server.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
        headers={"Authorization": f"Bearer {token}", "Accept": MULTIPART_DICOM},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    boundary = response.headers["content-type"].split("boundary=")[1].strip('"')
    [part] = response.content.split(f"--{boundary}".encode())[1:-1]
    return part.partition(b"\r\n\r\n")[2].removesuffix(b"\r\n")


@pytest.mark.slow
@pytest.mark.parametrize("index", ["sqlite", "postgresql"])
def test_a_backup_taken_while_receiving_restores_every_acknowledged_instance(
    tmp_path: Path, index: str, request: pytest.FixtureRequest
) -> None:
    env: dict[str, str] = {"PACS_STABLE_AGE": "600"}  # no stability sweep mid-test
    restored_env: dict[str, str] = dict(env)
    if index == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        env["PACS_DATABASE_URL"] = postgres.new_database()
        restored_env["PACS_DATABASE_URL"] = postgres.new_database()
    a = PacsServer(tmp_path / "a", env)
    if index == "postgresql":
        a.pacs("db", "upgrade")
    dest = tmp_path / "backup"
    uids = _sop_uids()
    with running(a):
        # An analysed, reviewed study (AI results and a review), written as the worker and
        # the review API write them, beside the server.
        from pacs.cli.common import open_archive
        from pacs.settings import PacsSettings

        archive = open_archive(PacsSettings(home=a.home, database_url=env.get("PACS_DATABASE_URL")))
        reviewed = Study("Backup^Reviewed", "BK-1", "20240102", facility="default")
        try:
            store_study(archive, reviewed)
            analyse(archive, reviewed, [nodule(0.9, 12.0), nodule(0.3, 5.0)])
            set_review(archive, reviewed, "final")
        finally:
            archive.db.dispose()

        sender = Sender(a.port)
        sender.start()
        wait_for(lambda: len(sender.acknowledged) >= 15, timeout=60, what="15 instances acked")
        before = list(sender.acknowledged)  # acknowledged before the backup began
        a.pacs("backup", str(dest))
        during = len(sender.acknowledged) - len(before)
        sender.stop.set()
        sender.join(timeout=60)
        assert sender.error is None
        assert during > 0, "the sender must still be sending while the backup runs"
        # What the first server stored for them, to compare with after the restore.
        engine = create_engine(a.env.get("PACS_DATABASE_URL") or f"sqlite:///{a.home}/index.db")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT sop_instance_uid, sha256 FROM instance")).all()
        engine.dispose()
        stored = {sop: sha for sop, sha in rows}

    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["counts"]["instances"] >= len(before) + 1
    assert manifest["counts"]["instances"] == manifest["blobs"]
    assert (manifest["counts"]["ai_runs"], manifest["counts"]["reviews"]) == (1, 1)

    # Wipe the first archive: its home, and on PostgreSQL its database.
    shutil.rmtree(a.home)
    if index == "postgresql":
        name = env["PACS_DATABASE_URL"].rsplit("/", 1)[1]
        with psycopg.connect(
            f"host=127.0.0.1 port={postgres.port} user=postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE "{name}"')

    b = PacsServer(tmp_path / "b", restored_env)
    done = b.pacs("restore", str(dest))
    assert "consistent" in done.stdout and "INCONSISTENT" not in done.stdout

    with running(b):
        token = b.token("radiologist")
        for name in before:
            sop, dataset = uids[name]
            ct = pydicom.dcmread(LIDC[0], stop_before_pixels=True)
            got = _wado(b, token, str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID), sop)
            assert got.endswith(dataset), name  # the data set as the modality sent it
            assert hashlib.sha256(got).hexdigest() == stored[sop]
    engine = create_engine(restored_env.get("PACS_DATABASE_URL") or f"sqlite:///{b.home}/index.db")
    with engine.connect() as conn:
        ai = conn.execute(
            text(
                "SELECT count(*) FROM finding f JOIN ai_run r ON f.run_fk = r.id "
                "WHERE r.study_instance_uid = :s"
            ),
            {"s": reviewed.StudyInstanceUID},
        ).scalar_one()
        reviews = conn.execute(
            text("SELECT status FROM review WHERE study_instance_uid = :s"),
            {"s": reviewed.StudyInstanceUID},
        ).all()
    engine.dispose()
    assert ai == 2
    assert [r.status for r in reviews] == ["final"]


def _archive(home: Path) -> Archive:
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    return Archive(db, open_store(f"file://{home / 'storage'}"))


def test_a_damaged_backup_is_refused_before_anything_is_restored(tmp_path: Path) -> None:
    source = _archive(tmp_path / "a")
    source.store(CT_SMALL.read_bytes(), Source("IMPORT"))
    manifest = backup(source.db, source.blobs, tmp_path / "bk")
    source.db.dispose()
    [blob] = (tmp_path / "bk" / BLOB_DIR).rglob("*.dcm")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))

    target = _archive(tmp_path / "b")  # migrated: an index, so also non-empty
    with pytest.raises(BackupError, match="--force"):
        restore(tmp_path / "bk", target.db, target.blobs)
    with pytest.raises(BackupError, match="does not match its SHA-256"):
        restore(tmp_path / "bk", target.db, target.blobs, force=True)
    assert list(target.blobs.list()) == []
    target.db.dispose()
    assert manifest.blobs == 1

    fields = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    (tmp_path / "bk" / "manifest.json").write_text(json.dumps(fields | {"schema_revision": "9999"}))
    with pytest.raises(BackupError, match=r"9999.*unknown to this version"):
        restore(tmp_path / "bk", target.db, target.blobs, force=True)

    (tmp_path / "bk" / "manifest.json").unlink()
    with pytest.raises(BackupError, match="unfinished"):
        read_manifest(tmp_path / "bk")


def test_a_backup_goes_into_a_new_folder(tmp_path: Path) -> None:
    source = _archive(tmp_path / "a")
    (tmp_path / "bk").mkdir()
    (tmp_path / "bk" / "old").write_text("an older backup")
    with pytest.raises(BackupError, match="not an empty folder"):
        backup(source.db, source.blobs, tmp_path / "bk")
    source.db.dispose()


def test_an_index_only_backup_restores_against_the_store_that_kept_the_blobs(
    tmp_path: Path,
) -> None:
    """S3 with its own versioning: the backup holds the index and the list of blobs; the
    restore checks the surviving store holds each of them."""
    source = _archive(tmp_path / "a")
    source.store(CT_SMALL.read_bytes(), Source("IMPORT"))
    manifest = backup(source.db, source.blobs, tmp_path / "bk", include_blobs=False)
    source.db.dispose()
    assert not manifest.blobs_included and manifest.blobs == 1
    assert not (tmp_path / "bk" / BLOB_DIR).exists()

    elsewhere = Database(f"sqlite:///{tmp_path / 'c' / 'index.db'}")
    with pytest.raises(BackupError, match="index-only backup: 1 of its blobs"):
        restore(tmp_path / "bk", elsewhere, open_store(f"file://{tmp_path / 'c' / 'storage'}"))
    elsewhere.dispose()

    fresh = Database(f"sqlite:///{tmp_path / 'b' / 'index.db'}")
    kept = open_store(f"file://{tmp_path / 'a' / 'storage'}")  # the bucket survived
    restore(tmp_path / "bk", fresh, kept)  # not "non-empty": the store is expected to hold them
    with fresh.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM instance")).scalar_one() == 1
    fresh.dispose()


def test_backup_and_restore_on_every_backend(
    archive: Archive, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The blobs go through the BlobStore interface (filesystem or S3), the index through the
    database's own tool; a restore into an empty index and store of the same kinds is whole."""
    for path in (CT_SMALL, MR_SMALL):
        archive.store(path.read_bytes(), Source("IMPORT"))
    manifest = backup(archive.db, archive.blobs, tmp_path / "bk")
    assert (manifest.counts["instances"], manifest.blobs) == (2, 2)

    index = "sqlite" if archive.db.is_sqlite else "postgresql"
    storage = "s3" if archive.blobs.url.startswith("s3") else "filesystem"
    db = Database(database_url(index, tmp_path / "restored", request))
    blobs = open_store(
        storage_url(storage, tmp_path / "restored", request),
        S3Server.access_key,
        S3Server.secret_key,
    )
    restore(tmp_path / "bk", db, blobs)
    restored = Archive(db, blobs)
    try:
        report = fsck(restored, verify_checksums=True, grace=timedelta(0))
        assert report.consistent and report.indexed == report.blobs == 2
        for entry in archive.blobs.list():
            assert blobs.get(entry.key) == archive.blobs.get(entry.key)
    finally:
        db.dispose()
