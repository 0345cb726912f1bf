"""Resample a volume to a model's spacing and map HU to its input range (CPU or GPU)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from models.volume import Grid, Volume


def resample(
    volume: Volume, spacing_xyz: tuple[float, float, float], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, Grid]:
    """Trilinear resampling along the volume's own axes.

    Returns the resampled voxels as a ``(Z, Y, X)`` float32 tensor on ``device`` and their grid.
    The first and last voxel centres stay where they were (``align_corners``), so the true
    new spacing is ``old * (n - 1) / (n' - 1)`` and the affine says exactly that.
    """
    old = np.asarray(volume.spacing[::-1])  # z, y, x
    new = np.asarray(spacing_xyz[::-1], dtype=np.float64)
    shape_in = np.asarray(volume.array.shape)
    shape_out = np.maximum(np.floor((shape_in - 1) * old / new).astype(int) + 1, 1)
    tensor = torch.from_numpy(np.ascontiguousarray(volume.array))
    if torch.device(device).type == "cuda":
        # Page-locked host memory lets the copy run asynchronously (and faster).
        tensor = tensor.pin_memory()
    tensor = tensor.to(device, non_blocking=True)
    if tuple(shape_out) != tuple(shape_in):
        tensor = functional.interpolate(
            tensor[None, None],
            size=tuple(int(n) for n in shape_out),
            mode="trilinear",
            align_corners=True,
        )[0, 0]
    ratio = np.where(shape_out > 1, (shape_in - 1) / np.maximum(shape_out - 1, 1), 1.0)
    affine = volume.affine.copy()
    affine[:3, :3] = affine[:3, :3] * ratio[::-1]  # columns are x, y, z
    z, y, x = (int(n) for n in shape_out)
    return tensor, Grid((z, y, x), affine)


def normalise(hu: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """HU clipped to ``window`` and scaled to 0..1."""
    low, high = window
    return ((hu - low) / (high - low)).clamp_(0.0, 1.0)
