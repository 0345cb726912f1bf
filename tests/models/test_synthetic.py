"""The synthetic generator: geometry in patient mm, lung masks, phantoms, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from models.synthetic import (
    Background,
    Density,
    Nodule,
    Outline,
    Position,
    chest_phantom,
    insert_nodule,
    lung_mask,
    random_nodule,
)
from models.volume import from_slices


def _oblique_series() -> tuple[
    list[np.ndarray], list[tuple[float, float, float]], tuple[float, ...]
]:
    """40 slices of 48 x 64, tilted 20 degrees about L, 0.8 x 0.9 mm pixels, 2 mm apart,
    given in shuffled order as a scanner might send them."""
    angle = np.deg2rad(20)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row, col)
    origin = np.array([-20.0, -30.0, 100.0])
    positions = [tuple(origin + k * 2.0 * normal) for k in range(40)]
    order = np.random.default_rng(3).permutation(40)
    arrays = [np.full((48, 64), -1000 + 1024, dtype=np.int16) for _ in range(40)]
    orientation = (*row, *col)
    return arrays, [positions[i] for i in order], orientation  # type: ignore[return-value]


def test_a_nodule_lands_where_the_dicom_geometry_says() -> None:
    arrays, positions, orientation = _oblique_series()
    volume = from_slices(
        arrays,
        positions,
        orientation,
        (0.9, 0.8),
        [(1.0, -1024.0)] * 40,  # type: ignore[arg-type]
    )
    assert volume.spacing == pytest.approx((0.8, 0.9, 2.0))
    # Pick a voxel by the DICOM equation (PS3.3 C.7.6.2.1.1): P = S + i*dc*X + j*dr*Y, with
    # S the ImagePositionPatient of the slice, X/Y the row/column direction cosines.
    slice_index, row_j, col_i = 17, 21, 30
    ordered = sorted(
        positions, key=lambda p: float(np.dot(p, np.cross(orientation[:3], orientation[3:])))
    )
    target = (
        np.asarray(ordered[slice_index])
        + col_i * 0.8 * np.asarray(orientation[:3])
        + row_j * 0.9 * np.asarray(orientation[3:])
    )
    insert_nodule(volume, Nodule(tuple(target), 8.0, Density.SOLID, Outline.SMOOTH, seed=1))  # type: ignore[arg-type]
    changed = volume.array > -900
    weights = (volume.array + 1000) * changed
    centroid = np.array(
        [np.sum(np.indices(volume.array.shape)[a] * weights) / weights.sum() for a in range(3)]
    )
    assert centroid == pytest.approx([slice_index, row_j, col_i], abs=0.35)
    # About the requested size: 8 mm wide along x (0.8 mm voxels) through the centre.
    line = volume.array[slice_index, row_j] > -500
    assert 8.0 - 1.6 <= line.sum() * 0.8 <= 8.0 + 1.6


def test_densities_and_outlines() -> None:
    rng = np.random.default_rng(0)
    phantom = chest_phantom(rng, shape_zyx=(64, 96, 112), spacing_mm=1.5)
    background = Background.of(phantom)
    centre = background.sample_centre(12.0, Position.ISOLATED, rng)
    assert centre is not None
    voxel = np.round(phantom.to_voxel(centre)).astype(int)
    peaks = {}
    for density in Density:
        copy = phantom.array.copy()
        volume = type(phantom)(copy, phantom.affine)
        insert_nodule(volume, Nodule(centre, 12.0, density, Outline.SPICULATED, seed=5))
        peaks[density] = float(copy[tuple(voxel)])
    assert peaks[Density.SOLID] > -150
    assert -750 < peaks[Density.GROUND_GLASS] < -250
    assert peaks[Density.PART_SOLID] > -150  # solid core at the centre


def test_positions_respect_the_lung() -> None:
    rng = np.random.default_rng(1)
    phantom = chest_phantom(rng, shape_zyx=(64, 96, 112), spacing_mm=1.5)
    background = Background.of(phantom)
    lung = lung_mask(phantom)
    assert lung.sum() > 0.05 * lung.size
    for position in Position:
        centre = background.sample_centre(8.0, position, np.random.default_rng(2))
        assert centre is not None
        z, y, x = np.round(phantom.to_voxel(centre)).astype(int)
        assert lung[z, y, x]
        wall = background.wall_distance[z, y, x]
        if position is Position.JUXTA_PLEURAL:
            assert wall <= 5.0 + 1.0
        if position is Position.ISOLATED:
            assert wall > 4.0 + 3.0 - 1.5


def test_deterministic_from_the_seed() -> None:
    a = chest_phantom(np.random.default_rng(7), shape_zyx=(48, 64, 64))
    b = chest_phantom(np.random.default_rng(7), shape_zyx=(48, 64, 64))
    assert np.array_equal(a.array, b.array)
    background = Background.of(a)
    n1 = random_nodule(background, np.random.default_rng(11))
    n2 = random_nodule(background, np.random.default_rng(11))
    assert n1 == n2 and n1 is not None and 3.0 <= n1.diameter_mm <= 30.0


def test_position_weights_choose_where_random_nodules_sit() -> None:
    """Training can ask for more attached nodules; the default draws are unchanged."""
    background = Background.of(chest_phantom(np.random.default_rng(7), shape_zyx=(64, 96, 96)))

    def positions(weights: tuple[float, float, float] | None) -> list[Position]:
        rng = np.random.default_rng(12)
        drawn = [
            random_nodule(background, rng, diameter_range=(3.0, 6.0))
            if weights is None
            else random_nodule(background, rng, diameter_range=(3.0, 6.0), position_weights=weights)
            for _ in range(20)
        ]
        return [n.position for n in drawn if n is not None]

    assert set(positions((1.0, 0.0, 0.0))) == {Position.ISOLATED}
    pleural = positions((0.0, 0.0, 1.0))
    assert pleural.count(Position.JUXTA_PLEURAL) >= 15  # the rest fell back to isolated
    assert Position.JUXTA_VASCULAR not in pleural
    assert positions(None) == positions((0.5, 0.25, 0.25))
