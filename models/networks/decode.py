"""Turn CenterNet head outputs into candidates (peaks of the heatmap), one patch at a time."""

from __future__ import annotations

import torch
from torch.nn import functional

from models.detections import PatchDetections
from models.networks.centernet import STRIDE


def decode_centres(
    outputs: dict[str, torch.Tensor], score_threshold: float, max_candidates: int
) -> list[PatchDetections]:
    """Local maxima of each sample's heatmap above ``score_threshold``, at most ``max_candidates``.

    Centres come back in input voxels: cell ``c`` with offset ``o`` is input voxel
    ``STRIDE * (c + o)``.
    """
    heat = torch.sigmoid(outputs["heatmap"].float())  # (B, 1, z, y, x)
    peaks = heat == functional.max_pool3d(heat, 3, stride=1, padding=1)
    heat = heat * peaks
    results: list[PatchDetections] = []
    for sample in range(heat.shape[0]):
        flat = heat[sample, 0].flatten()
        k = min(max_candidates, flat.numel())
        scores, indices = flat.topk(k)
        keep = scores >= score_threshold
        scores, indices = scores[keep], indices[keep]
        shape = heat.shape[2:]
        cells = torch.stack(
            [
                indices // (shape[1] * shape[2]),
                (indices // shape[2]) % shape[1],
                indices % shape[2],
            ],
            dim=1,
        )
        offset = outputs["offset"][sample].float()[:, cells[:, 0], cells[:, 1], cells[:, 2]].T
        log_d = outputs["log_diameter"][sample, 0].float()[cells[:, 0], cells[:, 1], cells[:, 2]]
        centres = STRIDE * (cells.float() + offset)
        results.append(
            PatchDetections(
                centres.cpu().double().numpy(),
                torch.exp(log_d).cpu().double().numpy(),
                scores.cpu().double().numpy(),
            )
        )
    return results


__all__ = ["decode_centres"]
