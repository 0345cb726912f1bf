"""The review in the index: transitions, the version check, the analysed volume, signatures.

Also the helper the API tests share: a study of real LIDC-IDRI-0001 slices with an AI run (and
its TID 1500 SR) saved as the pipeline saves them, without running a model.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from inference.dicom_results import build_sr
from pacs.changefeed import ChangeKind
from pacs.index.schema import change, review_action, review_finding
from pacs.ingest import Archive, Source
from pacs.jobs import claim_next_job, complete, enqueue
from pacs.results import NODULE_DETECTION, Finding, NewRun, RunOutcome, save_run
from pacs.review import (
    AddNodule,
    Confirm,
    Correct,
    Decision,
    InvalidEdit,
    NotReviewable,
    NotSignable,
    Origin,
    Point,
    Reject,
    Review,
    ReviewedFinding,
    ReviewStatus,
    SetImpression,
    SetLungRads,
    SignedReport,
    StaleVersion,
    UnknownFinding,
    VolumeBounds,
    apply_edit,
    check_signable,
    edit_review,
    load_review,
    record_signature,
    series_headers,
)
from tests.conftest import database_url, make_archive
from tests.dicom import LIDC_0001, dicom_files, encode
from tests.models.tiny import tiny_spec

SPEC = tiny_spec(name="demo-nodule-centernet", version="1.0.0")
#: The LUNA16 nodule of LIDC-IDRI-0001, and a small one in the same slab.
LARGE = Finding(56.21, 86.34, -115.87, 23.35, 0.93)
SMALL = Finding(-60.0, 20.0, -120.0, 5.2, 0.61)
INSIDE = Point(0.0, 0.0, -118.0)
OUTSIDE = [Point(0.0, 0.0, -300.0), Point(500.0, 0.0, -118.0), Point(0.0, -250.0, -118.0)]


@dataclass(frozen=True)
class AnalysedStudy:
    StudyInstanceUID: str
    SeriesInstanceUID: str
    ai_sr: str | None
    findings: list[Finding]


@functools.cache
def lidc_slab(centre_z: float = -118.0, count: int = 16) -> tuple[Path, ...]:
    """The *count* LIDC-IDRI-0001 slices nearest *centre_z* (a slab around the nodule)."""
    files = dicom_files(LIDC_0001)
    z = {
        f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files
    }
    return tuple(sorted(files, key=lambda f: abs(z[f] - centre_z))[:count])


def analysed_study(
    archive: Archive, findings: list[Finding], *, run: bool = True, ai_sr: bool = True
) -> AnalysedStudy:
    """A new study (new UIDs) of a real CT slab, with a done AI job, its run and its AI SR."""
    study, series = str(generate_uid()), str(generate_uid())
    headers = []
    for path in lidc_slab():
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        archive.store(encode(ds), Source("IMPORT"))
        headers.append(ds)
    if not run:
        return AnalysedStudy(study, series, None, [])
    with archive.db.write() as conn:
        enqueue(conn, NODULE_DETECTION, study)
    job = claim_next_job(archive.db, "test", [NODULE_DETECTION], timedelta(seconds=60))
    assert job is not None and job.StudyInstanceUID == study
    sr_uid = None
    if ai_sr:
        sr_uid = archive.store(
            encode(build_sr(headers, findings, SPEC)), Source("AI")
        ).SOPInstanceUID
    new = NewRun(
        job.id,
        study,
        series,
        (SPEC.name, SPEC.version),
        RunOutcome.ANALYSED,
        [],
        findings,
        1.0,
        sr_uid,
    )
    run_id = save_run(archive.db, new)
    complete(archive.db, job.id, "test", f"ai_run:{run_id}")
    return AnalysedStudy(study, series, sr_uid, findings)


@pytest.fixture(params=["sqlite", "postgresql"])
def indexed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    """An archive on each index database (the version check is the database's)."""
    built = make_archive(
        database_url(request.param, tmp_path, request), f"file://{tmp_path / 'storage'}"
    )
    yield built
    built.db.dispose()


def _counts(archive: Archive) -> tuple[int, int]:
    with archive.db.read() as conn:
        actions = conn.execute(select(func.count()).select_from(review_action)).scalar_one()
        findings = conn.execute(select(func.count()).select_from(review_finding)).scalar_one()
    return actions, findings


def _review(archive: Archive, study: str) -> Review:
    with archive.db.read() as conn:
        return load_review(conn, study)


def test_an_unread_review_shows_the_ai_findings_pending(embedded_archive: Archive) -> None:
    s = analysed_study(embedded_archive, [LARGE, SMALL])
    r = _review(embedded_archive, s.StudyInstanceUID)
    assert (r.status, r.version, r.revision, r.history) == (ReviewStatus.UNREAD, 0, 0, [])
    assert [f.tracking_uid for f in r.findings] == [LARGE.tracking_uid, SMALL.tracking_uid]
    assert {f.decision for f in r.findings} == {Decision.PENDING}
    assert r.run is not None and r.run.sr_sop_instance_uid == s.ai_sr
    assert r.suggestion.category == "1"  # nothing confirmed yet
    assert _counts(embedded_archive) == (0, 0)  # reading creates nothing


def test_every_transition_is_versioned_and_kept(embedded_archive: Archive) -> None:
    a = embedded_archive
    s = analysed_study(a, [LARGE, SMALL])
    uid = s.StudyInstanceUID
    edit_review(a, uid, 0, "dr-a", Confirm(LARGE.tracking_uid))
    edit_review(a, uid, 1, "dr-a", Reject(SMALL.tracking_uid, "vessel"))
    edit_review(a, uid, 2, "dr-b", Correct(LARGE.tracking_uid, 14.2, Point(50.0, 80.0, -116.0)))
    r = edit_review(a, uid, 3, "dr-b", AddNodule(INSIDE, 7.0))
    r = edit_review(a, uid, 4, "dr-b", SetImpression("One nodule."))
    r = edit_review(a, uid, 5, "dr-b", SetLungRads("4B"))
    assert (r.status, r.version, r.amending) == (ReviewStatus.IN_REVIEW, 6, False)
    large, small, added = r.findings
    assert (large.decision, large.diameter_mm, large.centre) == (
        Decision.CONFIRMED,
        14.2,
        Point(50.0, 80.0, -116.0),
    )
    assert (small.decision, small.reason) == (Decision.REJECTED, "vessel")
    assert (added.origin, added.decision, added.probability) == (
        Origin.RADIOLOGIST,
        Decision.CONFIRMED,
        None,
    )
    # The suggestion follows the largest confirmed nodule (14.2 mm: 4A); the radiologist's 4B
    # is kept beside it.
    assert (r.suggestion.category, r.lung_rads) == ("4A", "4B")
    assert r.suggestion.driving_nodule is not None
    assert r.suggestion.driving_nodule.tracking_uid == LARGE.tracking_uid
    assert [(h.version, h.actor, h.action.value) for h in r.history] == [
        (1, "dr-a", "confirm"),
        (2, "dr-a", "reject"),
        (3, "dr-b", "correct"),
        (4, "dr-b", "add"),
        (5, "dr-b", "impression"),
        (6, "dr-b", "lung_rads"),
    ]
    assert r.history[1].detail == {"reason": "vessel"}
    assert r.history[2].detail["before"]["diameter_mm"] == LARGE.diameter_mm
    assert r.history[3].tracking_uid == added.tracking_uid


def test_a_stale_version_changes_nothing(indexed: Archive) -> None:
    a = indexed
    s = analysed_study(a, [LARGE, SMALL])
    uid = s.StudyInstanceUID
    edit_review(a, uid, 0, "dr-a", Confirm(LARGE.tracking_uid))
    before = _counts(a)
    for seen in (0, 2, 7):
        with pytest.raises(StaleVersion, match="version 1"):
            edit_review(a, uid, seen, "dr-b", Reject(LARGE.tracking_uid))
        with pytest.raises(StaleVersion):  # also when only the transaction sees it
            apply_edit(a.db, uid, seen, "dr-b", Reject(LARGE.tracking_uid))
    assert _counts(a) == before
    assert _review(a, uid).findings[0].decision == Decision.CONFIRMED


@pytest.mark.parametrize("started", [False, True])
def test_two_radiologists_at_once_one_wins(indexed: Archive, started: bool) -> None:
    """Both saw the same version: of the review not yet started (two first actions meet on
    the unique study), or of one in progress (the UPDATE ... WHERE version = :seen)."""
    a = indexed
    s = analysed_study(a, [LARGE, SMALL])
    seen = 0
    if started:
        edit_review(a, s.StudyInstanceUID, 0, "dr-0", SetImpression("draft"))
        seen = 1
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def act(who: str, edit: Confirm | Reject) -> None:
        barrier.wait()
        try:
            apply_edit(a.db, s.StudyInstanceUID, seen, who, edit)
            outcomes.append(who)
        except StaleVersion:
            outcomes.append("stale")

    threads = [
        threading.Thread(target=act, args=("dr-a", Confirm(LARGE.tracking_uid))),
        threading.Thread(target=act, args=("dr-b", Reject(LARGE.tracking_uid))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes)[-1] == "stale" and len(outcomes) == 2
    r = _review(a, s.StudyInstanceUID)
    winners = [o for o in outcomes if o != "stale"]
    assert r.version == seen + 1 and [h.actor for h in r.history][seen:] == winners


def test_bad_edits_are_refused_before_anything_changes(embedded_archive: Archive) -> None:
    a = embedded_archive
    s = analysed_study(a, [LARGE])
    uid = s.StudyInstanceUID
    edit_review(a, uid, 0, "dr-a", SetImpression("draft"))
    before = _counts(a)
    with pytest.raises(UnknownFinding):
        edit_review(a, uid, 1, "dr-a", Confirm(str(generate_uid())))
    with pytest.raises(UnknownFinding):
        apply_edit(a.db, uid, 1, "dr-a", Reject(str(generate_uid())))
    for diameter in (-3.0, 0.0, 101.0, float("nan"), float("inf")):
        with pytest.raises(InvalidEdit, match="diameter"):
            AddNodule(INSIDE, diameter)
    with pytest.raises(InvalidEdit, match="needs a diameter, a centre"):
        Correct(LARGE.tracking_uid)
    for outside in OUTSIDE:
        with pytest.raises(InvalidEdit, match="outside the analysed CT volume"):
            edit_review(a, uid, 1, "dr-a", AddNodule(outside, 5.0))
        with pytest.raises(InvalidEdit, match="outside"):
            edit_review(a, uid, 1, "dr-a", Correct(LARGE.tracking_uid, centre=outside))
    for category in ("5", "4C", "4a", ""):
        with pytest.raises(InvalidEdit, match="Lung-RADS"):
            SetLungRads(category)
    assert _counts(a) == before and _review(a, uid).version == 1


def test_the_volume_is_the_analysed_slab(embedded_archive: Archive) -> None:
    s = analysed_study(embedded_archive, [LARGE])
    bounds = VolumeBounds.of(series_headers(embedded_archive, s.SeriesInstanceUID))
    zs = sorted(float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in lidc_slab())
    # Axial slices: the normal is +z; a half slice of margin beyond the first and last.
    assert bounds.contains(Point(0.0, 0.0, zs[0] - 1.2))
    assert not bounds.contains(Point(0.0, 0.0, zs[0] - 1.3))
    assert bounds.contains(Point(0.0, 0.0, zs[-1] + 1.2))
    assert not bounds.contains(Point(0.0, 0.0, zs[-1] + 1.3))
    assert bounds.contains(Point(LARGE.x, LARGE.y, LARGE.z))


def test_a_study_without_an_analysed_run_cannot_be_reviewed(embedded_archive: Archive) -> None:
    s = analysed_study(embedded_archive, [], run=False)
    r = _review(embedded_archive, s.StudyInstanceUID)
    assert (r.status, r.run, r.findings) == (ReviewStatus.UNREAD, None, [])
    with pytest.raises(NotReviewable):
        edit_review(embedded_archive, s.StudyInstanceUID, 0, "dr-a", SetImpression("x"))
    with pytest.raises(NotReviewable):
        apply_edit(embedded_archive.db, s.StudyInstanceUID, 0, "dr-a", SetImpression("x"))
    with pytest.raises(NotReviewable):
        check_signable(r)
    assert _counts(embedded_archive) == (0, 0)


def _signed(revision: int, nodules: list[ReviewedFinding], series: str = "1.2.3") -> SignedReport:
    return SignedReport(
        revision=revision,
        SOPInstanceUID=str(generate_uid()),
        SeriesInstanceUID=series,
        signed_by="dr-a",
        signed_at=datetime.now(UTC),
        impression="x",
        lung_rads="2",
        lung_rads_note="n",
        nodules=nodules,
        numbers=list(range(1, len(nodules) + 1)),
        analysed_series="1.2.3.4",
    )


def test_signatures_final_then_amended_with_change_rows(embedded_archive: Archive) -> None:
    a = embedded_archive
    s = analysed_study(a, [LARGE, SMALL])
    uid = s.StudyInstanceUID
    r = edit_review(a, uid, 0, "dr-a", Confirm(LARGE.tracking_uid))
    with pytest.raises(NotSignable, match="1 AI finding") as pending:
        check_signable(r)
    assert pending.value.pending == [SMALL.tracking_uid]
    r = edit_review(a, uid, 1, "dr-a", Reject(SMALL.tracking_uid))
    check_signable(r)
    first = _signed(1, r.reported)
    record_signature(a.db, uid, 2, first)
    r = _review(a, uid)
    assert (r.status, r.version, r.revision) == (ReviewStatus.FINAL, 3, 1)
    assert r.signed == first
    with pytest.raises(NotSignable, match="nothing changed"):
        check_signable(r)
    with pytest.raises(StaleVersion):
        record_signature(a.db, uid, 2, _signed(2, r.reported))
    # An edit after signing: in review again (amending); the next signature amends.
    r = edit_review(a, uid, 3, "dr-b", Correct(LARGE.tracking_uid, 22.0))
    assert (r.status, r.amending, r.revision, r.signed) == (
        ReviewStatus.IN_REVIEW,
        True,
        1,
        first,
    )
    record_signature(a.db, uid, 4, _signed(2, r.reported))
    r = _review(a, uid)
    assert (r.status, r.revision, r.amending) == (ReviewStatus.FINAL, 2, False)
    assert r.signed is not None and r.signed.nodules[0].diameter_mm == 22.0
    assert [h.action.value for h in r.history] == [
        "confirm",
        "reject",
        "sign",
        "correct",
        "sign",
    ]
    with a.db.read() as conn:
        kinds = conn.execute(
            select(change.c.kind).where(
                change.c.study_instance_uid == uid, change.c.kind.like("report.%")
            )
        ).scalars()
        assert list(kinds) == [ChangeKind.REPORT_FINAL.value, ChangeKind.REPORT_AMENDED.value]
