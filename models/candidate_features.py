"""What tells a detector's candidate that is a nodule from one that is not: features of the CT
around it, for the candidate filter (:mod:`models.candidate_filter`).

The detector's mistakes on this project's data are mostly vessels (in cross-section, at a
branching, blurred along z by thick slices) and the chest wall. Nodules are compact and round;
vessels are tubes that leave any box around them. From a cube of :data:`SIDE` mm around the
candidate, resampled to 1 mm voxels so thin and thick slices look alike:

- the detector's own evidence: its score (as a logit) and diameter;
- density: mean HU of the core, of the candidate's sphere, of a shell and a ring around it,
  and how much dense tissue the ring and the cube hold (chest wall, mediastinum);
- local shape at three scales (1 mm, 2 mm, and the candidate's own): the Hessian's
  eigenvalues at the centre, ordered by size: a bright blob has three alike, a tube two large
  and one small, a plate (pleura) one large;
- the connected dense structure through the centre: its size, how much of it lies on the
  cube's faces (a vessel runs out of the cube, a nodule does not), its elongation, its volume
  against the candidate's sphere, and how much of it lies near the candidate or just beyond.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from models.volume import AIR_HU, Volume

FloatArray = npt.NDArray[np.float64]

#: The cube around a candidate: HALF mm each side of its centre, at 1 mm voxels.
HALF = 20
SIDE = 2 * HALF + 1
FEATURES = (
    "logit",
    "log_diameter",
    "core_hu",
    "sphere_hu",
    "shell_hu",
    "ring_hu",
    "ring_dense_fraction",
    "cube_dense_fraction",
    *(
        f"hessian_{scale}_{name}"
        for scale in ("1mm", "2mm", "own")
        for name in ("low", "mid", "strength")
    ),
    "log_structure_voxels",
    "structure_on_faces",
    "structure_elongation",
    "structure_flatness",
    "log_structure_over_sphere",
    "structure_near_fraction",
    "structure_beyond_density",
)
#: Tissue denser than this counts as dense (chest wall, mediastinum, large vessels).
DENSE_HU = -400.0
_OFFSETS = np.arange(-HALF, HALF + 1, dtype=np.float64)
_DISTANCE = np.sqrt(sum(g.astype(np.float64) ** 2 for g in np.indices((SIDE,) * 3) - HALF))


def cube(volume: Volume, centre: tuple[float, float, float]) -> npt.NDArray[np.float32]:
    """The HU cube around *centre* (patient LPS mm), 1 mm voxels ``[z, y, x]`` along the
    patient's axes, linearly interpolated; air outside the volume."""
    zz, yy, xx = np.meshgrid(_OFFSETS, _OFFSETS, _OFFSETS, indexing="ij")
    world = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3) + np.asarray(centre)
    voxels = volume.to_voxel(world).T
    values = ndimage.map_coordinates(volume.array, voxels, order=1, cval=AIR_HU)
    result: npt.NDArray[np.float32] = values.reshape((SIDE,) * 3).astype(np.float32)
    return result


def _hessian_at_centre(hu: npt.NDArray[np.float32], sigma: float) -> FloatArray:
    """Eigenvalues of the Gaussian-smoothed Hessian at the cube's centre, scale-normalised
    (times sigma^2), ordered by magnitude: one dot product per second derivative."""
    g = np.exp(-(_OFFSETS**2) / (2 * sigma**2))
    g /= g.sum()
    derivatives = (g, -_OFFSETS / sigma**2 * g, (_OFFSETS**2 / sigma**4 - 1 / sigma**2) * g)
    hessian = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            kernel = np.einsum(
                "i,j,k->ijk", derivatives[order[0]], derivatives[order[1]], derivatives[order[2]]
            )
            hessian[i, j] = hessian[j, i] = float(np.sum(kernel * hu))
    values = np.linalg.eigvalsh(hessian)
    result: FloatArray = np.asarray(values[np.argsort(np.abs(values))] * sigma**2, np.float64)
    return result


def features(hu: npt.NDArray[np.float32], probability: float, diameter_mm: float) -> FloatArray:
    """The :data:`FEATURES` of a candidate of *probability* and *diameter_mm* whose
    :func:`cube` is *hu*."""
    x = hu.astype(np.float64)
    p = min(max(probability, 1e-4), 1 - 1e-4)
    radius = max(diameter_mm / 2, 1.5)
    core = float(x[max(1.5, radius / 2) >= _DISTANCE].mean())
    ring = x[(radius + 3 < _DISTANCE) & (radius + 8 >= _DISTANCE)]
    values = [
        np.log(p / (1 - p)),
        np.log(diameter_mm),
        core / 1000,
        float(x[radius >= _DISTANCE].mean()) / 1000,
        float(x[(radius < _DISTANCE) & (radius + 3 >= _DISTANCE)].mean()) / 1000,
        float(ring.mean()) / 1000 if ring.size else AIR_HU / 1000,
        float((ring > DENSE_HU).mean()) if ring.size else 0.0,
        float((x > DENSE_HU).mean()),
    ]
    for sigma in (1.0, 2.0, max(2.0, diameter_mm / 2.8)):
        low, mid, high = _hessian_at_centre(hu, sigma)
        size = abs(high) + 1e-6
        values += [abs(low) / size, abs(mid) / size, float(np.sign(high) * np.log1p(size / 100))]
    return np.asarray(values + _structure(x, core, radius, diameter_mm), dtype=np.float64)


def _structure(x: FloatArray, core: float, radius: float, diameter_mm: float) -> list[float]:
    """The connected structure denser than half-way from lung to the core, through the centre
    (or the largest one next to it); see the module."""
    smooth = ndimage.gaussian_filter(x, 0.8)
    labels, _ = ndimage.label(smooth > (max(core, -700.0) - 850.0) / 2)
    label = int(labels[HALF, HALF, HALF])
    if label == 0:
        near = labels[HALF - 2 : HALF + 3, HALF - 2 : HALF + 3, HALF - 2 : HALF + 3]
        found = near[near > 0]
        label = int(np.bincount(found).argmax()) if found.size else 0
    if label == 0:
        return [0.0, 0.0, 0.0, 0.0, -3.0, 0.0, 0.0]
    structure = labels == label
    count = int(structure.sum())
    faces = sum(
        int(face.sum())
        for face in (
            structure[0], structure[-1], structure[:, 0], structure[:, -1],
            structure[:, :, 0], structure[:, :, -1],
        )
    )  # fmt: skip
    points = np.argwhere(structure).astype(np.float64)
    spread = np.cov(points.T) if count > 3 else np.eye(3)
    axes = np.sort(np.linalg.eigvalsh(spread)) + 1e-3
    sphere = 4 / 3 * np.pi * (diameter_mm / 2) ** 3
    reach = radius * 1.5 + 1
    beyond = structure & (reach < _DISTANCE) & (reach + 3 >= _DISTANCE)
    shell_voxels = 4 * np.pi * (reach + 1.5) ** 2 * 3
    return [
        float(np.log(count)),
        faces / count,
        float(np.log(axes[2] / axes[0])),
        float(np.log(axes[1] / axes[0])),
        float(np.log(count / sphere)),
        float((structure & (reach >= _DISTANCE)).sum()) / count,
        float(beyond.sum()) / shell_voxels,
    ]
