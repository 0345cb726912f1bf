"""Series selection on real data: every series not analysed says why."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from inference.batcher import Batcher
from inference.pipeline import NoduleDetection
from inference.selection import SelectionRules
from pacs.ingest import Archive
from pacs.results import RunOutcome, runs_of_study
from tests.dicom import LIDC_0001, dicom_files
from tests.inference.conftest import job_for, store_series, tiny_detector
from tests.servers import DATA

pytestmark = pytest.mark.slow


def _sorted_ct() -> list[Path]:
    files = dicom_files(LIDC_0001)
    return sorted(
        files,
        key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]),
    )


def test_rejections_have_reasons_and_the_good_series_is_analysed(
    archive: Archive, tmp_path: Path
) -> None:
    ct = _sorted_ct()
    first = pydicom.dcmread(ct[0], stop_before_pixels=True)
    study, patient = str(first.StudyInstanceUID), (str(first.PatientID), str(first.PatientName))
    mr = store_series(archive, dicom_files(DATA / "mr" / "ge-epi")[:20], study, patient)
    cr_file = (
        DATA
        / "cxr"
        / "siim-cr-chest"
        / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    )
    cr = store_series(archive, [cr_file], study, patient)
    # A CT with slice 41 (of 133, 2.5 mm apart) removed: a 5 mm gap.
    gap = store_series(archive, ct[:40] + ct[41:], study, patient)
    scout = store_series(
        archive, ct[60:61], study, patient, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]
    )
    thick = store_series(archive, ct[::2], study, patient)  # 5 mm spacing
    good = store_series(archive, ct, study, patient)

    detector = tiny_detector(tmp_path / "models", patch=64)
    batcher = Batcher(detector, batch_size=4)
    handler = NoduleDetection(archive, detector, batcher, SelectionRules())
    try:
        ref = handler(job_for(study))
    finally:
        batcher.close()
        handler.close()
    with archive.db.read() as conn:
        (run,) = runs_of_study(conn, study)
    assert ref == f"ai_run:{run.id}"
    assert run.outcome == RunOutcome.ANALYSED and run.SeriesInstanceUID == good
    reasons = {r.SeriesInstanceUID: r.reason for r in run.rejections}
    assert reasons[mr] == "not CT (modality MR)"
    assert reasons[cr] == "not CT (modality CR)"
    assert reasons[gap] == "gap of 5 mm at slice 40"
    assert reasons[scout] == "scout (ImageType LOCALIZER)"
    assert reasons[thick] == "slice spacing 5 mm, more than 3 mm"
    assert set(reasons) == {mr, cr, gap, scout, thick}


def test_a_study_without_an_eligible_series_records_why(archive: Archive, tmp_path: Path) -> None:
    ct = _sorted_ct()
    first = pydicom.dcmread(ct[0], stop_before_pixels=True)
    study, patient = str(first.StudyInstanceUID), (str(first.PatientID), str(first.PatientName))
    short = store_series(archive, ct[:50], study, patient)
    tilted = store_series(archive, ct[:70], study, patient, GantryDetectorTilt=15.0)
    detector = tiny_detector(tmp_path / "models")
    batcher = Batcher(detector)
    handler = NoduleDetection(archive, detector, batcher, SelectionRules(min_slices=64))
    try:
        handler(job_for(study))
    finally:
        batcher.close()
        handler.close()
    with archive.db.read() as conn:
        (run,) = runs_of_study(conn, study)
    assert run.outcome == RunOutcome.NO_ELIGIBLE_SERIES and run.findings == []
    reasons = {r.SeriesInstanceUID: r.reason for r in run.rejections}
    assert reasons == {short: "50 slices, fewer than 64", tilted: "gantry tilt of 15 degrees"}
