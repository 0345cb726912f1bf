"""The prior comparison on a synthetic pair: a real LIDC scan and the same scan moved by a known
rigid transform, with nodules inserted by the generator (grown, stable, shrunk, one new)."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813 - the name its documentation uses
from pydicom.uid import generate_uid

from inference.loading import build_volume, read_series
from inference.pipeline import compare_with_prior
from inference.priors import (
    NOT_COMPUTED,
    Registration,
    compare,
    lungs,
    register,
    to_sitk,
    with_history,
)
from models.synthetic import Nodule as Synthetic
from models.synthetic import insert_nodule
from models.volume import Volume
from pacs.index import series_of_study
from pacs.ingest import Archive, Source
from pacs.jobs import claim_next_job, complete, enqueue
from pacs.lung_rads import Change, Nodule, suggest
from pacs.results import (
    NODULE_DETECTION,
    Finding,
    NewRun,
    PriorComparison,
    RunOutcome,
    StudyFindings,
    current_run,
    prior_study,
    save_run,
)
from pacs.review import Confirm, edit_review, load_review
from tests.conftest import make_archive
from tests.dicom import LIDC_0001, dicom_files, encode
from tests.pacs.test_review import lidc_slab
from viewer_api.findings import FindingsResponse

#: The patient lies differently on the current CT: the content is rotated about these axes
#: (degrees, about the volume's centre) and shifted (mm). Taken from current to prior points,
#: as SimpleITK's resampling wants it.
ROTATION_DEG = (3.0, -2.0, 6.0)
SHIFT_MM = (9.0, -7.0, 12.0)
PRIOR_DATE, CURRENT_DATE = date(2025, 1, 10), date(2025, 7, 10)  # 181 days


@cache
def lidc() -> Volume:
    """LIDC-IDRI-0001 through the project's loader, at half its in-plane resolution (speed)."""
    datasets = [pydicom.dcmread(p) for p in dicom_files(LIDC_0001)]
    with ThreadPoolExecutor(2) as pool:
        volume = build_volume(datasets, pool)
    image = sitk.Shrink(to_sitk(volume), [2, 2, 1])
    affine = volume.affine.copy()
    affine[:3, :2] *= 2
    affine[:3, 3] = image.GetOrigin()
    return Volume(sitk.GetArrayFromImage(image).astype(np.float32), affine)


def moved(volume: Volume) -> tuple[Volume, sitk.Euler3DTransform]:
    """The volume's content moved by the known transform, on the same grid."""
    image = to_sitk(volume)
    centre = image.TransformContinuousIndexToPhysicalPoint([n / 2 for n in image.GetSize()])
    truth = sitk.Euler3DTransform(centre, *(math.radians(a) for a in ROTATION_DEG), SHIFT_MM)
    out = sitk.Resample(image, image, truth, sitk.sitkLinear, -1000.0)
    return Volume(sitk.GetArrayFromImage(out).astype(np.float32), volume.affine), truth


def centres_in_lung(volume: Volume, count: int) -> list[tuple[float, float, float]]:
    """Points well inside the lungs, at least 40 mm apart (deterministic)."""
    from scipy import ndimage

    inside = ndimage.distance_transform_edt(lungs(volume), sampling=volume.spacing[::-1]) > 15
    rng = np.random.default_rng(4)
    chosen: list[np.ndarray] = []
    for index in rng.permutation(np.argwhere(inside)):
        point = volume.to_world(index.astype(np.float64))
        if all(np.linalg.norm(point - c) > 40 for c in chosen):
            chosen.append(point)
        if len(chosen) == count:
            break
    return [(float(p[0]), float(p[1]), float(p[2])) for p in chosen]


#: (prior diameter, current diameter) per nodule; None: absent on that CT.
SIZES = {"grown": (6.0, 8.0), "stable": (9.0, 9.4), "shrunk": (12.0, 10.0), "new": (None, 7.0)}


@pytest.fixture(scope="module")
def pair() -> tuple[Volume, list[Nodule], Volume, list[Nodule], sitk.Transform]:
    base = lidc()
    current_base, truth = moved(base)
    inverse = truth.GetInverse()
    prior_volume = Volume(base.array.copy(), base.affine)
    current_volume = Volume(current_base.array.copy(), base.affine)
    priors, currents = [], []
    for (name, (then, now)), centre in zip(SIZES.items(), centres_in_lung(base, 4), strict=True):
        today = inverse.TransformPoint(centre)  # where that lung point lies on the current CT
        if then is not None:
            insert_nodule(prior_volume, Synthetic(centre, then, seed=1))
            priors.append(Nodule(f"prior-{name}", then, centre=centre))
        insert_nodule(current_volume, Synthetic(today, now, seed=1))
        currents.append(Nodule(name, now, centre=today))
    return current_volume, currents, prior_volume, priors, truth


@pytest.fixture(scope="module")
def registration(pair) -> Registration:  # type: ignore[no-untyped-def]
    current_volume, _, prior_volume, _, _ = pair
    cpu = time.process_time()
    found = register(current_volume, prior_volume)
    print(f"registration CPU time {time.process_time() - cpu:.1f} s")
    return found


def test_registration_recovers_the_known_transform(pair, registration: Registration) -> None:  # type: ignore[no-untyped-def]
    _, _, prior_volume, _, truth = pair
    inverse = truth.GetInverse()
    inside = np.argwhere(lungs(prior_volume))[::997]
    points = prior_volume.to_world(inside.astype(np.float64))
    expected = np.array([inverse.TransformPoint(tuple(p)) for p in points])
    error = np.linalg.norm(registration.to_current(points) - expected, axis=1)
    print(
        f"registration: {registration.seconds:.1f} s, lung-point error mean {error.mean():.2f} "
        f"max {error.max():.2f} mm, rotation {registration.rotation_deg:.2f} deg"
    )
    assert error.mean() < 1.5 and error.max() < 3.0
    assert registration.seconds < 20
    # Without registration the same points are off by the patient's movement.
    assert np.linalg.norm(points - expected, axis=1).mean() > 10


def test_statuses_changes_and_doubling_time(pair, registration: Registration) -> None:  # type: ignore[no-untyped-def]
    _, currents, _, priors, _ = pair
    comparison = compare(currents, (CURRENT_DATE - PRIOR_DATE).days, priors, registration, "1.2.3")
    by_uid = {c.tracking_uid: c for c in comparison.changes}
    assert {uid: c.change for uid, c in by_uid.items()} == {
        "grown": Change.GROWN,
        "stable": Change.STABLE,
        "shrunk": Change.SHRUNK,
        "new": Change.NEW,
    }
    grown = by_uid["grown"]
    assert grown.prior_tracking_uid == "prior-grown" and grown.distance_mm is not None
    assert grown.distance_mm < 3.0
    assert grown.diameter_change_mm == pytest.approx(2.0)
    assert grown.volume_change_mm3 == pytest.approx(math.pi / 6 * (8**3 - 6**3))
    # VDT = 181 d * ln 2 / ln((8/6)^3) = 145.4 days
    assert grown.doubling_time_days == pytest.approx(181 * math.log(2) / (3 * math.log(8 / 6)))
    assert grown.doubling_time_days == pytest.approx(145.4, abs=0.1)
    for name in ("stable", "shrunk"):
        assert by_uid[name].doubling_time_days is None
        assert by_uid[name].doubling_time_note == NOT_COMPUTED
    assert by_uid["shrunk"].diameter_change_mm == pytest.approx(-2.0)
    assert by_uid["new"].prior_tracking_uid is None
    assert comparison.interval_days == 181 and comparison.unmatched_prior == []

    # Fed into Lung-RADS: the grown 8 mm solid nodule is category 4B (new or growing >= 8 mm).
    suggestion = suggest(with_history(currents, priors, comparison), compared=True)
    assert (suggestion.category, suggestion.row) == ("4B", "solid-growing-4B")
    assert suggestion.driving_nodule is not None
    assert suggestion.driving_nodule.tracking_uid == "grown"


def test_without_registration_nodules_far_from_their_predecessor_are_new() -> None:
    identity = Registration(np.eye(4), 0.0, 0.0)
    prior = [Nodule("p", 8.0, centre=(0.0, 0.0, 0.0))]
    current = [Nodule("c", 8.0, centre=(25.0, 0.0, 0.0))]
    comparison = compare(current, None, prior, identity)
    assert comparison.changes[0].change == Change.NEW
    assert comparison.unmatched_prior == ["p"]


def _store_study(archive: Archive, patient: str, when: str) -> tuple[str, str]:
    """A new study of the patient (new UIDs) holding a real LIDC-IDRI-0001 slab."""
    study, series = str(generate_uid()), str(generate_uid())
    for path in lidc_slab(count=24):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.IssuerOfPatientID, ds.StudyDate = patient, "HOSP", when
        archive.store(encode(ds), Source("IMPORT"))
    return study, series


def _analysed(archive: Archive, study: str, series: str, findings: list[Finding]) -> None:
    with archive.db.write() as conn:
        enqueue(conn, NODULE_DETECTION, study)
    job = claim_next_job(archive.db, "test", [NODULE_DETECTION], timedelta(seconds=60))
    assert job is not None
    new = NewRun(job.id, study, series, ("m", "1"), RunOutcome.ANALYSED, [], findings, 1.0)
    complete(archive.db, job.id, "test", f"ai_run:{save_run(archive.db, new)}")


def test_the_pipeline_compares_with_the_patients_prior_study(tmp_path: Path) -> None:
    archive = make_archive(f"sqlite:///{tmp_path / 'index.db'}", f"file://{tmp_path / 's'}")
    prior_large = Finding(56.21, 86.34, -115.87, 20.0, 0.9)  # LIDC-IDRI-0001's nodule, smaller
    prior_small = Finding(-60.0, 20.0, -120.0, 5.2, 0.6)
    older, older_series = _store_study(archive, "P1", "20240110")
    _analysed(archive, older, older_series, [prior_large, prior_small])
    other, other_series = _store_study(archive, "P2", "20240601")  # another patient
    _analysed(archive, other, other_series, [Finding(0.0, 0.0, -118.0, 9.0, 0.9)])
    study, series = _store_study(archive, "P1", "20250109")  # 365 days later
    with archive.db.read() as conn:
        earlier = prior_study(conn, study)
        (entry,) = [e for e in series_of_study(conn, study) if e.SeriesInstanceUID == series]
    assert earlier is not None and earlier.StudyInstanceUID == older
    assert earlier.interval_days == 365
    grown = Finding(56.0, 86.5, -116.0, 23.35, 0.93)  # + 3.35 mm
    new = Finding(-20.0, 10.0, -118.0, 6.5, 0.7)
    with ThreadPoolExecutor(2) as pool:
        _, datasets = read_series(entry, archive.blobs.get, pool)
        volume = build_volume(datasets, pool)
        findings, prior = compare_with_prior(archive, pool, study, volume, [grown, new])
    assert prior == PriorComparison(older, 365)
    by_uid = {f.tracking_uid: f for f in findings}
    assert by_uid[grown.tracking_uid].change == "grown"
    assert by_uid[grown.tracking_uid].prior_tracking_uid == prior_large.tracking_uid
    assert by_uid[grown.tracking_uid].prior_diameter_mm == 20.0
    vdt = 365 * math.log(2) / (3 * math.log(23.35 / 20.0))
    assert by_uid[grown.tracking_uid].doubling_time_days == pytest.approx(vdt)
    assert by_uid[new.tracking_uid].change == "new"
    assert by_uid[new.tracking_uid].doubling_time_days is None

    # Saved as the pipeline saves it, the review's suggestion reads the growth.
    _analysed_with_prior(archive, study, series, findings, prior)
    with archive.db.read() as conn:
        run = current_run(conn, study)
        review = load_review(conn, study)
    assert run is not None and run.prior == prior
    assert [f.change for f in run.findings] == ["grown", "new"]
    shown = FindingsResponse.of(StudyFindings(study, None, run))  # the findings API's body
    assert shown.run is not None and shown.run.prior is not None
    assert (shown.run.prior.StudyInstanceUID, shown.run.prior.interval_days) == (older, 365)
    first = shown.findings[0].prior
    assert first is not None and (first.change, first.diameter_change_mm) == ("grown", 3.35)
    assert first.doubling_time_days == pytest.approx(vdt, abs=0.05)
    assert shown.findings[1].prior is not None and shown.findings[1].prior.change == "new"
    assert run.findings[0].describe_change() == (
        f"grown since the prior CT (20.0 mm then, +3.4 mm, volume doubling time {vdt:.0f} days)"
    )
    assert run.findings[1].describe_change() == "new since the prior CT"
    for action in (Confirm(grown.tracking_uid), Confirm(new.tracking_uid)):
        review = edit_review(archive, study, review.version, "dr", action)
    suggestion = review.suggestion
    assert (suggestion.category, suggestion.row, suggestion.compared) == (
        "4B",
        "solid-growing-4B",
        True,
    )
    assert "20.0 mm on the prior CT" in suggestion.rule
    archive.db.dispose()


def _analysed_with_prior(
    archive: Archive,
    study: str,
    series: str,
    findings: list[Finding],
    prior: PriorComparison | None,
) -> None:
    with archive.db.write() as conn:
        enqueue(conn, NODULE_DETECTION, study)
    job = claim_next_job(archive.db, "test", [NODULE_DETECTION], timedelta(seconds=60))
    assert job is not None
    new = NewRun(
        job.id, study, series, ("m", "1"), RunOutcome.ANALYSED, [], findings, 1.0, prior=prior
    )
    complete(archive.db, job.id, "test", f"ai_run:{save_run(archive.db, new)}")
