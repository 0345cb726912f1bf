"""The nodule type against the LIDC readers' texture ratings of the annotated nodules in data/.

For each nodule of ``data/ct/annotations/LIDC-IDRI-*.xml`` that a reader characterised, the
centre is the mean of every reader's outline points (pixel -> patient mm through the slice's
geometry), the diameter the largest in-plane extent of those points; the nodule is outlined
and typed by ``models.characterise`` and printed next to the readers' texture (1 ground glass
... 5 solid). Run: ``PYTHONPATH=. python scripts/lidc_texture.py``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pydicom

from models.characterise import characterise
from models.nodule_type import TypeClassifier
from models.volume import from_datasets

DATA = Path(__file__).resolve().parent.parent / "data" / "ct"
NS = {"l": "http://www.nih.gov"}


def nodules(xml: Path) -> list[tuple[list[int], np.ndarray]]:
    """(textures, outline points (N, 3) as (z mm, row, column)) of the characterised nodules,
    grouped across readers by centres within 10 mm."""
    found: list[tuple[list[int], list[np.ndarray]]] = []
    root = ET.parse(xml).getroot()  # noqa: S314 - the repository's own sample annotations
    for read in root.iterfind(".//l:unblindedReadNodule", NS):
        texture = read.find("l:characteristics/l:texture", NS)
        if texture is None or texture.text is None:
            continue
        points = [
            (
                float(roi.findtext("l:imageZposition", "0", NS)),
                float(e.findtext("l:yCoord", "0", NS)),
                float(e.findtext("l:xCoord", "0", NS)),
            )
            for roi in read.iterfind("l:roi", NS)
            for e in roi.iterfind("l:edgeMap", NS)
        ]
        here = np.asarray(points)
        for textures, groups in found:
            if np.linalg.norm(groups[0].mean(0)[[1, 2]] - here.mean(0)[[1, 2]]) < 15:
                textures.append(int(texture.text))
                groups.append(here)
                break
        else:
            found.append(([int(texture.text)], [here]))
    return [(t, np.concatenate(g)) for t, g in found]


def main() -> None:
    classifier = TypeClassifier.load()
    for xml in sorted((DATA / "annotations").glob("LIDC-IDRI-*.xml")):
        folder = DATA / xml.name.split("_")[0]
        datasets = [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
        volume = from_datasets(datasets)
        first = min(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
        row_mm, column_mm = (float(v) for v in first.PixelSpacing)
        x0, y0 = (float(v) for v in first.ImagePositionPatient[:2])
        for textures, points in nodules(xml):
            z, row, column = points.mean(axis=0)
            centre = (x0 + column * column_mm, y0 + row * row_mm, float(z))
            extent = np.ptp(points[:, 1:] * (row_mm, column_mm), axis=0).max()
            measured = characterise(volume, centre, float(max(extent, 4.0)), classifier)
            where = ", ".join(f"{c:.1f}" for c in centre)
            print(
                f"{folder.name} texture {textures}: {measured.type} "
                f"p {measured.type_probability:.2f} (centre {where}, extent {extent:.1f} mm, "
                f"outline mean diameter {measured.mean_diameter_mm:.1f} mm, "
                f"outlined {measured.outlined})"
            )


if __name__ == "__main__":
    main()
