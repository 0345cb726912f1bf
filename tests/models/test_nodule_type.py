"""The type classifier's density features and the recipe's grouped cross-validation."""

from __future__ import annotations

import numpy as np
import pytest

from models.character_recipe import crossvalidate
from models.nodule_type import FEATURES, features
from models.outline import Outline

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
