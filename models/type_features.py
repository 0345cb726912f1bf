"""The nodule-type classifier's inputs: features of the density inside a nodule's outline.

Mean and percentiles of HU, the fraction above SOLID_HU, the size of the solid component
against the whole, HU by depth (a part-solid nodule is dense inside and ground glass at its
edge; a solid or ground-glass one about the same throughout), and the same measured on the
*clean* voxels only: the outline less the voxels within two voxels of dense tissue outside it
(the chest wall or a vessel it touches, whose partial volume makes a ground-glass edge look
solid). The clean features are for the small and the juxta-pleural part-solid nodules, where
a few dense voxels at the centre are all that tells them from ground glass.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from models.outline import SOLID_HU, Outline, axes

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
    "clean_p98_raw_hu",
    "clean_solid_fraction",
    "clean_glass_fraction",
    "inner_solid_fraction",
    "inner_glass_fraction",
    "peak_hu",
    "second_layer_hu",
    "greatest_depth",
)
#: Fewest outline voxels left after taking out those touching outside tissue (the clean
#: voxels); fewer, and the whole outline counts as clean.
TOUCH_KEEP = 4
#: Ground glass lies above this (and below SOLID_HU).
GLASS_HU = -750.0
#: Radius of the ball around the densest clean voxel whose mean HU is ``peak_hu``.
PEAK_RADIUS_MM = 3.0


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
    """The classifier's inputs (FEATURES order) for one outlined nodule (HU / 1000)."""
    mask = outline.mask
    if not mask.any():
        return _empty()
    smooth = smoothed(outline)
    values = smooth[mask].astype(np.float64)
    solid = solid_component(outline, smooth)
    whole = axes(mask, spacing_xyz).mean_mm
    core = axes(solid, spacing_xyz).mean_mm if solid.any() else 0.0
    voxel = float(np.prod(spacing_xyz))
    sampling = spacing_xyz[::-1]
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=sampling)[1:-1, 1:-1, 1:-1]
    # Inner and outer half by depth, the deepest quarter, the outermost clean layer.
    inner = mask & (depth >= 0.5 * depth.max())
    outer = mask & ~inner
    clean = _clean(mask, smooth)
    outermost = depth <= depth[mask].min() + 1e-6
    rim = clean & outermost
    if not rim.any():
        rim = mask
    # Clean voxels below the outermost layer (past a solid nodule's partial-volume edge),
    # and the layer under it.
    below = clean & ~outermost
    if not below.any():
        below = clean
    second = below & (depth <= depth[below].min() + 1e-6)
    clean_hu = smooth[clean].astype(np.float64)
    below_hu = smooth[below].astype(np.float64)
    # The densest clean voxel and the ball around it: a part-solid nodule's core.
    peak = np.unravel_index(int(np.argmax(np.where(clean, smooth, -np.inf))), mask.shape)
    offsets = (np.indices(mask.shape).transpose(1, 2, 3, 0) - np.asarray(peak)) * sampling
    near_peak = clean & (np.linalg.norm(offsets, axis=-1) <= PEAK_RADIUS_MM)
    return np.array(
        [
            values.mean() / 1000,
            np.percentile(values, 10) / 1000,
            np.percentile(values, 50) / 1000,
            np.percentile(values, 90) / 1000,
            float((values > SOLID_HU).mean()),
            float(solid.sum()) / int(mask.sum()),
            core / max(whole, 1e-6),
            np.log(max(float(mask.sum()) * voxel, 1.0)) / 10,
            float(smooth[inner].mean()) / 1000,
            float(np.median(smooth[outer if outer.any() else mask])) / 1000,
            float(smooth[mask & (depth >= 0.75 * depth.max())].mean()) / 1000,
            float(smooth[rim].mean()) / 1000,
            float(np.percentile(outline.hu[clean], 98)) / 1000,
            float((clean_hu > SOLID_HU).mean()),
            _glass_fraction(clean_hu),
            float((below_hu > SOLID_HU).mean()),
            _glass_fraction(below_hu),
            float(smooth[near_peak].mean()) / 1000,
            float(smooth[second].mean()) / 1000,
            float(depth.max()) / 10,
        ]
    )


def _empty() -> npt.NDArray[np.float64]:
    """Features of an empty outline: lung HU, no solid part, no size."""
    return np.array([-0.9 if name.endswith("_hu") else 0.0 for name in FEATURES])


def _glass_fraction(hu: npt.NDArray[np.float64]) -> float:
    return float(((hu > GLASS_HU) & (hu <= SOLID_HU)).mean())


def _clean(mask: npt.NDArray[np.bool_], smooth: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """The outline less voxels within two voxels of dense tissue outside it (the whole
    outline when fewer than TOUCH_KEEP voxels would remain)."""
    outside_dense = ~mask & (smooth > SOLID_HU)
    clean: npt.NDArray[np.bool_] = mask & ~ndimage.binary_dilation(outside_dense, iterations=2)
    return clean if clean.sum() >= TOUCH_KEEP else mask
