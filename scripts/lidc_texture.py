"""The nodule type against the LIDC readers' texture ratings of the annotated nodules in data/.

For each nodule of ``data/ct/annotations/LIDC-IDRI-*.xml`` that a reader rated
(``models.lidc``), the centre is the mean of every reader's outline points and the diameter
the largest in-plane extent of those points; the nodule is outlined and typed by
``models.characterise`` and printed next to the readers' texture (1 ground glass ... 5
solid). Run: ``PYTHONPATH=. python scripts/lidc_texture.py``.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from models.characterise import characterise
from models.lidc import in_plane_geometry, rated_nodules
from models.nodule_type import TypeClassifier
from models.volume import from_datasets

DATA = Path(__file__).resolve().parent.parent / "data" / "ct"


def main() -> None:
    classifier = TypeClassifier.load()
    for xml in sorted((DATA / "annotations").glob("LIDC-IDRI-*.xml")):
        folder = DATA / xml.name.split("_")[0]
        datasets = [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
        volume = from_datasets(datasets)
        origin, pixel = in_plane_geometry(datasets[0])
        for nodule in rated_nodules(xml):
            centre = nodule.centre(origin, pixel)
            extent = nodule.extent_mm(pixel)
            measured = characterise(volume, centre, max(extent, 4.0), classifier)
            where = ", ".join(f"{c:.1f}" for c in centre)
            print(
                f"{folder.name} texture {list(nodule.textures)}: {measured.type} "
                f"p {measured.type_probability:.2f} (centre {where}, extent {extent:.1f} mm, "
                f"outline mean diameter {measured.mean_diameter_mm:.1f} mm, "
                f"outlined {measured.outlined})"
            )


if __name__ == "__main__":
    main()
