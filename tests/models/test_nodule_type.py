"""The type classifier's density features, its network, and the recipe's grouped
cross-validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.character_recipe import crossvalidate
from models.errors import ChecksumMismatch
from models.nodule_type import TypeClassifier
from models.outline import Outline
from models.type_features import FEATURES, features
from models.volume import Volume, axis_aligned_affine, thick_slices

SPACING = (1.0, 1.0, 1.0)


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    distance = np.linalg.norm(np.indices(shape).transpose(1, 2, 3, 0) - np.asarray(centre), axis=-1)
    ball: np.ndarray = distance <= radius
    return ball


def _feature(outline: Outline, name: str) -> float:
    return float(features(outline, SPACING)[FEATURES.index(name)] * 1000)


def test_deep_hu_finds_a_part_solid_core_that_the_rim_does_not_have() -> None:
    shape, centre = (25, 25, 25), (12, 12, 12)
    nodule = _ball(shape, centre, 8.0)
    hu = np.full(shape, -850.0, np.float32)
    hu[nodule] = -550.0  # ground glass
    hu[_ball(shape, centre, 3.0)] = 20.0  # the solid core, within the deepest quarter
    found = Outline(nodule, (0, 0, 0), hu)
    glass = hu.copy()
    glass[nodule] = -550.0
    all_glass = Outline(nodule, (0, 0, 0), glass)
    # Smoothing blurs the core's edge a little; the deepest voxels stay solid.
    assert _feature(found, "deep_hu") > -100 > -500 > _feature(all_glass, "deep_hu")
    # The outermost layer (smoothed with the lung beside it) does not see the core.
    assert _feature(found, "rim_hu") == pytest.approx(_feature(all_glass, "rim_hu"), abs=5)


def test_rim_hu_leaves_out_the_voxels_next_to_the_chest_wall() -> None:
    shape, centre = (25, 25, 25), (12, 12, 12)
    nodule = _ball(shape, centre, 7.0)
    hu = np.full(shape, -850.0, np.float32)
    hu[nodule] = -550.0
    alone = _feature(Outline(nodule, (0, 0, 0), hu.copy()), "rim_hu")
    # Chest wall (soft tissue) outside the outline beside the nodule, and its partial volume
    # in the outline's edge voxels next to it.
    wall = np.zeros(shape, bool)
    wall[:, :, 20:] = True
    hu[wall & ~nodule] = 40.0
    hu[nodule & (np.indices(shape)[2] >= 18)] = 0.0
    found = Outline(nodule, (0, 0, 0), hu)
    rim_hu = _feature(found, "rim_hu")
    assert rim_hu == pytest.approx(alone, abs=10)
    # The outermost layer with those voxels in would be denser: the exclusion is what works.
    everything = hu.copy()
    everything[wall & ~nodule] = -850.0
    assert _feature(Outline(nodule, (0, 0, 0), everything), "rim_hu") > rim_hu + 15


def test_crossvalidation_keeps_each_phantoms_nodules_in_one_fold() -> None:
    # Each "phantom" has one type and features that name the phantom, not the type: split by
    # nodule, a phantom's other nodules give the type away; grouped by phantom, nothing can be
    # learnt, and the accuracy stays near chance.
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 5)
    y = groups % 3
    x = np.eye(20)[groups] + rng.normal(0, 0.05, (groups.size, 20))
    assert max(crossvalidate(x, y, groups, splits=1)) < 0.6
    assert min(crossvalidate(x, y, np.arange(y.size), splits=1)) > 0.9
    # Features that carry the type: learnt.
    x = np.eye(3)[y][:, 1:] + rng.normal(0, 0.1, (y.size, 2))
    assert min(crossvalidate(x, y, groups, splits=1)) > 0.95


def _small_nodule(core_hu: float) -> Outline:
    """A 6 mm nodule of -550 HU ground glass with a 3 mm ball at its centre at ``core_hu``."""
    shape, centre = (15, 15, 15), (7, 7, 7)
    nodule = _ball(shape, centre, 3.0)
    hu = np.full(shape, -850.0, np.float32)
    hu[nodule] = -550.0
    hu[_ball(shape, centre, 1.5)] = core_hu
    return Outline(nodule, (0, 0, 0), hu)


def test_clean_features_see_the_core_of_a_small_part_solid_nodule() -> None:
    # 19 solid voxels at the centre of a 6 mm nodule (123 voxels): the unsmoothed 98th
    # percentile, the ball around the densest voxel and the solid share below the outermost
    # layer see them.
    part_solid, glass = _small_nodule(30.0), _small_nodule(-550.0)
    assert _feature(part_solid, "clean_p98_raw_hu") > 0 > -500 > _feature(glass, "clean_p98_raw_hu")
    assert _feature(part_solid, "peak_hu") > _feature(glass, "peak_hu") + 60
    assert (
        _feature(part_solid, "inner_solid_fraction") > 0 == _feature(glass, "inner_solid_fraction")
    )
    # The same nodule against the chest wall: the wall's partial volume in the outline's edge
    # is left out, so the ground-glass one still has no clean solid voxel.
    for outline in (part_solid, glass):
        wall = np.zeros(outline.hu.shape, bool)
        wall[:, :, 12:] = True
        outline.hu[wall & ~outline.mask] = 40.0
        outline.hu[outline.mask & (np.indices(outline.hu.shape)[2] >= 10)] = -100.0
    assert (
        _feature(glass, "clean_solid_fraction") == 0 < _feature(part_solid, "clean_solid_fraction")
    )
    assert _feature(glass, "clean_p98_raw_hu") < -500 < _feature(part_solid, "clean_p98_raw_hu")


def test_the_hidden_layer_learns_what_a_linear_model_cannot_and_fits_deterministically() -> None:
    # Type by the product of two features' signs (XOR): no linear boundary separates it.
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (300, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(int) * 2
    test = rng.normal(0, 1, (300, 2))
    truth = (test[:, 0] * test[:, 1] > 0).astype(int) * 2

    def accuracy(model: TypeClassifier) -> float:
        return float((model.probabilities(test).argmax(axis=1) == truth).mean())

    assert accuracy(TypeClassifier.fit(x, y, hidden=8)) > 0.9
    assert accuracy(TypeClassifier.fit(x, y, hidden=1)) < 0.75  # one unit: a single boundary
    first, second = TypeClassifier.fit(x, y), TypeClassifier.fit(x, y)
    assert first.to_json() == second.to_json()


def test_stored_parameters_give_the_same_types(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (60, len(FEATURES)))
    model = TypeClassifier.fit(x, rng.integers(0, 3, 60), hidden=4)
    path = tmp_path / "parameters.json"
    path.write_text(model.to_json())
    loaded = TypeClassifier.load(path)
    # Six decimals stored: the same probabilities within rounding.
    assert np.abs(loaded.probabilities(x) - model.probabilities(x)).max() < 1e-4
    # A file whose arrays do not fit the features is refused.
    stored = json.loads(path.read_text())
    stored["mean"] = stored["mean"][:-1]
    path.write_text(json.dumps(stored))
    with pytest.raises(ChecksumMismatch):
        TypeClassifier.load(path)


def test_thick_slices_average_whole_slabs_at_their_middle() -> None:
    # Slice i holds the value i; slabs of three: 1, 4, 7, centred on slices 1, 4, 7.
    affine = axis_aligned_affine((0.8, 0.8, 0.8), (10.0, 20.0, -50.0))
    thin = Volume(
        np.broadcast_to(np.arange(10.0)[:, None, None], (10, 4, 4)).astype(np.float32), affine
    )
    thick = thick_slices(thin, 3)
    assert thick.array.shape == (3, 4, 4) and thick.spacing == pytest.approx((0.8, 0.8, 2.4))
    assert thick.array[:, 0, 0].tolist() == [1.0, 4.0, 7.0]
    for k in range(3):
        assert thick.to_world((k, 0, 0)) == pytest.approx(thin.to_world((3 * k + 1, 0, 0)))
