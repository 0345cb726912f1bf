"""LUNA16 annotation rows: nodule centres in patient mm (world coordinates) and diameters."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

#: LUNA16's evaluation script gives excluded regions recorded without a size (-1) this diameter.
EXCLUDED_DEFAULT_DIAMETER_MM = 10.0


@dataclass(frozen=True)
class Annotation:
    seriesuid: str
    centre: tuple[float, float, float]
    diameter_mm: float


def read_annotations(path: Path, excluded: bool = False) -> list[Annotation]:
    """Rows of an ``annotations.csv`` (or ``annotations_excluded.csv`` when ``excluded``)."""
    rows: list[Annotation] = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            x = float(row.get("coordX") or row["coord_x"])
            y = float(row.get("coordY") or row["coord_y"])
            z = float(row.get("coordZ") or row["coord_z"])
            diameter = float(row["diameter_mm"])
            if excluded and diameter < 0:
                diameter = EXCLUDED_DEFAULT_DIAMETER_MM
            rows.append(Annotation(row["seriesuid"], (x, y, z), diameter))
    return rows
