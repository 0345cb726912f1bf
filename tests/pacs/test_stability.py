"""Durable study stability: fires once per quiet period, again after a late instance, never
twice for one period however many sweepers run; a study that looks incomplete (an unreleased
DIMSE send, InstanceNumber gaps) waits the longer age."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from pacs.index import Database, changes
from pacs.ingest import Archive, Source
from pacs.jobs import list_jobs
from pacs.stability import mark_released, mark_stable
from tests.conftest import database_url, make_archive
from tests.dicom import LIDC_0001, derived, dicom_files, encode
from tests.servers import PacsServer

AGE = timedelta(seconds=60)


QUIET = timedelta(seconds=0.3)
LONGER = timedelta(seconds=1.5)


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


def slice_of(StudyInstanceUID: str, SeriesInstanceUID: str, InstanceNumber: int) -> bytes:
    return encode(
        derived(
            StudyInstanceUID=StudyInstanceUID,
            SeriesInstanceUID=SeriesInstanceUID,
            InstanceNumber=InstanceNumber,
        )
    )


def test_unreleased_send_waits_the_longer_age_until_released(archive: Archive) -> None:
    broken, whole = generate_uid(), generate_uid()
    archive.store(slice_of(broken, generate_uid(), 1), Source("DIMSE"))
    archive.store(slice_of(whole, generate_uid(), 1), Source("DIMSE"))
    released_at = datetime.now(UTC)
    assert mark_released(archive.db, {whole: released_at}) == 1
    time.sleep(QUIET.total_seconds() + 0.1)
    # Quiet for the normal age: only the released send is stable.
    assert mark_stable(archive.db, QUIET, incomplete_age=LONGER) == [whole]
    # A release whose last store came before the study's last instance clears nothing.
    assert mark_released(archive.db, {broken: released_at - QUIET}) == 0
    assert mark_stable(archive.db, QUIET, incomplete_age=LONGER) == []
    time.sleep(LONGER.total_seconds())
    assert mark_stable(archive.db, QUIET, incomplete_age=LONGER) == [broken]
    assert sorted(stable_events(archive.db)) == sorted([broken, whole])


def test_released_resend_makes_a_broken_send_stable_at_the_normal_age(archive: Archive) -> None:
    uid, series_uid = generate_uid(), generate_uid()
    archive.store(slice_of(uid, series_uid, 1), Source("DIMSE"))  # then aborted: not released
    time.sleep(QUIET.total_seconds() + 0.1)
    assert mark_stable(archive.db, QUIET, incomplete_age=LONGER) == []
    archive.store(slice_of(uid, series_uid, 2), Source("DIMSE"))  # the resend, released
    assert mark_released(archive.db, {uid: datetime.now(UTC)}) == 1
    time.sleep(QUIET.total_seconds() + 0.1)
    assert mark_stable(archive.db, QUIET, incomplete_age=LONGER) == [uid]
    assert stable_events(archive.db) == [uid]


def test_a_series_with_instance_number_gaps_waits_the_longer_age(archive: Archive) -> None:
    gapped, gapped_series, whole, whole_series = (generate_uid() for _ in range(4))
    for number in (1, 3):
        archive.store(slice_of(gapped, gapped_series, number), Source("STOW"))
    for number in (2, 1, 3):  # the order of arrival does not matter
        archive.store(slice_of(whole, whole_series, number), Source("STOW"))
    time.sleep(QUIET.total_seconds() + 0.1)
    assert mark_stable(archive.db, QUIET, incomplete_age=LONGER) == [whole]
    time.sleep(LONGER.total_seconds())
    assert mark_stable(archive.db, QUIET, incomplete_age=LONGER) == [gapped]


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
        # The first slices: a contiguous run of InstanceNumbers, stable at the normal age.
        first = sorted(dicom_files(LIDC_0001), key=lambda p: int(dcmread(p).InstanceNumber))[:3]
        server.pacs("send", *map(str, first), "--port", str(server.port))
        db = Database(f"sqlite:///{server.home / 'index.db'}")
        deadline = time.monotonic() + 20
        while not stable_events(db) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(stable_events(db)) == 1
        db.dispose()
    finally:
        server.stop()
