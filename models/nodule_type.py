"""Nodule type (solid / part-solid / ground-glass) from the density inside its outline.

A multinomial logistic regression on a handful of features of the outlined voxels (mean and
percentiles of HU, the fraction above SOLID_HU, the size of the solid component against the
whole). Its parameters are a small JSON file in the repository, checked by SHA-256 on load and
made by the recipe in :mod:`models.character_recipe` from synthetic nodules only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from models.errors import ChecksumMismatch
from models.outline import SOLID_HU, Outline, axes
from models.registry import sha256_of

#: The classifier's classes, in the order of its outputs (the words Lung-RADS uses).
TYPES = ("solid", "part-solid", "ground-glass")
FEATURES = (
    "mean_hu",
    "p10_hu",
    "p50_hu",
    "p90_hu",
    "solid_fraction",
    "solid_component_ratio",
    "solid_diameter_ratio",
    "log_volume",
    "core_hu",
    "shell_hu",
    "deep_hu",
    "rim_hu",
)
#: Fewest outline voxels left after taking out those touching outside tissue, for rim_hu.
TOUCH_KEEP = 4
PARAMETERS = Path(__file__).parent / "zoo" / "nodule-type" / "1" / "parameters.json"
#: SHA-256 of PARAMETERS, as the recipe wrote it.
PARAMETERS_SHA256 = "50602a245d6efe375329efadf39826be4f9c60266fa016fe47769c40d8f86467"


def smoothed(outline: Outline) -> npt.NDArray[np.float32]:
    """The outline's HU box, lightly smoothed in-plane (CT noise, not structure)."""
    result: npt.NDArray[np.float32] = ndimage.gaussian_filter(outline.hu, (0, 0.7, 0.7))
    return result


def solid_component(outline: Outline, smooth: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """The largest connected part of the outline denser than SOLID_HU (may be empty)."""
    dense = outline.mask & (smooth > SOLID_HU)
    labels, count = ndimage.label(dense)
    if count == 0:
        return dense
    sizes = np.bincount(labels.ravel())[1:]
    component: npt.NDArray[np.bool_] = labels == 1 + int(np.argmax(sizes))
    return component


def features(outline: Outline, spacing_xyz: tuple[float, float, float]) -> npt.NDArray[np.float64]:
    """The classifier's inputs (FEATURES order) for one outlined nodule."""
    smooth = smoothed(outline)
    values = smooth[outline.mask].astype(np.float64)
    if values.size == 0:
        values = np.array([-900.0])
    solid = solid_component(outline, smooth)
    whole = axes(outline.mask, spacing_xyz).mean_mm
    core = axes(solid, spacing_xyz).mean_mm if solid.any() else 0.0
    voxel = float(np.prod(spacing_xyz))
    # Core against shell (inner and outer half by depth): a part-solid nodule is dense inside
    # and ground glass outside; a solid or ground-glass one about the same throughout. The
    # deepest quarter and the outermost layer say the same more sharply (small nodules); the
    # layer leaves out voxels next to dense tissue outside the outline (the wall or a vessel
    # it touches), whose partial volume makes a ground-glass edge look solid.
    core_hu = shell_hu = deep_hu = rim_hu = -0.9
    if outline.mask.any():
        padded = np.pad(outline.mask, 1)
        depth = ndimage.distance_transform_edt(padded, sampling=spacing_xyz[::-1])[1:-1, 1:-1, 1:-1]
        inner = outline.mask & (depth >= 0.5 * depth.max())
        outer = outline.mask & ~inner
        core_hu = float(smooth[inner].mean()) / 1000
        shell_hu = float(np.median(smooth[outer if outer.any() else outline.mask])) / 1000
        deep_hu = float(smooth[outline.mask & (depth >= 0.75 * depth.max())].mean()) / 1000
        rim_hu = float(smooth[_rim(outline.mask, smooth, depth)].mean()) / 1000
    return np.array(
        [
            values.mean() / 1000,
            np.percentile(values, 10) / 1000,
            np.percentile(values, 50) / 1000,
            np.percentile(values, 90) / 1000,
            float((values > SOLID_HU).mean()),
            float(solid.sum()) / max(int(outline.mask.sum()), 1),
            core / max(whole, 1e-6),
            np.log(max(float(outline.mask.sum()) * voxel, 1.0)) / 10,
            core_hu,
            shell_hu,
            deep_hu,
            rim_hu,
        ]
    )


def _rim(
    mask: npt.NDArray[np.bool_], smooth: npt.NDArray[np.float32], depth: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """The outline's outermost voxel layer, less voxels within two voxels of dense tissue
    outside the outline (the whole outline when fewer than TOUCH_KEEP voxels, or no layer voxel,
    would remain)."""
    outside_dense = ~mask & (smooth > SOLID_HU)
    clean = mask & ~ndimage.binary_dilation(outside_dense, iterations=2)
    if clean.sum() < TOUCH_KEEP:
        clean = mask
    rim: npt.NDArray[np.bool_] = clean & (depth <= depth[mask].min() + 1e-6)
    return rim if rim.any() else mask


@dataclass(frozen=True)
class TypeClassifier:
    """Softmax regression: ``p = softmax(((x - mean) / scale) @ weights + bias)``."""

    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    weights: npt.NDArray[np.float64]  # (features, classes)
    bias: npt.NDArray[np.float64]  # (classes,)

    def probabilities(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Class probabilities ``(N, 3)`` (TYPES order) for feature rows ``(N, features)``."""
        logits = ((np.atleast_2d(x) - self.mean) / self.scale) @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        result: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
        return result

    @classmethod
    def fit(
        cls,
        x: npt.NDArray[np.float64],
        y: npt.NDArray[np.int_],
        l2: float = 1e-3,
        steps: int = 4000,
        rate: float = 0.5,
    ) -> TypeClassifier:
        """Fit by full-batch gradient descent on the L2-regularised cross-entropy."""
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - mean) / scale
        onehot = np.eye(len(TYPES))[y]
        weights = np.zeros((x.shape[1], len(TYPES)))
        bias = np.zeros(len(TYPES))
        for _ in range(steps):
            model = cls(np.zeros(x.shape[1]), np.ones(x.shape[1]), weights, bias)
            error = (model.probabilities(z) - onehot) / len(z)
            weights = weights - rate * (z.T @ error + l2 * weights)
            bias = bias - rate * error.sum(axis=0)
        return cls(mean, scale, weights, bias)

    def to_json(self) -> str:
        return json.dumps(
            {
                "classes": list(TYPES),
                "features": list(FEATURES),
                "mean": self.mean.round(6).tolist(),
                "scale": self.scale.round(6).tolist(),
                "weights": self.weights.round(6).tolist(),
                "bias": self.bias.round(6).tolist(),
            },
            indent=1,
        )

    @classmethod
    def load(cls, path: Path = PARAMETERS, sha256: str | None = None) -> TypeClassifier:
        """Read parameters written by :meth:`to_json`, after checking their SHA-256."""
        expected = PARAMETERS_SHA256 if sha256 is None and path == PARAMETERS else sha256
        if expected is not None and sha256_of(path) != expected:
            raise ChecksumMismatch(f"{path} does not hash to {expected}; refusing to load it")
        stored = json.loads(path.read_text())
        if tuple(stored["classes"]) != TYPES or tuple(stored["features"]) != FEATURES:
            raise ChecksumMismatch(f"{path} is for other classes or features")
        return cls(
            np.asarray(stored["mean"]),
            np.asarray(stored["scale"]),
            np.asarray(stored["weights"]),
            np.asarray(stored["bias"]),
        )
