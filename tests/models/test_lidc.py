"""LIDC readers' texture ratings, and the nodule type against them on the real sample scans."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from models.characterise import characterise
from models.lidc import in_plane_geometry, rated_nodules
from models.luna16 import read_annotations
from models.nodule_type import TypeClassifier
from models.volume import from_datasets
from tests.dicom import dicom_files
from tests.servers import DATA

ANNOTATIONS = DATA / "ct" / "annotations"


def test_readers_marks_of_one_nodule_are_grouped_with_their_textures() -> None:
    (solid,) = rated_nodules(ANNOTATIONS / "LIDC-IDRI-0001_069.xml")
    assert sorted(solid.textures) == [4, 5, 5, 5]
    # The readers' outlines centre where LUNA16 (made from the same marks) puts the nodule.
    first = dicom_files(DATA / "ct" / "LIDC-IDRI-0001")[0]
    origin, pixel = in_plane_geometry(pydicom.dcmread(first, stop_before_pixels=True))
    (luna,) = read_annotations(ANNOTATIONS / "luna16_annotations_LIDC0001-0002.csv")
    assert np.linalg.norm(np.subtract(solid.centre(origin, pixel), luna.centre)) < 2.0
    (glass,) = rated_nodules(ANNOTATIONS / "LIDC-IDRI-0002_071.xml")
    assert sorted(glass.textures) == [1, 2]


def test_the_readers_ground_glass_nodule_is_typed_ground_glass() -> None:
    # LIDC-IDRI-0001's solid nodule is typed in tests/inference/test_dicom_results.py.
    datasets = [pydicom.dcmread(p) for p in dicom_files(DATA / "ct" / "LIDC-IDRI-0002")]
    origin, pixel = in_plane_geometry(datasets[0])
    (glass,) = rated_nodules(ANNOTATIONS / "LIDC-IDRI-0002_071.xml")
    centre, extent = glass.centre(origin, pixel), glass.extent_mm(pixel)
    measured = characterise(from_datasets(datasets), centre, extent, TypeClassifier.load())
    assert measured.outlined and measured.type == "ground-glass"
    assert measured.type_probability == pytest.approx(1.0, abs=0.2)
