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

from inference.sr_content import measurement_report, nodule_group
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
#: Recommended display colours of the SEG's segments, in turn (CSS colour names): viewers
#: such as OHIF use RecommendedDisplayCIELabValue for the overlay (PS3.3 C.8.20.2).
SEGMENT_COLOURS = ("yellow", "orange", "magenta", "cyan", "lime", "deepskyblue", "red")


@dataclass(frozen=True)
class Outlines:
    """The nodules' masks on the analysed volume's grid, by tracking UID.

    ``affine`` is the volume's (``models.volume.Grid``: voxel ``(x, y, z, 1)`` to patient LPS
    mm); each mask is a boolean box ``[z, y, x]`` whose first voxel is ``offset``.
    """

    affine: np.ndarray
    masks: dict[str, tuple[np.ndarray, tuple[int, int, int]]]


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


def _algorithm(spec: ModelSpec) -> hd.sr.AlgorithmIdentification:
    # A new template per use: the same content items are never shared between branches.
    return hd.sr.AlgorithmIdentification(spec.name, spec.version, manufacturer=MANUFACTURER)


def build_sr(source: Sequence[Dataset], findings: list[Finding], spec: ModelSpec) -> Dataset:
    """Comprehensive 3D SR, TID 1500 Measurement Report, one measurement group per nodule.

    The groups are built by :func:`inference.sr_content.nodule_group`; the CAD processing
    summary (DCM 111017) is a "Qualitative Evaluations" item (TID 1500 row 13) with the
    algorithm as its concept modifier (row 12b), outside "Imaging Measurements".
    """
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(generate_uid()),
            name=f"{spec.name} {spec.version}",
            manufacturer_name=MANUFACTURER,
            model_name=spec.name,
        ),
    )
    groups = [
        nodule_group(
            source,
            tracking_uid=finding.tracking_uid,
            label=f"Nodule {number}",
            centre=(finding.x, finding.y, finding.z),
            diameter_mm=finding.diameter_mm,
            probability=finding.probability,
            algorithm=_algorithm(spec),
            character=finding.character,
        )
        for number, finding in enumerate(findings, start=1)
    ]
    summary = hd.sr.CodeContentItem(
        name=codes.DCM.CADProcessingAndFindingsSummary,
        value=codes.DCM.AllAlgorithmsSucceededWithFindings
        if findings
        else codes.DCM.AllAlgorithmsSucceededWithoutFindings,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    root = measurement_report(
        hd.sr.ObservationContext(observer_device_context=device),
        groups,
        [summary],
        procedure_reported=CT_CHEST,
        evaluation_algorithm=_algorithm(spec),
    )
    return hd.sr.Comprehensive3DSR(
        evidence=list(source),
        content=root,
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


def outline_labels(
    source: Sequence[Dataset], findings: list[Finding], outlines: Outlines
) -> np.ndarray:
    """Like :func:`sphere_labels`, with each outlined nodule drawn as its mask.

    A source image maps to the volume slice whose plane it lies on; the volume's rows and
    columns are the images' (the volume was stacked from these very images).
    """
    labels = sphere_labels(source, [f for f in findings if f.tracking_uid not in outlines.masks])
    # sphere_labels numbered the unoutlined findings 1..m in turn; renumber to all findings.
    unoutlined = [
        n for n, f in enumerate(findings, start=1) if f.tracking_uid not in outlines.masks
    ]
    remap = np.zeros(len(findings) + 1, dtype=np.uint8)
    remap[1 : len(unoutlined) + 1] = unoutlined
    labels = np.asarray(remap[labels], dtype=np.uint8)
    origin, step = outlines.affine[:3, 3], outlines.affine[:3, 2]
    for k, ds in enumerate(source):
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        z = round(float((position - origin) @ step) / float(step @ step))
        for number, finding in enumerate(findings, start=1):
            found = outlines.masks.get(finding.tracking_uid)
            if found is None:
                continue
            mask, (z0, y0, x0) = found
            if not z0 <= z < z0 + mask.shape[0]:
                continue
            plane = labels[k, y0 : y0 + mask.shape[1], x0 : x0 + mask.shape[2]]
            plane[mask[z - z0, : plane.shape[0], : plane.shape[1]] & (plane == 0)] = number
    return labels


def build_seg(
    source: Sequence[Dataset],
    findings: list[Finding],
    spec: ModelSpec,
    outlines: Outlines | None = None,
) -> Dataset | None:
    """Binary SEG, one segment per nodule, frames on the source CT's planes: the nodule's
    outline where it has one, else a sphere of its diameter.

    highdicom writes what viewers need for an overlay: ReferencedSeriesSequence, per-frame
    DerivationImageSequence > SourceImageSequence (the CT slice of each frame), and here a
    RecommendedDisplayCIELabValue per segment.
    """
    if not findings:
        return None
    labels = (
        sphere_labels(source, findings)
        if outlines is None
        else outline_labels(source, findings, outlines)
    )
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
            display_color=hd.color.CIELabColor.from_string(
                SEGMENT_COLOURS[(number - 1) % len(SEGMENT_COLOURS)]
            ),
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
    source: Sequence[Dataset],
    findings: list[Finding],
    spec: ModelSpec,
    outlines: Outlines | None = None,
) -> ResultObjects:
    return ResultObjects(
        build_sr(source, findings, spec), build_seg(source, findings, spec, outlines)
    )
