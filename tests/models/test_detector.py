"""Test-time flips: the mirrored pass is mirrored about the middle of the patch, so its heatmap,
flipped back, lands on the cells of the unflipped pass (a plain flip left it half a cell high).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.detector import CenterNetDetector, load_detector
from models.networks.centernet import NoduleCenterNet
from models.registry import BUILTIN, Registry
from models.sliding import prepare
from models.synthetic import (
    Background,
    Density,
    Nodule,
    Outline,
    Position,
    chest_phantom,
    insert_nodule,
)
from tests.models.tiny import tiny_spec

PATCH = 64


def about_middle(patch: torch.Tensor, dim: int) -> torch.Tensor:
    """Voxel ``v`` -> ``n - v`` along ``dim`` (voxel 0 takes the last voxel's value)."""
    flipped = patch.flip(dim)
    return torch.cat([flipped.narrow(dim, 0, 1), flipped.narrow(dim, 0, patch.shape[dim] - 1)], dim)


def test_flip_averaged_heatmap_is_equivariant_under_the_mirror_about_the_middle() -> None:
    torch.manual_seed(0)
    spec = tiny_spec(test_time_flips=("x",))
    detector = CenterNetDetector(spec, NoduleCenterNet((8, 8, 16, 16)), torch.device("cpu"))
    patch = torch.rand(1, 1, 32, 32, 32)
    # v -> n - v twice is the identity but for voxel 0, which takes voxel 1's value: make them
    # equal, so that the symmetry is exact.
    patch[..., 0] = patch[..., 1]
    with torch.inference_mode():
        heat = detector._forward(patch)["heatmap"]
        # Mirroring the input about its middle along x mirrors the x-flip-averaged heatmap's
        # cells (this holds for a single axis; with x and y both it would need both mirrors).
        mirrored = detector._forward(about_middle(patch, 4))["heatmap"]
        torch.testing.assert_close(mirrored, heat.flip(4), atol=1e-4, rtol=1e-4)
        # Without flips the network alone is not equivariant: the test above is not vacuous.
        plain = CenterNetDetector(
            spec.model_copy(update={"test_time_flips": ()}), detector.network, detector.device
        )
        a, b = plain._forward(patch)["heatmap"], plain._forward(about_middle(patch, 4))["heatmap"]
        assert not torch.allclose(b, a.flip(4), atol=1e-4)


def _peak(probability: torch.Tensor, cell: tuple[int, ...], axis: int, reach: int = 2) -> float:
    """Probability-weighted mean cell along ``axis`` within ``reach`` cells of ``cell``."""
    box = probability[tuple(slice(c - reach, c + reach + 1) for c in cell)].double()
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float64)
    along = box.sum(dim=[d for d in range(3) if d != axis])
    return cell[axis] + float((along * offsets).sum() / along.sum())


@pytest.mark.parametrize("seed", [501, 502, 503])
def test_mirrored_pass_of_the_demo_model_lands_on_the_unflipped_cells(seed: int) -> None:
    """A nodule inside a phantom: the peak of each mirrored pass (x, y), flipped back, is within
    0.2 cell of the unflipped pass's peak; a plain flip puts it higher (by 0.13-0.46 cell on
    seeds 501-505 with this measure, which a 5-cell window dilutes: the offset is half a cell)."""
    detector = load_detector(Registry([BUILTIN]).get("demo-nodule-centernet"))
    assert isinstance(detector, CenterNetDetector)
    # Seeds far from the training (20261126, phantoms from 1000), validation (80000+) and
    # held-out (70000+, 90000+) ones.
    rng = np.random.default_rng(seed)
    phantom = chest_phantom(rng, shape_zyx=(96, 128, 144), spacing_mm=1.5)
    centre = Background.of(phantom).sample_centre(8.0, Position.ISOLATED, rng)
    assert centre is not None
    insert_nodule(phantom, Nodule(centre, 8.0, Density.SOLID, Outline.SMOOTH, seed=seed))
    prepared = prepare(phantom, detector.spec)
    voxel = prepared.grid.to_voxel(np.asarray([centre]))[0]
    start = [
        int(np.clip(round(v) - PATCH // 2, 0, n - PATCH))
        for v, n in zip(voxel, prepared.image.shape, strict=True)
    ]
    patch = prepared.image[None, None, *(slice(s, s + PATCH) for s in start)]
    with torch.inference_mode():
        unflipped = torch.sigmoid(detector.network(patch)["heatmap"].float())[0, 0]
        cell = tuple(int(i) for i in np.unravel_index(int(unflipped.argmax()), unflipped.shape))
        # The nodule's peak is where training put it: voxel p in cell floor(p / 2).
        assert np.all(np.abs(np.asarray(cell) - (voxel - start) // 2) <= 1)
        for dim in (3, 4):  # y, x: the demo model's test_time_flips
            axis = dim - 2
            reference = _peak(unflipped, cell, axis)
            # The spec's mirrored pass along this axis alone: the average minus the unflipped.
            single = CenterNetDetector(
                detector.spec.model_copy(update={"test_time_flips": ("zyx"[axis],)}),
                detector.network,
                detector.device,
            )
            average = torch.sigmoid(single._forward(patch)["heatmap"].float())[0, 0]
            mirrored = _peak(2 * average - unflipped, cell, axis)
            plain = detector.network(patch.flip(dim))["heatmap"].float().flip(dim)
            flipped = _peak(torch.sigmoid(plain)[0, 0], cell, axis)
            assert abs(mirrored - reference) < 0.2, (dim, mirrored, reference)
            assert flipped - reference > 0.1, (dim, flipped, reference)
