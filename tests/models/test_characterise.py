"""Outline, measurements and type of synthetic nodules against the generator's truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.character_recipe import HELD_OUT_SEED, TYPE_OF, cases, summary, table
from models.characterise import characterise
from models.errors import ChecksumMismatch
from models.nodule_type import PARAMETERS, TypeClassifier
from models.outline import axes, feret, volume_mm3
from models.synthetic import Density, Nodule, Outline, chest_phantom, insert_nodule
from models.volume import Volume


@pytest.fixture(scope="module")
def classifier() -> TypeClassifier:
    return TypeClassifier.load()


def test_feret_axes_of_pixelised_shapes() -> None:
    # A disk of 10 mm on 0.5 mm pixels: both axes 10 mm within a pixel.
    grid = np.indices((41, 41)).transpose(1, 2, 0) * 0.5
    disk = np.linalg.norm(grid - 10.0, axis=-1) <= 5.0
    long_mm, short_mm = feret((np.argwhere(disk) * 0.5).astype(np.float64), (0.5, 0.5))
    assert long_mm == pytest.approx(10.0, abs=0.5) and short_mm == pytest.approx(10.0, abs=0.5)
    # A 12 x 4 mm rectangle turned 30 degrees: long axis its diagonal, short axis 4 mm.
    angle = np.deg2rad(30)
    u, v = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    points = np.argwhere(np.ones((80, 80))) * 0.25 - 10
    inside = (np.abs(points @ u) <= 6) & (np.abs(points @ v) <= 2)
    long_mm, short_mm = feret(points[inside], (0.25, 0.25))
    assert long_mm == pytest.approx(np.hypot(12, 4), abs=0.5)
    assert short_mm == pytest.approx(4.0, abs=0.5)
    # Axes are taken on the axial slice of greatest extent, in the volume's spacing.
    ball = (
        np.linalg.norm(
            (np.indices((9, 30, 30)).transpose(1, 2, 3, 0) - (4, 15, 15)) * (2.0, 0.6, 0.6), axis=-1
        )
        <= 7.0
    )
    measured = axes(ball, (0.6, 0.6, 2.0))
    # (pixels count as squares: a pixel's width on top of the 14 mm between centres)
    assert measured.slice == 4 and measured.long_mm == pytest.approx(14.6, abs=0.5)
    assert volume_mm3(ball, (0.6, 0.6, 2.0)) == pytest.approx(4 / 3 * np.pi * 7**3, rel=0.1)


def test_a_smooth_solid_sphere_measures_its_diameter(classifier: TypeClassifier) -> None:
    rng = np.random.default_rng(5)
    phantom = chest_phantom(rng, shape_zyx=(64, 112, 128), spacing_mm=0.9)
    volume = Volume(phantom.array.copy(), phantom.affine)
    lung = np.argwhere(volume.array < -700)
    centre_voxel = lung[len(lung) // 2]
    centre = tuple(float(v) for v in volume.to_world(centre_voxel.astype(float)))
    truth = insert_nodule(volume, Nodule(centre, 10.0, Density.SOLID, Outline.SMOOTH, seed=3))  # type: ignore[arg-type]
    assert truth is not None
    found = characterise(volume, centre, 11.0, classifier)  # type: ignore[arg-type]
    assert found.outlined and found.type == "solid" and found.type_probability > 0.6
    true_axes = axes(truth.mask, volume.spacing)
    assert found.long_axis_mm == pytest.approx(true_axes.long_mm, abs=1.0)
    # The short axis is the weaker measure (a chord, more sensitive to the rim's voxels).
    assert found.short_axis_mm == pytest.approx(true_axes.short_mm, abs=2.0)
    # Against the nominal 10 mm: within a pixel and a half (pixels measured as squares).
    assert found.mean_diameter_mm == pytest.approx(10.0, abs=1.5)
    true_volume = volume_mm3(truth.mask, volume.spacing)
    assert true_volume == pytest.approx(np.pi / 6 * 10.0**3, rel=0.1)
    assert found.volume_mm3 == pytest.approx(true_volume, rel=0.15)
    assert found.solid_diameter_mm == found.mean_diameter_mm
    # The mask sits where the truth does.
    placed = np.zeros(volume.array.shape, bool)
    z, y, x = found.offset
    placed[
        z : z + found.mask.shape[0], y : y + found.mask.shape[1], x : x + found.mask.shape[2]
    ] = found.mask
    tz, ty, tx = truth.offset
    true = np.zeros_like(placed)
    true[
        tz : tz + truth.mask.shape[0], ty : ty + truth.mask.shape[1], tx : tx + truth.mask.shape[2]
    ] = truth.mask
    assert (placed & true).sum() / (placed | true).sum() > 0.75


@pytest.fixture(scope="module")
def held_out(classifier: TypeClassifier) -> dict[str, float]:
    """A small held-out set (a phantom seed the classifier and the outline's settings never
    saw): nodules of every type, outline and position, the detector off by up to 1 mm and
    20 % in diameter. The recipe's larger held-out set (``python -m
    models.character_recipe evaluate --fresh``) gives the card's figures."""
    x, y, measures = table(HELD_OUT_SEED + 7, phantoms=2)
    assert len(y) >= 12 and set(y.tolist()) == {0, 1, 2}
    return summary(classifier, x, y, measures)


def test_held_out_measurements_meet_the_targets(held_out: dict[str, float]) -> None:
    """The issue's targets: type accuracy 0.85, median volume error 15 %, median long-axis
    error 1 mm (nodules >= 6 mm). On these 13 nodules 0.85 means 12 right (13 are)."""
    assert held_out["volume_error_median_ge6mm"] <= 0.15
    assert held_out["long_axis_error_median_mm_ge6mm"] <= 1.0
    assert held_out["type_accuracy"] >= 0.85


def test_the_generator_returns_each_nodules_true_mask() -> None:
    (case, *_) = cases(HELD_OUT_SEED, phantoms=1, per_phantom=2)
    truth = case.truth
    assert truth.mask.any() and TYPE_OF[truth.nodule.density] in (0, 1, 2)
    # The true volume is close to the nodule's nominal one (lobulated outlines vary).
    nominal = np.pi / 6 * truth.nodule.diameter_mm**3
    assert volume_mm3(truth.mask, case.spacing) == pytest.approx(nominal, rel=0.6)


def test_parameters_are_checked_before_use(tmp_path: Path) -> None:
    tampered = tmp_path / "parameters.json"
    stored = json.loads(PARAMETERS.read_text())
    stored["bias"][0] += 1.0
    tampered.write_text(json.dumps(stored))
    with pytest.raises(ChecksumMismatch, match=r"nodule type parameters .* has SHA-256"):
        TypeClassifier.load(tampered, sha256="0" * 64)
    with pytest.raises(ChecksumMismatch, match="is missing"):
        TypeClassifier.load(tmp_path / "gone.json", sha256="0" * 64)
    # Without an expected hash (a site's own file) it loads.
    assert TypeClassifier.load(tampered).bias[0] == pytest.approx(stored["bias"][0])
