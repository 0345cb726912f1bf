"""The analysed CT volume as a box in patient coordinates: a centre must lie in it.

The box is the volume the AI analysed, in patient coordinates: the first slice's plane spanned
by its rows and columns (PS3.3 C.7.6.2.1.1: ImagePositionPatient is the centre of the first
voxel, ImageOrientationPatient the row and column directions, PixelSpacing the row and column
spacing), extended along the slice normal from the lowest to the highest slice position. A half
voxel of margin on every side covers the voxels' own extent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from pacs.review.model import InvalidEdit, Point


@dataclass(frozen=True)
class VolumeBounds:
    """An oriented box in patient coordinates (mm): origin, unit axes, and extents on each."""

    origin: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...]  # row direction, column direction, normal
    low: tuple[float, float, float]
    high: tuple[float, float, float]

    @classmethod
    def of(cls, headers: Sequence[Dataset]) -> VolumeBounds:
        """The box of a series of single-frame slices sharing one orientation.

        Raises
        ------
        InvalidEdit
            The series carries no usable geometry (then no centre can be checked).
        """
        try:
            first = headers[0]
            orientation = np.array([float(v) for v in first.ImageOrientationPatient])
            spacing_row, spacing_col = (float(v) for v in first.PixelSpacing)
            rows, columns = int(first.Rows), int(first.Columns)
            positions = np.array(
                [[float(v) for v in ds.ImagePositionPatient] for ds in headers], dtype=np.float64
            )
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise InvalidEdit(f"the analysed series has no usable geometry: {exc}") from exc
        row_dir, col_dir = orientation[:3], orientation[3:]
        normal = np.cross(row_dir, col_dir)
        origin = positions[0]
        depths = (positions - origin) @ normal
        gaps = np.diff(np.sort(depths))
        thickness = float(np.median(gaps)) if gaps.size else 0.0
        margin = np.array([spacing_col, spacing_row, thickness]) / 2
        low = np.array([0.0, 0.0, depths.min()]) - margin
        high = np.array([(columns - 1) * spacing_col, (rows - 1) * spacing_row, depths.max()])
        high = high + margin
        return cls(
            origin=_triple(origin),
            axes=(_triple(row_dir), _triple(col_dir), _triple(normal)),
            low=_triple(low),
            high=_triple(high),
        )

    def contains(self, point: Point) -> bool:
        offset = np.array([point.x, point.y, point.z]) - np.array(self.origin)
        along = np.array(self.axes) @ offset
        return bool(np.all(along >= np.array(self.low)) and np.all(along <= np.array(self.high)))

    def check(self, point: Point) -> None:
        """Raise InvalidEdit unless *point* lies in the volume."""
        if not self.contains(point):
            raise InvalidEdit(
                f"centre ({point.x:g}, {point.y:g}, {point.z:g}) mm lies outside the analysed "
                "CT volume"
            )


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return x, y, z
