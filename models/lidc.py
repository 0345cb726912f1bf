"""LIDC-IDRI reader annotations: the nodules a reader characterised, with their texture.

An LIDC XML file holds each reader's session; a nodule of 3 mm or more has the reader's
outline (``edgeMap`` points in pixel row/column, per slice by ``imageZposition``) and ratings,
among them ``texture``: 1 ground glass (non-solid), 3 part-solid, 5 solid. Readers' marks of
the same nodule are grouped by their centres.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

NS = {"l": "http://www.nih.gov"}
#: Readers' marks whose in-plane centres are closer than this (pixels) are one nodule.
SAME_NODULE_PX = 15.0


@dataclass(frozen=True)
class RatedNodule:
    """One nodule: each reader's texture rating and all their outline points."""

    textures: tuple[int, ...]
    #: ``(N, 3)`` outline points: z in patient mm, pixel row, pixel column.
    points: npt.NDArray[np.float64]

    def centre(
        self, origin_xy: tuple[float, float], pixel_mm: tuple[float, float]
    ) -> tuple[float, float, float]:
        """Mean of the points in patient mm, for axial slices whose first pixel is at
        ``origin_xy`` (Image Position (Patient) x, y) with ``pixel_mm`` (row, column)."""
        z, row, column = self.points.mean(axis=0)
        return (
            origin_xy[0] + float(column) * pixel_mm[1],
            origin_xy[1] + float(row) * pixel_mm[0],
            float(z),
        )

    def extent_mm(self, pixel_mm: tuple[float, float]) -> float:
        """Largest in-plane extent of the points along a row or a column, in mm."""
        return float(np.ptp(self.points[:, 1:] * np.asarray(pixel_mm), axis=0).max())


def in_plane_geometry(ds: Dataset) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(origin_xy, pixel_mm)`` of an axial slice: Image Position (Patient) x, y and Pixel
    Spacing (row, column), what :meth:`RatedNodule.centre` needs."""
    x, y = (float(v) for v in ds.ImagePositionPatient[:2])
    row, column = (float(v) for v in ds.PixelSpacing)
    return (x, y), (row, column)


def rated_nodules(xml: Path) -> list[RatedNodule]:
    """The nodules of an LIDC XML file that at least one reader rated for texture."""
    root = ET.parse(xml).getroot()  # noqa: S314 - the repository's own sample annotations
    marks: list[tuple[list[int], list[npt.NDArray[np.float64]]]] = []
    for read in root.iterfind(".//l:unblindedReadNodule", NS):
        texture = read.findtext("l:characteristics/l:texture", None, NS)
        if not texture:
            continue
        points = np.array(
            [
                (
                    float(roi.findtext("l:imageZposition", "nan", NS)),
                    float(edge.findtext("l:yCoord", "nan", NS)),
                    float(edge.findtext("l:xCoord", "nan", NS)),
                )
                for roi in read.iterfind("l:roi", NS)
                for edge in roi.iterfind("l:edgeMap", NS)
            ]
        )
        for textures, groups in marks:
            apart = np.linalg.norm(groups[0].mean(axis=0)[1:] - points.mean(axis=0)[1:])
            if apart < SAME_NODULE_PX:
                textures.append(int(texture))
                groups.append(points)
                break
        else:
            marks.append(([int(texture)], [points]))
    return [RatedNodule(tuple(t), np.concatenate(g)) for t, g in marks]
