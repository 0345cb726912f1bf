"""Step 1: which series of a stable study to analyse, and why each other one was not.

Rules for a chest CT the detector can read: modality CT with single-frame CT images, not a
scout, chest or thorax (when BodyPartExamined says), at least ``min_slices`` slices covering
``min_coverage_mm``, one orientation, no gantry tilt, equal slice spacing (no gaps, no
duplicates) of at most ``max_slice_spacing_mm``. Geometry comes from ImagePositionPatient and
ImageOrientationPatient (PS3.3 C.7.6.2), never from SliceThickness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pacs.results import Rejection

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
AI_RESULT_MODALITIES = frozenset({"SR", "SEG", "KO", "PR"})
CHEST_TERMS = ("CHEST", "THORAX", "LUNG")


@dataclass(frozen=True)
class SliceHeader:
    SOPInstanceUID: str
    SOPClassUID: str
    ImagePositionPatient: tuple[float, float, float] | None
    ImageOrientationPatient: tuple[float, float, float, float, float, float] | None
    PixelSpacing: tuple[float, float] | None
    Rows: int
    Columns: int
    ImageType: tuple[str, ...] = ()
    GantryDetectorTilt: float = 0.0


@dataclass(frozen=True)
class SeriesHeaders:
    SeriesInstanceUID: str
    Modality: str
    BodyPartExamined: str
    slices: list[SliceHeader]


@dataclass(frozen=True)
class SelectionRules:
    min_slices: int = 64
    max_slice_spacing_mm: float = 3.0
    min_coverage_mm: float = 120.0


@dataclass(frozen=True)
class Selection:
    chosen: SeriesHeaders | None
    rejections: list[Rejection]


def select_series(series: list[SeriesHeaders], rules: SelectionRules) -> Selection:
    """The eligible series with most slices (then thinnest), and the reasons for the others."""
    eligible: list[tuple[SeriesHeaders, float]] = []
    rejections: list[Rejection] = []
    for candidate in series:
        reason, spacing = _check(candidate, rules)
        if reason is None:
            eligible.append((candidate, spacing))
        else:
            rejections.append(Rejection(candidate.SeriesInstanceUID, reason))
    if not eligible:
        return Selection(None, rejections)
    eligible.sort(key=lambda item: (-len(item[0].slices), item[1]))
    chosen = eligible[0][0]
    for other, _ in eligible[1:]:
        rejections.append(
            Rejection(
                other.SeriesInstanceUID,
                f"eligible, but series {chosen.SeriesInstanceUID} was analysed "
                "(more slices or thinner)",
            )
        )
    return Selection(chosen, rejections)


def _check(series: SeriesHeaders, rules: SelectionRules) -> tuple[str | None, float]:
    """(reason for rejecting, None when eligible; the slice spacing in mm)."""
    modality = series.Modality.upper()
    if modality in AI_RESULT_MODALITIES:
        return f"AI result or report series ({modality}), never analysed", 0.0
    if modality != "CT":
        return f"not CT (modality {modality or 'missing'})", 0.0
    slices = series.slices
    classes = {s.SOPClassUID for s in slices}
    if ENHANCED_CT_IMAGE_STORAGE in classes:
        return "Enhanced CT (multi-frame) is not supported yet", 0.0
    if classes != {CT_IMAGE_STORAGE}:
        return "not CT Image Storage instances", 0.0
    if any("LOCALIZER" in s.ImageType for s in slices):
        return "scout (ImageType LOCALIZER)", 0.0
    body_part = series.BodyPartExamined.upper()
    if body_part and not any(term in body_part for term in CHEST_TERMS):
        return f"body part {series.BodyPartExamined}, not chest", 0.0
    if len(slices) < rules.min_slices:
        return f"{len(slices)} slices, fewer than {rules.min_slices}", 0.0
    if any(
        s.ImagePositionPatient is None or s.ImageOrientationPatient is None or not s.PixelSpacing
        for s in slices
    ):
        return "slices without ImagePositionPatient, ImageOrientationPatient or PixelSpacing", 0.0
    orientations = np.array([s.ImageOrientationPatient for s in slices], dtype=np.float64)
    if np.abs(orientations - orientations[0]).max() > 1e-3:
        return "more than one image orientation", 0.0
    if {(s.Rows, s.Columns, s.PixelSpacing) for s in slices}.__len__() > 1:
        return "slices differ in size or pixel spacing", 0.0
    tilt = max(abs(s.GantryDetectorTilt) for s in slices)
    if tilt > 0.01:
        return f"gantry tilt of {tilt:g} degrees", 0.0
    row, col = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row, col)
    positions = np.array([s.ImagePositionPatient for s in slices], dtype=np.float64)
    along = np.sort(positions @ normal)
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        return f"{int(np.sum(steps < 1e-3))} slice(s) share a position with another", 0.0
    spacing = float(np.median(steps))
    # Slices sheared off the normal: a tilted gantry the header did not declare.
    order = np.argsort(positions @ normal)
    drift = positions[order[-1]] - positions[order[0]]
    shear = np.linalg.norm(drift - (drift @ normal) * normal)
    if shear > 0.5 * spacing:
        angle = float(np.degrees(np.arctan2(shear, drift @ normal)))
        return f"gantry tilt of {angle:.2g} degrees (slices sheared)", spacing
    tolerance = max(0.01 * spacing, 0.05)
    irregular = np.flatnonzero(np.abs(steps - spacing) > tolerance)
    if irregular.size:
        k = int(irregular[0])
        if steps[k] > spacing:
            return f"gap of {steps[k]:.3g} mm at slice {k + 1}", spacing
        return f"non-uniform slice spacing ({steps[k]:.3g} mm at slice {k + 1})", spacing
    if spacing > rules.max_slice_spacing_mm:
        return (
            f"slice spacing {spacing:.3g} mm, more than {rules.max_slice_spacing_mm:g} mm",
            spacing,
        )
    coverage = spacing * (len(slices) - 1)
    if coverage < rules.min_coverage_mm:
        return f"covers {coverage:.0f} mm, less than {rules.min_coverage_mm:g} mm of chest", spacing
    return None, spacing
