"""Training data set-up (the training itself is the recipe's, not a test's)."""

from __future__ import annotations

import numpy as np
import pytest

from models.dataset import phantom_volumes
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
