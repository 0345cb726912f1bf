"""What a detector returns: candidate nodules in voxel or patient coordinates, and their NMS."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class PatchDetections:
    """Candidates found in one patch: centres ``(N, 3)`` in the patch's ``[z, y, x]`` voxels."""

    centres: npt.NDArray[np.float64]
    diameters_mm: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.centres.shape != (n, 3) or self.diameters_mm.shape != (n,):
            raise ValueError("centres (N, 3), diameters (N,) and scores (N,) must agree")

    @classmethod
    def empty(cls) -> PatchDetections:
        return cls(np.zeros((0, 3)), np.zeros(0), np.zeros(0))

    def shifted(self, origin: npt.ArrayLike) -> PatchDetections:
        """The same candidates in the coordinates of the volume the patch was cut from."""
        return PatchDetections(
            self.centres + np.asarray(origin, dtype=np.float64), self.diameters_mm, self.scores
        )

    @classmethod
    def concatenate(cls, parts: list[PatchDetections]) -> PatchDetections:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.centres for p in parts]),
            np.concatenate([p.diameters_mm for p in parts]),
            np.concatenate([p.scores for p in parts]),
        )


@dataclass(frozen=True)
class Candidate:
    """One detected nodule: centre in patient LPS mm, diameter in mm, probability."""

    centre: tuple[float, float, float]
    diameter_mm: float
    probability: float


def ranked(candidates: Sequence[Candidate], scores: Iterable[float]) -> list[Candidate]:
    """*candidates* with new scores (a second stage's), best first."""
    rescored = [replace(c, probability=float(s)) for c, s in zip(candidates, scores, strict=True)]
    return sorted(rescored, key=lambda c: -c.probability)


def suppress(
    centres_mm: npt.NDArray[np.float64],
    diameters_mm: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    overlap: float,
    limit: int,
) -> list[int]:
    """Greedy non-maximum suppression of spheres; returns kept indices, best first.

    A candidate is dropped when its centre lies closer to a better one than ``overlap`` times
    the larger of the two radii (the sphere analogue of an IoU threshold on boxes).
    """
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for index in order:
        if len(kept) >= limit:
            break
        if kept:
            distance = np.linalg.norm(centres_mm[kept] - centres_mm[index], axis=1)
            reach = overlap * np.maximum(diameters_mm[kept], diameters_mm[index]) / 2
            if np.any(distance < reach):
                continue
        kept.append(int(index))
    return kept
