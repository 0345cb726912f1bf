"""Training data set-up (the training itself is the recipe's, not a test's)."""

from __future__ import annotations

import numpy as np
import pytest

from models.dataset import SampleSource, phantom_backgrounds, phantom_volumes, thick_and_back
from models.synthetic import LUNG_THRESHOLD_HU, PHANTOM_SPACING_MM


def test_phantoms_are_the_same_chests_at_a_finer_spacing() -> None:
    """Phantoms are drawn at the evaluation's 1.5 mm and resampled: at 1 mm they are the same
    chests in millimetres (not smaller ones drawn on a 1 mm grid)."""
    [coarse] = phantom_volumes(1, 1000, PHANTOM_SPACING_MM)
    [fine] = phantom_volumes(1, 1000, 1.0)
    assert np.allclose(coarse.spacing, PHANTOM_SPACING_MM)
    assert np.allclose(fine.spacing, 1.0, atol=0.01)  # first and last voxel centres kept
    # The same extent, centre to centre: (n - 1) x spacing.
    extent = (np.asarray(coarse.array.shape) - 1) * PHANTOM_SPACING_MM
    assert np.allclose((np.asarray(fine.array.shape) - 1) * fine.spacing[::-1], extent)
    # Air and lung take the same share of the volume at either spacing.
    low = [(v.array < LUNG_THRESHOLD_HU).mean() for v in (coarse, fine)]
    assert low[1] == pytest.approx(low[0], abs=0.01)


def test_thick_slice_samples_blur_along_z_only_and_keep_a_ramp() -> None:
    """Two slices averaged and interpolated back: a smooth ramp along z comes back as it was
    (between the end slices), a one-slice-thin plate spreads over its neighbours, and nothing
    moves within a slice."""
    ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[:, None, None], (32, 4, 4)).copy()
    assert np.allclose(thick_and_back(ramp)[1:-1], ramp[1:-1])
    plate = np.full((32, 8, 8), -1000.0, dtype=np.float32)
    plate[16, 2:6, 2:6] = 0.0
    blurred = thick_and_back(plate)
    assert blurred.shape == plate.shape
    profile = blurred[:, 4, 4]
    assert profile.max() < 0.0  # the plate's contrast is shared with its neighbours
    assert profile.argmax() in (16, 17) and profile[15:19].min() > -1000.0
    assert np.all(blurred[:, 0, :] == -1000.0)  # outside the plate in-plane: untouched


def test_thick_slice_samples_are_drawn_only_when_asked() -> None:
    """With no thick-slice share the sample stream is what it was (same draws), so older
    training configs reproduce their weights."""
    background = phantom_backgrounds(1, 1000, PHANTOM_SPACING_MM)
    plain = SampleSource(background, [[]], 32, np.random.default_rng(5))
    again = SampleSource(background, [[]], 32, np.random.default_rng(5), thick_fraction=0.0)
    thick = SampleSource(background, [[]], 32, np.random.default_rng(5), thick_fraction=1.0)
    a, b, c = plain.sample(), again.sample(), thick.sample()
    assert np.array_equal(a.patch, b.patch)
    assert not np.array_equal(a.patch, c.patch)
