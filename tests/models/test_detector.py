"""Test-time flips: the flip-averaged heatmap is mirror-equivariant (and the network alone is
not), which checks that the mirrored pass is flipped back along the right axis."""

from __future__ import annotations

import torch

from models.detector import CenterNetDetector
from models.networks.centernet import NoduleCenterNet
from tests.models.tiny import tiny_spec


def test_flip_averaged_heatmap_is_mirror_equivariant() -> None:
    torch.manual_seed(0)
    spec = tiny_spec(test_time_flips=("x",))
    detector = CenterNetDetector(spec, NoduleCenterNet((8, 8, 16, 16)), torch.device("cpu"))
    patch = torch.rand(1, 1, 32, 32, 32)
    with torch.inference_mode():
        heat = detector._forward(patch)["heatmap"]
        # Mirroring the input along x mirrors the x-flip-averaged heatmap (this holds for a
        # single axis; with x and y both it would need the xy mirror too).
        mirrored = detector._forward(patch.flip(4))["heatmap"]
        torch.testing.assert_close(mirrored, heat.flip(4), atol=1e-4, rtol=1e-4)
        # Without flips the network alone is not equivariant: the test above is not vacuous.
        plain = CenterNetDetector(
            spec.model_copy(update={"test_time_flips": ()}), detector.network, detector.device
        )
        a, b = plain._forward(patch)["heatmap"], plain._forward(patch.flip(4))["heatmap"]
        assert not torch.allclose(b, a.flip(4), atol=1e-4)
