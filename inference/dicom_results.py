"""Step 6: the run's findings as DICOM, built with highdicom: TID 1500 SR and a binary SEG.

Both go into the analysed study as new series (stored through the archive's one ingest path
by the pipeline), name the algorithm in Contributing Equipment with Purpose of Reference
"Processing Algorithm" (IHE AI Results), and reference the source CT series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from models.spec import ModelSpec
from pacs.results import Finding

MANUFACTURER = "PACS-AI"
#: LOINC "CT Chest".
CT_CHEST = hd.sr.CodedConcept("24627-2", "LN", "CT Chest")
#: Purpose of Reference of the algorithm in Contributing Equipment. IHE AI Results asks for
#: "Processing Algorithm", a placeholder code of its own (99IHE) that is not in CID 7005, the
#: context group the standard binds (highdicom refuses codes outside it); DCM 109102
#: "Processing Equipment" is the CID 7005 term, and ContributionDescription names the algorithm.
PROCESSING_ALGORITHM = codes.DCM.ProcessingEquipment
SR_SERIES_NUMBER = 9001
SEG_SERIES_NUMBER = 9002


@dataclass(frozen=True)
class ResultObjects:
    sr: Dataset
    seg: Dataset | None  # None when there is nothing to segment (no findings)


def _equipment(spec: ModelSpec) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=PROCESSING_ALGORITHM,
        manufacturer_model_name=spec.name,
        software_versions=spec.version,
        contribution_description=f"Processing Algorithm: {spec.name} {spec.version}, "
        "AI lung-nodule detection",
    )


def build_sr(source: Sequence[Dataset], findings: list[Finding], spec: ModelSpec) -> Dataset:
    """Comprehensive 3D SR, TID 1500 Measurement Report, one measurement group per nodule."""
    first = source[0]
    frame_of_reference = str(first.FrameOfReferenceUID)
    series_uid = str(first.SeriesInstanceUID)
    algorithm = hd.sr.AlgorithmIdentification(spec.name, spec.version, manufacturer=MANUFACTURER)
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(generate_uid()),
            name=f"{spec.name} {spec.version}",
            manufacturer_name=MANUFACTURER,
            model_name=spec.name,
        ),
    )
    summary = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="CAD summary"),
        algorithm_id=algorithm,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                codes.DCM.CADProcessingAndFindingsSummary,
                codes.DCM.AllAlgorithmsSucceededWithFindings
                if findings
                else codes.DCM.AllAlgorithmsSucceededWithoutFindings,
            )
        ],
    )
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [summary]
    for number, finding in enumerate(findings, start=1):
        centre = np.array([finding.x, finding.y, finding.z])
        radius = finding.diameter_mm / 2
        # An ellipsoid (here a sphere) by the end points of its three axes (PS3.3 C.18.9.1.2).
        axes = np.concatenate([[centre - radius * e, centre + radius * e] for e in np.eye(3)])
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=finding.tracking_uid, identifier=f"Nodule {number}"
                ),
                referenced_volume_surface=hd.sr.VolumeSurface(
                    graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID,
                    graphic_data=axes,
                    frame_of_reference_uid=frame_of_reference,
                    source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
                ),
                finding_type=codes.SCT.Nodule,
                finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=codes.SCT.Diameter,
                        value=round(finding.diameter_mm, 2),
                        unit=codes.UCUM.Millimeter,
                        algorithm_id=algorithm,
                    ),
                    hd.sr.Measurement(
                        name=codes.DCM.CertaintyOfFinding,
                        value=round(100 * finding.probability, 2),
                        unit=codes.UCUM.Percent,
                        algorithm_id=algorithm,
                    ),
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=CT_CHEST,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=list(source),
        content=report[0],
        series_instance_uid=str(generate_uid()),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=str(generate_uid()),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"AI lung nodules ({spec.name} {spec.version})",
        is_complete=True,
        contributing_equipment=[_equipment(spec)],
    )


def sphere_labels(source: Sequence[Dataset], findings: list[Finding]) -> np.ndarray:
    """Label map ``(slices, rows, columns)`` aligned with ``source``: nodule k is value k."""
    labels = np.zeros((len(source), int(source[0].Rows), int(source[0].Columns)), dtype=np.uint8)
    rows = np.arange(labels.shape[1], dtype=np.float64)
    columns = np.arange(labels.shape[2], dtype=np.float64)
    for k, ds in enumerate(source):
        origin = np.array([float(v) for v in ds.ImagePositionPatient])
        orientation = [float(v) for v in ds.ImageOrientationPatient]
        row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
        spacing_row, spacing_col = (float(v) for v in ds.PixelSpacing)
        normal = np.cross(row_dir, col_dir)
        for number, finding in enumerate(findings, start=1):
            centre = np.array([finding.x, finding.y, finding.z])
            offset = centre - origin
            depth = float(offset @ normal)
            radius = finding.diameter_mm / 2
            if abs(depth) > radius:
                continue
            # The sphere's circle on this plane (PS3.3 C.7.6.2.1.1: column index along the row
            # direction, row index along the column direction).
            in_plane = np.sqrt(radius**2 - depth**2)
            ci = float(offset @ row_dir) / spacing_col
            rj = float(offset @ col_dir) / spacing_row
            disk = ((columns[None, :] - ci) * spacing_col) ** 2 + (
                (rows[:, None] - rj) * spacing_row
            ) ** 2 <= in_plane**2
            labels[k][disk & (labels[k] == 0)] = number
    return labels


def build_seg(
    source: Sequence[Dataset], findings: list[Finding], spec: ModelSpec
) -> Dataset | None:
    """Binary SEG, one segment per nodule (a sphere), frames on the source CT's planes."""
    if not findings:
        return None
    labels = sphere_labels(source, findings)
    present = set(np.unique(labels)) - {0}
    kept = [(n, f) for n, f in enumerate(findings, start=1) if n in present]
    if not kept:  # every nodule smaller than a pixel between slices: nothing to draw
        return None
    remap = np.zeros(len(findings) + 1, dtype=np.uint8)
    for new, (old, _) in enumerate(kept, start=1):
        remap[old] = new
    labels = remap[labels]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=spec.name, family=codes.cid7162.ArtificialIntelligence, version=spec.version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"Nodule {old}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=finding.tracking_uid,
            tracking_id=f"Nodule {old}",
            anatomic_regions=[codes.SCT.Lung],
        )
        for number, (old, finding) in enumerate(kept, start=1)
    ]
    return hd.seg.Segmentation(
        source_images=list(source),
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=str(generate_uid()),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=str(generate_uid()),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=spec.name,
        software_versions=spec.version,
        device_serial_number="0",
        series_description=f"AI lung nodules ({spec.name} {spec.version})",
        contributing_equipment=[_equipment(spec)],
    )


def build_results(
    source: Sequence[Dataset], findings: list[Finding], spec: ModelSpec
) -> ResultObjects:
    return ResultObjects(build_sr(source, findings, spec), build_seg(source, findings, spec))
