"""Sliding-window geometry shared by the one-study reference path and the cross-study batcher."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from models.detections import Candidate, PatchDetections, suppress
from models.detector import Detector
from models.preprocess import normalise, resample
from models.spec import ModelSpec
from models.volume import Grid, Volume


@dataclass(frozen=True)
class Prepared:
    """A volume at the model's spacing and HU range: ``image`` ``(Z, Y, X)``, padded to a patch."""

    image: torch.Tensor
    grid: Grid
    origins: list[tuple[int, int, int]]


def axis_origins(length: int, patch: int, overlap: float) -> list[int]:
    """Patch starts along one axis covering ``length`` with at least ``overlap`` between them."""
    if length <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    starts = list(range(0, length - patch, step))
    return [*starts, length - patch]


def prepare(volume: Volume, spec: ModelSpec, device: torch.device | str = "cpu") -> Prepared:
    """Resample, normalise and pad (with air) ``volume`` for ``spec``, and lay out its patches."""
    hu, grid = resample(volume, spec.spacing_mm, device)
    image = normalise(hu, spec.hu_window)
    pad = [max(0, p - n) for p, n in zip(spec.patch_size, image.shape, strict=True)]
    if any(pad):
        image = functional.pad(image, (0, pad[2], 0, pad[1], 0, pad[0]), value=0.0)
    z, y, x = (
        axis_origins(n, p, spec.overlap) for n, p in zip(image.shape, spec.patch_size, strict=True)
    )
    origins = [(a, b, c) for a in z for b in y for c in x]
    return Prepared(image, grid, origins)


def patch(
    prepared: Prepared, origin: tuple[int, int, int], size: tuple[int, int, int]
) -> torch.Tensor:
    """One ``(1, Z, Y, X)`` patch (a view, no copy)."""
    (z, y, x), (dz, dy, dx) = origin, size
    return prepared.image[None, z : z + dz, y : y + dy, x : x + dx]


def to_candidates(grid: Grid, detections: PatchDetections, spec: ModelSpec) -> list[Candidate]:
    """Volume-voxel detections (all patches) -> non-overlapping nodules in patient mm."""
    inside = np.all(
        (detections.centres >= -0.5) & (detections.centres < np.asarray(grid.shape) - 0.5), axis=1
    )
    centres_mm = grid.to_world(detections.centres[inside])
    diameters, scores = detections.diameters_mm[inside], detections.scores[inside]
    kept = suppress(centres_mm, diameters, scores, spec.nms_overlap, spec.max_detections)
    return [
        Candidate(
            (float(centres_mm[i, 0]), float(centres_mm[i, 1]), float(centres_mm[i, 2])),
            float(diameters[i]),
            float(scores[i]),
        )
        for i in kept
    ]


def rescored(detector: Detector, volume: Volume, candidates: list[Candidate]) -> list[Candidate]:
    """*candidates* of *volume* after the detector's second stage (models.candidate_filter),
    best first; unchanged when it has none."""
    if detector.candidate_filter is None:
        return candidates
    return detector.candidate_filter.rescore(volume, candidates)


def detect(
    detector: Detector, volume: Volume, batch_size: int = 4, second_stage: bool = True
) -> list[Candidate]:
    """One study at a time: all of this volume's patches, ``batch_size`` per forward pass;
    then the detector's second stage unless *second_stage* is false (what it is trained on)."""
    spec = detector.spec
    prepared = prepare(volume, spec, detector.device)
    found: list[PatchDetections] = []
    origins = prepared.origins
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        batch = torch.stack([patch(prepared, o, spec.patch_size) for o in chunk])
        for origin, result in zip(chunk, detector.predict(batch), strict=True):
            found.append(result.shifted(origin))
    candidates = to_candidates(prepared.grid, PatchDetections.concatenate(found), spec)
    return rescored(detector, volume, candidates) if second_stage else candidates
