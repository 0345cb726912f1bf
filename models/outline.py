"""A detected nodule's outline and the measurements a radiologist takes from it.

The outline is a classic segmentation of a crop around the candidate (no network):

1. smooth the crop a little and estimate the lung background (median of voxels below -500
   HU) and its noise;
2. a first, low threshold finds the nodule's body around the centre, and the HU level at
   its rim (a low percentile of its eroded interior: for a part-solid nodule the ground
   glass, not the core); the first body reaches into the partial-volume edge, so the rim
   level is measured again inside the body that the threshold of step 3 gives (without this
   the threshold sat low and a solid nodule's outline took in a shell of edge voxels: about
   +10 % volume);
3. the final threshold lies half-way between the background and that rim level, where the
   partial-volume edge crosses half of the nodule (so the voxel count is the volume);
4. the chest wall is taken away (an opening with a ball larger than the nodule keeps only
   structures thicker than it), then attached vessels (an opening with a ball about half the
   nodule's inscribed radius), the component at the centre is kept and grown back by one
   voxel inside the threshold mask.

Openings are done with Euclidean distance transforms in millimetres, so they cost the same
whatever the ball's radius and respect anisotropic voxels.

Measurements follow how radiologists measure (Fleischner / Lung-RADS): the long axis is the
largest in-plane (Feret) diameter on the axial slice where it is greatest, the short axis the
longest chord perpendicular to it on that slice, the mean diameter their average; the volume
is the voxel count times the voxel volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from models.volume import Volume

BoolArray = npt.NDArray[np.bool_]

#: Voxels above this are the solid component of a nodule (the usual split between ground
#: glass, about -750..-300 HU, and soft tissue).
SOLID_HU = -300.0


@dataclass(frozen=True)
class Outline:
    """A nodule mask on the volume's grid: the box of ``mask`` starts at voxel ``offset``.

    ``hu`` holds the unsmoothed HU of the same box, for features of the nodule's density.
    """

    mask: BoolArray
    offset: tuple[int, int, int]
    hu: npt.NDArray[np.float32]
    #: True when no outline was found and ``mask`` is the detector's sphere instead.
    fallback: bool = False


@dataclass(frozen=True)
class Axes:
    """In-plane axes on the axial slice of greatest extent, in mm; ``slice`` is its index."""

    long_mm: float
    short_mm: float
    slice: int

    @property
    def mean_mm(self) -> float:
        return (self.long_mm + self.short_mm) / 2


def _opening(
    mask: BoolArray, radius_mm: float, sampling: tuple[float, float, float], coarse: bool = False
) -> BoolArray:
    """Binary opening with a ball of ``radius_mm`` (edge voxels continue past the box).

    ``coarse`` opens on every other row and column (4x fewer voxels) and repeats the result
    back: for large balls, where a pixel's precision does not matter.
    """
    if coarse and radius_mm > 4 * max(sampling[1:]):
        small = _opening(
            mask[:, ::2, ::2], radius_mm, (sampling[0], 2 * sampling[1], 2 * sampling[2])
        )
        back: BoolArray = small.repeat(2, axis=1).repeat(2, axis=2)[
            :, : mask.shape[1], : mask.shape[2]
        ]
        return back
    pad = [int(np.ceil(radius_mm / s)) + 1 for s in sampling]
    padded = np.pad(mask, [(p, p) for p in pad], mode="edge")
    eroded = ndimage.distance_transform_edt(padded, sampling=sampling) > radius_mm
    if not eroded.any():
        return np.zeros_like(mask)
    opened = ndimage.distance_transform_edt(~eroded, sampling=sampling) <= radius_mm
    inner = tuple(slice(p, p + n) for p, n in zip(pad, mask.shape, strict=True))
    result: BoolArray = opened[inner]
    return result


def _sphere(
    shape: tuple[int, ...],
    centre: npt.NDArray[np.float64],
    radius_mm: float,
    sampling: tuple[float, float, float],
) -> BoolArray:
    grid = np.indices(shape).transpose(1, 2, 3, 0) - centre
    inside: BoolArray = np.linalg.norm(grid * np.asarray(sampling), axis=-1) <= radius_mm
    return inside


def outline(volume: Volume, centre: tuple[float, float, float], diameter_mm: float) -> Outline:
    """Segment the nodule a detector found at ``centre`` (patient LPS mm) of ``diameter_mm``.

    Parameters
    ----------
    volume : models.volume.Volume
        The HU volume (axial slices: ``z`` is the slice axis).
    centre : tuple[float, float, float]
        The candidate's centre in patient LPS mm.
    diameter_mm : float
        The detector's diameter estimate; it sizes the crop and the fallback sphere.

    Returns
    -------
    Outline
        The mask in a box of the volume; the detector's sphere (``fallback``) when nothing
        brighter than the lung is found at the centre.
    """
    sx, sy, sz = volume.spacing
    sampling = (sz, sy, sx)
    voxel = volume.to_voxel(centre)
    half = max(1.2 * diameter_mm, 12.0)
    reach = np.ceil(half / np.asarray(sampling)).astype(int)
    shape = np.asarray(volume.array.shape)
    middle = np.clip(np.round(voxel).astype(int), 0, shape - 1)
    low = np.maximum(middle - reach, 0)
    high = np.minimum(middle + reach + 1, shape)
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
    hu = np.ascontiguousarray(volume.array[box], dtype=np.float32)
    offset = (int(low[0]), int(low[1]), int(low[2]))
    local = voxel - low
    sphere = _sphere(hu.shape, local, diameter_mm / 2, sampling)

    sigma = [min(1.0, 0.6 / s) for s in sampling]
    smooth = ndimage.gaussian_filter(hu, sigma)
    lung = smooth[smooth < -500]
    if lung.size < 50:
        return Outline(sphere, offset, hu, fallback=True)
    background = float(np.median(lung))
    noise = 1.4826 * float(np.median(np.abs(lung - background)))
    first = background + max(60.0, 4.0 * noise)
    seed = _sphere(hu.shape, local, max(0.25 * diameter_mm, 0.75 * max(sampling)), sampling)
    if not (smooth[seed] > first).any():
        return Outline(sphere, offset, hu, fallback=True)
    near = _sphere(hu.shape, local, 0.6 * diameter_mm, sampling)
    body = _at_centre((smooth > first) & near, seed, smooth)
    # The rim level: the outer part of the body's interior (past the partial-volume edge,
    # outside a part-solid nodule's core). The first body reaches well into the edge (its
    # threshold is near the background), so its rim level is taken again inside the body the
    # first half-way threshold gives, whose surface is near the nodule's own.
    rim = _rim_level(smooth, body, 2.0 * max(sampling[1:]), sampling)
    threshold = max(first, (background + rim) / 2)
    refined = _at_centre((smooth > threshold) & near, seed, smooth)
    if refined.any():
        rim = _rim_level(smooth, refined, 1.5 * max(sampling[1:]), sampling)
        threshold = max(first, (background + rim) / 2)
    mask = smooth > threshold

    # The nodule's inscribed radius at the centre sizes both openings.
    distance = ndimage.distance_transform_edt(mask, sampling=sampling)
    inscribed = float(distance[seed].max())
    if inscribed <= 0:
        return Outline(sphere, offset, hu, fallback=True)
    wall = _opening(mask, 1.3 * inscribed + max(sampling), sampling, coarse=True)
    mask &= ~wall
    core = _opening(mask, 0.55 * inscribed, sampling)
    core = _at_centre(core, seed, smooth) if core.any() else np.zeros_like(mask)
    if not core.any():
        core = _at_centre(mask, seed, smooth)
    if not core.any():
        return Outline(sphere, offset, hu, fallback=True)
    grown = ndimage.binary_dilation(core) & mask
    # Whatever the openings left attached (a vessel thicker than a small nodule) ends at a
    # ball a little larger than the nodule.
    grown &= _sphere(hu.shape, local, max(1.6 * inscribed, 0.6 * diameter_mm), sampling)
    return Outline(grown, offset, hu)


def _rim_level(
    smooth: npt.NDArray[np.float32],
    body: BoolArray,
    inner_mm: float,
    sampling: tuple[float, float, float],
) -> float:
    """10th percentile HU of ``body`` deeper than ``inner_mm`` (its deepest voxels if none)."""
    depth = ndimage.distance_transform_edt(body, sampling=sampling)
    deep = depth > inner_mm
    return float(np.percentile(smooth[deep if deep.any() else depth >= depth.max()], 10))


def _at_centre(mask: BoolArray, seed: BoolArray, smooth: npt.NDArray[np.float32]) -> BoolArray:
    """The connected component of ``mask`` holding the brightest seed voxel inside it."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    inside = seed & mask
    if not inside.any():
        return np.zeros_like(mask)
    candidates = np.flatnonzero(inside)
    best = candidates[np.argmax(smooth.ravel()[candidates])]
    component: BoolArray = labels == labels.ravel()[best]
    return component


def feret(points: npt.NDArray[np.float64], pixel: tuple[float, float]) -> tuple[float, float]:
    """Long axis and longest perpendicular chord of a set of pixels, in mm.

    Parameters
    ----------
    points : numpy.ndarray
        ``(N, 2)`` pixel centres in mm (row, column).
    pixel : tuple[float, float]
        Pixel size in mm (row, column): each pixel is a rectangle, so an extent along a
        direction ``u`` is that of the centres plus the pixel's width along ``u``.

    Returns
    -------
    tuple[float, float]
        (long axis, short axis) in mm.
    """
    if len(points) == 1:
        return max(pixel), min(pixel)
    size = np.asarray(pixel)
    candidates = points
    if len(points) > 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            candidates = points[ConvexHull(points).vertices]
        except QhullError:  # collinear pixels
            candidates = points
    differences = candidates[:, None, :] - candidates[None, :, :]
    lengths = np.linalg.norm(differences, axis=-1)
    i, j = np.unravel_index(np.argmax(lengths), lengths.shape)
    u = differences[i, j] / max(lengths[i, j], 1e-9) if lengths[i, j] > 0 else np.array([1.0, 0])
    long_mm = float(lengths[i, j] + np.abs(u) @ size)
    v = np.array([-u[1], u[0]])
    along, across = points @ u, points @ v
    # Chords perpendicular to u: pixels in bins one pixel wide along u, extent across.
    step = float(np.abs(u) @ size)
    bins = np.floor((along - along.min()) / max(step, 1e-9)).astype(int)
    span = np.zeros(bins.max() + 1)
    lo = np.full(bins.max() + 1, np.inf)
    hi = np.full(bins.max() + 1, -np.inf)
    np.minimum.at(lo, bins, across)
    np.maximum.at(hi, bins, across)
    span = hi - lo
    short_mm = float(span.max() + np.abs(v) @ size)
    return long_mm, min(short_mm, long_mm)


def axes(mask: BoolArray, spacing_xyz: tuple[float, float, float]) -> Axes:
    """Long and short axis on the axial slice where the long axis is greatest."""
    pixel = (spacing_xyz[1], spacing_xyz[0])
    best = Axes(0.0, 0.0, 0)
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        rows, columns = np.nonzero(mask[k])
        points = np.stack([rows * pixel[0], columns * pixel[1]], axis=-1).astype(np.float64)
        long_mm, short_mm = feret(points, pixel)
        if long_mm > best.long_mm:
            best = Axes(long_mm, short_mm, int(k))
    return best


def volume_mm3(mask: BoolArray, spacing_xyz: tuple[float, float, float]) -> float:
    return float(mask.sum()) * float(np.prod(spacing_xyz))
