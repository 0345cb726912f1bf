"""Checks shared by the SR tests: dciodvfy, and the nodule group shape OHIF 3.13 reads.

What OHIF's cornerstone-dicom-sr extension and @cornerstonejs/adapters need of a group:
the first SCOORD/SCOORD3D is a 2D SCOORD with an IMAGE child (its ReferencedSOPSequence
places the drawing), (111030, DCM) POLYLINE of 5 points to be rehydrated as a
RectangleROI into the Measurements panel, and the first NUM carries an INFERRED FROM
SCOORD with its own IMAGE child.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

QUALITATIVE_EVALUATIONS = "C0034375"


def dciodvfy(ds: Dataset, path: Path) -> list[str]:
    """dciodvfy's error lines for ``ds`` written to ``path`` (empty when valid)."""
    ds.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def find(container: Dataset, value: str) -> Dataset | None:
    """The first content item of ``container`` whose concept name code is ``value``."""
    return next((i for i in container.get("ContentSequence", []) if code(i) == value), None)


def child(container: Dataset, value: str) -> Dataset:
    """Like :func:`find`, for an item that must be there."""
    item = find(container, value)
    assert item is not None, f"no content item {value}"
    return item


def groups(sr: Dataset) -> list[Dataset]:
    measurements = find(sr, codes.DCM.ImagingMeasurements.value)
    return [] if measurements is None else list(measurements.ContentSequence)


def nearest_slice(source: list[Dataset], centre: tuple[float, float, float]) -> Dataset:
    """Axial series: the slice whose z is nearest the centre's (independent of the code)."""
    return min(source, key=lambda ds: abs(float(ds.ImagePositionPatient[2]) - centre[2]))


def check_display_group(
    group: Dataset,
    source: list[Dataset],
    *,
    tracking_uid: str,
    label: str,
    centre: tuple[float, float, float],
    diameter_mm: float,
    certainty: float | None,
) -> None:
    """Assert ``group`` is the nodule group of inference.sr_content, OHIF-readable."""
    assert code(group) == codes.DCM.MeasurementGroup.value
    items = list(group.ContentSequence)
    assert child(group, "112039").TextValue == label
    assert str(child(group, "112040").UID) == tracking_uid
    graphics = [i for i in items if i.ValueType in ("SCOORD", "SCOORD3D")]
    region, surface = graphics[0], graphics[1]
    # 1. The first graphic: a closed 5-point POLYLINE "Image Region" on the nearest slice.
    assert region.ValueType == "SCOORD" and code(region) == codes.DCM.ImageRegion.value
    assert region.RelationshipType == "CONTAINS" and region.GraphicType == "POLYLINE"
    points = np.array(region.GraphicData, dtype=float).reshape(-1, 2)
    assert len(points) == 5 and (points[0] == points[-1]).all()
    (image,) = region.ContentSequence
    assert image.RelationshipType == "SELECTED FROM" and image.ValueType == "IMAGE"
    slice_ = nearest_slice(source, centre)
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == slice_.SOPInstanceUID
    assert image.ReferencedSOPSequence[0].ReferencedSOPClassUID == slice_.SOPClassUID
    # The square is centred on the nodule's projection, a diameter wide (axial slices, rows
    # along +x and columns along +y; the centre of pixel (i, j) is at (i + 0.5, j + 0.5)).
    assert [float(v) for v in slice_.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    spacing_row, spacing_col = (float(v) for v in slice_.PixelSpacing)
    origin = [float(v) for v in slice_.ImagePositionPatient]
    middle = points[:4].mean(axis=0)
    x = origin[0] + (middle[0] - 0.5) * spacing_col
    y = origin[1] + (middle[1] - 0.5) * spacing_row
    assert abs(x - centre[0]) < 0.01 and abs(y - centre[1]) < 0.01
    assert abs((points[1, 0] - points[0, 0]) * spacing_col - diameter_mm) < 0.01
    assert abs((points[2, 1] - points[1, 1]) * spacing_row - diameter_mm) < 0.01
    # 2. The ELLIPSOID after it: a sphere of the diameter around the centre.
    assert surface.ValueType == "SCOORD3D" and surface.GraphicType == "ELLIPSOID"
    assert code(surface) == codes.DCM.VolumeSurface.value
    axes = np.array(surface.GraphicData, dtype=float).reshape(6, 3)
    assert np.allclose(axes.mean(axis=0), centre, atol=0.01)
    assert np.allclose(np.linalg.norm(axes[1] - axes[0]), diameter_mm, atol=0.01)
    assert items.index(region) < items.index(surface)
    # 3. The diameter, first NUM, with the same outline INFERRED FROM.
    nums = [i for i in items if i.ValueType == "NUM"]
    diameter = nums[0]
    assert code(diameter) == codes.SCT.Diameter.value
    assert abs(float(diameter.MeasuredValueSequence[0].NumericValue) - diameter_mm) < 0.01
    (copy,) = diameter.ContentSequence
    assert copy.RelationshipType == "INFERRED FROM" and copy.ValueType == "SCOORD"
    assert copy.GraphicType == "POLYLINE" and list(copy.GraphicData) == list(region.GraphicData)
    (copy_image,) = copy.ContentSequence
    assert copy_image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == slice_.SOPInstanceUID
    # 4. Certainty only where the AI gave one.
    certainties = [n for n in nums if code(n) == codes.DCM.CertaintyOfFinding.value]
    if certainty is None:
        assert certainties == []
    else:
        (value,) = certainties
        assert abs(float(value.MeasuredValueSequence[0].NumericValue) - 100 * certainty) < 0.01
