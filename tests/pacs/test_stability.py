"""Durable study stability: fires once per quiet period, again after a late instance, never
twice for one period however many sweepers run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from pacs.index import Database, changes
from pacs.ingest import Archive, Source
from pacs.jobs import list_jobs
from pacs.stability import mark_stable
from tests.conftest import database_url, make_archive
from tests.dicom import LIDC_0001, derived, dicom_files, encode
from tests.servers import PacsServer

AGE = timedelta(seconds=60)


QUIET = timedelta(seconds=0.3)


@pytest.fixture(params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    built = make_archive(database_url(request.param, tmp_path, request), f"file://{tmp_path / 's'}")
    yield built
    built.db.dispose()


def stable_events(db: Database) -> list[str]:
    with db.read() as conn:
        return [c.StudyInstanceUID for c in changes(conn) if c.kind == "study.stable"]


def test_quiet_study_becomes_stable_once_and_again_after_a_late_instance(archive: Archive) -> None:
    first = derived()
    archive.store(encode(first), Source("IMPORT"))
    assert mark_stable(archive.db, QUIET) == []  # still receiving
    time.sleep(QUIET.total_seconds() + 0.1)
    assert mark_stable(archive.db, QUIET) == [first.StudyInstanceUID]
    assert mark_stable(archive.db, QUIET) == []  # fired once for this quiet period
    archive.store(encode(derived(SOPInstanceUID=generate_uid())), Source("IMPORT"))  # late
    assert mark_stable(archive.db, QUIET) == []
    time.sleep(QUIET.total_seconds() + 0.1)
    assert mark_stable(archive.db, QUIET) == [first.StudyInstanceUID]
    assert stable_events(archive.db) == [first.StudyInstanceUID] * 2


def test_concurrent_sweepers_fire_each_study_once(archive: Archive) -> None:
    studies = []
    for _ in range(10):
        ds = derived(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
        archive.store(encode(ds), Source("IMPORT"))
        studies.append(ds.StudyInstanceUID)
    future = datetime.now(UTC) + AGE
    databases = [Database(archive.db.url) for _ in range(4)]  # as separate processes would
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda db: mark_stable(db, AGE, future, job_kinds=("inference",)), databases)
        )
    for db in databases:
        db.dispose()
    assert sorted(uid for marked in results for uid in marked) == sorted(studies)
    assert sorted(stable_events(archive.db)) == sorted(studies)
    with archive.db.read() as conn:  # each stable study yields exactly one job
        jobs = list_jobs(conn)
    assert sorted(str(j.StudyInstanceUID) for j in jobs) == sorted(studies)


def test_served_archive_emits_study_stable(tmp_path: Path) -> None:
    server = PacsServer(tmp_path / "home", {"PACS_STABLE_AGE": "1"}).start()
    try:
        server.pacs("send", *map(str, dicom_files(LIDC_0001)[:3]), "--port", str(server.port))
        db = Database(f"sqlite:///{server.home / 'index.db'}")
        deadline = time.monotonic() + 20
        while not stable_events(db) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(stable_events(db)) == 1
        db.dispose()
    finally:
        server.stop()
