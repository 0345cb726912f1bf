"""TID 1500 SR and SEG: valid (dciodvfy), read back by highdicom to the same findings, in the
shape OHIF 3.13 draws and lists, stored into the study through the ingest path, superseded
on re-run, never re-triggering inference."""

from __future__ import annotations

from dataclasses import replace
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes
from sqlalchemy import select

from inference.batcher import Batcher
from inference.dicom_results import Outlines, build_results
from inference.pipeline import NoduleDetection
from inference.selection import SelectionRules
from models.characterise import characterise
from models.nodule_type import TypeClassifier
from models.volume import from_datasets
from pacs.index.schema import instance
from pacs.index.schema import study as study_table
from pacs.ingest import Archive
from pacs.results import Character, Finding, ai_series_of_study, runs_of_study
from tests.dicom import LIDC_0001, dicom_files
from tests.inference.conftest import job_for, store_series, tiny_detector
from tests.inference.sr_checks import (
    QUALITATIVE_EVALUATIONS,
    check_display_group,
    child,
    code,
    dciodvfy,
    find,
    groups,
)
from tests.models.tiny import tiny_spec

SPEC = tiny_spec(name="demo-nodule-centernet", version="1.0.0")
FINDINGS = [
    Finding(56.21, 86.34, -115.87, 23.35, 0.93),  # the LUNA16 nodule of LIDC-IDRI-0001
    Finding(-60.0, 20.0, -150.0, 6.0, 0.41),
]


@pytest.fixture(scope="module")
def source() -> list[Dataset]:
    return [pydicom.dcmread(p) for p in dicom_files(LIDC_0001)]


def sr_findings(sr: Dataset) -> list[Finding]:
    """Findings as highdicom reads them back from our TID 1500 SR."""
    report = (
        sr if isinstance(sr, hd.sr.Comprehensive3DSR) else hd.sr.Comprehensive3DSR.from_dataset(sr)
    )
    found = []
    for group in report.content.get_volumetric_roi_measurement_groups():
        assert group.finding_type.value == codes.SCT.Nodule.value
        assert [site.value.value for site in group.finding_sites] == [codes.SCT.Lung.value]
        # The ELLIPSOID is the nodule's geometry (the 2D region before it is for display).
        surface = hd.sr.VolumeSurface.from_sequence(group[0].ContentSequence)
        assert surface.graphic_type == hd.sr.GraphicTypeValues3D.ELLIPSOID
        centre = surface.graphic_data.mean(axis=0)
        measured = {m.name.value: m.value for m in group.get_measurements()}
        found.append(
            Finding(
                float(centre[0]),
                float(centre[1]),
                float(centre[2]),
                float(measured[codes.SCT.Diameter.value]),
                float(measured[codes.DCM.CertaintyOfFinding.value]) / 100,
                str(group.tracking_uid),
            )
        )
    return found


def test_sr_and_seg_are_valid_and_read_back_to_the_findings(
    source: list[Dataset], tmp_path: Path
) -> None:
    objects = build_results(source, FINDINGS, SPEC)
    assert objects.seg is not None
    assert dciodvfy(objects.sr, tmp_path / "sr.dcm") == []
    assert dciodvfy(objects.seg, tmp_path / "seg.dcm") == []
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    back = sr_findings(sr)
    assert [f.tracking_uid for f in back] == [f.tracking_uid for f in FINDINGS]
    for got, want in zip(back, FINDINGS, strict=True):
        assert (got.x, got.y, got.z) == pytest.approx((want.x, want.y, want.z), abs=0.01)
        assert got.diameter_mm == pytest.approx(want.diameter_mm, abs=0.01)
        assert got.probability == pytest.approx(want.probability, abs=1e-4)
    # Algorithm named as IHE AIR asks; the source series referenced as evidence.
    described = [e.get("ContributionDescription", "") for e in sr.ContributingEquipmentSequence]
    assert any(d.startswith("Processing Algorithm: demo-nodule-centernet 1.0.0") for d in described)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert len(evidence.ReferencedSOPSequence) == len(source)

    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.number_of_segments == 2
    tracking = [seg.get_segment_description(n).tracking_uid for n in (1, 2)]
    assert tracking == [f.tracking_uid for f in FINDINGS]
    # Frames lie on source planes (no out-of-plane frames), and segment 1 is centred on the
    # nodule in patient coordinates.
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source}
    voxels = []
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        derivation = frame.DerivationImageSequence[0].SourceImageSequence[0]
        src = by_uid[derivation.ReferencedSOPInstanceUID]
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == pytest.approx(
            [float(v) for v in src.ImagePositionPatient]
        )
        if frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber != 1:
            continue
        mask = seg.pixel_array[index] if seg.pixel_array.ndim == 3 else seg.pixel_array
        rows, cols = np.nonzero(mask)
        spacing = [float(v) for v in src.PixelSpacing]
        origin = np.array([float(v) for v in src.ImagePositionPatient])
        orientation = np.array([float(v) for v in src.ImageOrientationPatient])
        for r, c in zip(rows, cols, strict=True):
            voxels.append(
                origin + c * spacing[1] * orientation[:3] + r * spacing[0] * orientation[3:]
            )
    centre = np.mean(voxels, axis=0)
    assert centre == pytest.approx([FINDINGS[0].x, FINDINGS[0].y, FINDINGS[0].z], abs=1.5)


def test_the_sr_has_the_shape_ohif_draws_and_lists(source: list[Dataset], tmp_path: Path) -> None:
    objects = build_results(source, FINDINGS, SPEC)
    assert dciodvfy(objects.sr, tmp_path / "sr.dcm") == []
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    # Only nodule groups in "Imaging Measurements" (OHIF aborts the whole SR on a group
    # without NUM or SCOORD); the CAD summary is a "Qualitative Evaluation".
    found = groups(sr)
    assert len(found) == len(FINDINGS)
    for number, (group, finding) in enumerate(zip(found, FINDINGS, strict=True), start=1):
        check_display_group(
            group,
            source,
            tracking_uid=finding.tracking_uid,
            label=f"Nodule {number}",
            centre=(finding.x, finding.y, finding.z),
            diameter_mm=finding.diameter_mm,
            certainty=finding.probability,
        )
        assert child(group, "111001").TextValue == SPEC.name
    evaluations = child(sr, QUALITATIVE_EVALUATIONS)
    assert evaluations.RelationshipType == "CONTAINS"
    summary = child(evaluations, codes.DCM.CADProcessingAndFindingsSummary.value)
    assert summary.ValueType == "CODE"
    assert summary.ConceptCodeSequence[0].CodeValue == (
        codes.DCM.AllAlgorithmsSucceededWithFindings.value
    )
    # The algorithm behind the summary (TID 1500 row 12b).
    assert child(evaluations, "111001").TextValue == SPEC.name
    assert [code(i) for i in sr.ContentSequence][-2:] == [
        codes.DCM.ImagingMeasurements.value,
        QUALITATIVE_EVALUATIONS,
    ]


def test_an_empty_result_is_reported_explicitly(source: list[Dataset], tmp_path: Path) -> None:
    objects = build_results(source, [], SPEC)
    assert objects.seg is None  # a SEG needs at least one segment
    assert dciodvfy(objects.sr, tmp_path / "sr.dcm") == []
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    assert sr_findings(sr) == []
    # No "Imaging Measurements" at all (TID 1500 row 6 is needed only without row 12).
    assert find(sr, codes.DCM.ImagingMeasurements.value) is None
    evaluations = child(sr, QUALITATIVE_EVALUATIONS)
    summary = child(evaluations, codes.DCM.CADProcessingAndFindingsSummary.value)
    assert summary.ConceptCodeSequence[0].CodeValue == (
        codes.DCM.AllAlgorithmsSucceededWithoutFindings.value
    )


def test_the_seg_carries_what_an_overlay_needs(source: list[Dataset], tmp_path: Path) -> None:
    seg = build_results(source, FINDINGS, SPEC).seg
    assert seg is not None
    assert dciodvfy(seg, tmp_path / "seg.dcm") == []
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source[0].SeriesInstanceUID
    referenced = {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence}
    assert referenced <= {str(ds.SOPInstanceUID) for ds in source}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (derivation,) = frame.DerivationImageSequence
        (image,) = derivation.SourceImageSequence
        assert image.ReferencedSOPInstanceUID in referenced
    colours = [tuple(s.RecommendedDisplayCIELabValue) for s in seg.SegmentSequence]
    assert len(colours) == 2 and len(set(colours)) == 2


@pytest.mark.slow
def test_results_are_stored_in_the_study_and_a_rerun_supersedes_them(
    archive: Archive, tmp_path: Path
) -> None:
    files = dicom_files(LIDC_0001)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study = str(first.StudyInstanceUID)
    store_series(archive, files, study, (str(first.PatientID), str(first.PatientName)))
    with archive.db.read() as conn:
        received = conn.execute(
            select(study_table.c.last_received_at).where(study_table.c.study_instance_uid == study)
        ).scalar_one()
    # A random tiny detector with no operating threshold: it "finds" something every time.
    detector = tiny_detector(tmp_path / "models", patch=64, report=0.0)
    batcher = Batcher(detector)
    handler = NoduleDetection(archive, detector, batcher, SelectionRules())
    try:
        handler(job_for(study, 1))
        with archive.db.read() as conn:
            after_first = ai_series_of_study(conn, study)
        handler(job_for(study, 2))
        with archive.db.read() as conn:
            after_second = ai_series_of_study(conn, study)
            runs = runs_of_study(conn, study)
            received_after = conn.execute(
                select(study_table.c.last_received_at).where(
                    study_table.c.study_instance_uid == study
                )
            ).scalar_one()
    finally:
        batcher.close()
        handler.close()
    assert len(after_first) == 2 and len(after_second) == 2  # one SR and one SEG series
    assert not set(after_first) & set(after_second)  # the first run's series are gone
    latest = runs[0]
    assert latest.findings and latest.sr_sop_instance_uid and latest.seg_sop_instance_uid
    stored = {sop for sops in after_second.values() for sop in sops}
    assert stored == {latest.sr_sop_instance_uid, latest.seg_sop_instance_uid}
    # Our own results never make the study look newly received (no re-trigger).
    assert received_after == received
    sr = pydicom.dcmread(BytesIO(archive.blobs.get(_blob_key(archive, latest.sr_sop_instance_uid))))
    assert {f.tracking_uid for f in sr_findings(sr)} == {f.tracking_uid for f in latest.findings}


def _blob_key(archive: Archive, sop_uid: str) -> str:
    with archive.db.read() as conn:
        return str(
            conn.execute(
                select(instance.c.blob_key).where(instance.c.sop_instance_uid == sop_uid)
            ).scalar_one()
        )


def test_a_characterised_nodule_has_its_outline_in_the_seg_and_its_measures_in_the_sr(
    source: list[Dataset], tmp_path: Path
) -> None:
    volume = from_datasets(source)
    real = FINDINGS[0]
    measured = characterise(
        volume, (real.x, real.y, real.z), real.diameter_mm, TypeClassifier.load()
    )
    assert measured.outlined and measured.type == "solid"  # the LIDC readers: texture 5, 5, 5, 4
    character = Character(
        measured.type,
        measured.type_probability,
        measured.long_axis_mm,
        measured.short_axis_mm,
        measured.mean_diameter_mm,
        measured.volume_mm3,
        measured.solid_diameter_mm,
    )
    findings = [replace(real, character=character), FINDINGS[1]]
    outlines = Outlines(volume.affine, {real.tracking_uid: (measured.mask, measured.offset)})
    objects = build_results(source, findings, SPEC, outlines)
    assert objects.seg is not None
    assert dciodvfy(objects.sr, tmp_path / "sr.dcm") == []
    assert dciodvfy(objects.seg, tmp_path / "seg.dcm") == []

    # SEG: segment 1 is the outline, voxel for voxel; segment 2 still the detector's sphere.
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    voxels = {1: 0, 2: 0}
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        segment = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        voxels[segment] += int(np.count_nonzero(seg.pixel_array[index]))
    assert voxels[1] == int(measured.mask.sum())
    assert voxels[2] > 0

    # SR: the type as a coded evaluation and the outline's measurements, in the first group.
    first, second = groups(objects.sr)
    items = {code(i): i for i in first.ContentSequence}
    assert items["type"].ConceptCodeSequence[0].CodeValue == "solid"
    assert items["type"].ConceptCodeSequence[0].CodingSchemeDesignator == "99PACSAI"

    def number(item: Dataset) -> tuple[float, str]:
        value = item.MeasuredValueSequence[0]
        return float(value.NumericValue), str(value.MeasurementUnitsCodeSequence[0].CodeValue)

    assert number(items["103339001"]) == (pytest.approx(measured.long_axis_mm), "mm")
    assert number(items["103340004"]) == (pytest.approx(measured.short_axis_mm), "mm")
    assert number(items["118565006"]) == (pytest.approx(measured.volume_mm3), "mm3")
    assert number(items["type-probability"])[0] == pytest.approx(100 * measured.type_probability)
    diameters = [i for i in first.ContentSequence if code(i) == codes.SCT.Diameter.value]
    mean = [
        d for d in diameters if "ContentSequence" in d and code(d.ContentSequence[0]) == "121401"
    ]
    assert len(diameters) == 2 and len(mean) == 1
    assert mean[0].ContentSequence[0].ConceptCodeSequence[0].CodeValue == codes.SCT.Mean.value
    assert number(mean[0])[0] == pytest.approx(measured.mean_diameter_mm)
    # The detector's diameter stays first (what OHIF draws and lists), the other group unchanged.
    assert number(diameters[0])[0] == pytest.approx(real.diameter_mm, abs=0.01)
    assert "type" not in {code(i) for i in second.ContentSequence}
    # The measurements read back with highdicom.
    report = hd.sr.Comprehensive3DSR.from_dataset(objects.sr)
    group = report.content.get_volumetric_roi_measurement_groups()[0]
    names = [m.name.value for m in group.get_measurements()]
    assert {"103339001", "103340004", "118565006"} <= set(names)
