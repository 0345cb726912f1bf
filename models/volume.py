"""A CT volume in patient coordinates: voxels plus the affine that places them (DICOM LPS, mm)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

FloatArray = npt.NDArray[np.float32]
AIR_HU = -1000.0


@dataclass(frozen=True)
class Grid:
    """Voxel grid ``[z, y, x]`` of ``shape`` with an affine from ``(x, y, z, 1)`` to patient LPS mm.

    ``x`` is the column index, ``y`` the row index and ``z`` the slice index, as in DICOM's
    Image Plane module (PS3.3 C.7.6.2): column direction = ``affine[:3, 0]``, row direction
    = ``affine[:3, 1]``, slice step = ``affine[:3, 2]``, first voxel centre = ``affine[:3, 3]``.
    """

    shape: tuple[int, int, int]
    affine: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        if len(self.shape) != 3:
            raise ValueError(f"a volume is 3-D, got shape {self.shape}")
        if self.affine.shape != (4, 4) or abs(np.linalg.det(self.affine[:3, :3])) < 1e-9:
            raise ValueError("the affine must be an invertible 4x4 matrix")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along x, y, z."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    def to_world(self, zyx: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Voxel coordinates ``(..., 3)`` in ``[z, y, x]`` order to patient LPS mm ``(..., 3)``."""
        points = np.asarray(zyx, dtype=np.float64)[..., ::-1]
        return points @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_voxel(self, lps: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Patient LPS mm ``(..., 3)`` to continuous voxel coordinates ``[z, y, x]``."""
        points = np.asarray(lps, dtype=np.float64) - self.affine[:3, 3]
        xyz = points @ np.linalg.inv(self.affine[:3, :3]).T
        return xyz[..., ::-1]


@dataclass(frozen=True)
class Volume:
    """Voxel values (HU, float32) on a :class:`Grid`."""

    array: FloatArray
    affine: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a volume is 3-D, got shape {self.array.shape}")
        self.grid  # noqa: B018 - validates the affine

    @property
    def grid(self) -> Grid:
        shape = self.array.shape
        return Grid((shape[0], shape[1], shape[2]), self.affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing

    def to_world(self, zyx: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return self.grid.to_world(zyx)

    def to_voxel(self, lps: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return self.grid.to_voxel(lps)


def thick_slices(volume: Volume, k: int) -> Volume:
    """The volume with every ``k`` slices averaged into one (a thicker slice at their middle),
    as a scanner reconstructing thicker slices would give it (a trailing remainder dropped)."""
    n = volume.array.shape[0] // k * k
    array = volume.array[:n].reshape(n // k, k, *volume.array.shape[1:]).mean(axis=1)
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, 2] * (k - 1) / 2
    affine[:3, 2] *= k
    return Volume(np.ascontiguousarray(array, dtype=np.float32), affine)


def axis_aligned_affine(
    spacing_xyz: tuple[float, float, float], origin: tuple[float, float, float] = (0, 0, 0)
) -> npt.NDArray[np.float64]:
    """Affine of an axial volume whose axes run along patient L, P, S."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing_xyz)
    affine[:3, 3] = origin
    return affine


def from_slices(
    pixel_arrays: list[npt.NDArray[np.generic]],
    positions: list[tuple[float, float, float]],
    orientation: tuple[float, float, float, float, float, float],
    pixel_spacing: tuple[float, float],
    rescale: list[tuple[float, float]],
    padding_value: float | None = None,
) -> Volume:
    """Stack single-frame slices into a HU volume (PS3.3 C.7.6.2 geometry).

    Slices are sorted along the slice normal by ImagePositionPatient; the slice step comes from
    the positions, never from SliceThickness. ``rescale`` holds (RescaleSlope, RescaleIntercept)
    per slice; voxels equal to ``padding_value`` (PixelPaddingValue, stored value) become air.
    """
    if not pixel_arrays or len(pixel_arrays) != len(positions) or len(rescale) != len(positions):
        raise ValueError("one pixel array, position and rescale pair per slice")
    row_dir = np.asarray(orientation[:3], dtype=np.float64)
    col_dir = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row_dir, col_dir)
    along = np.asarray(positions, dtype=np.float64) @ normal
    order = np.argsort(along, kind="stable")
    stack = np.empty((len(order), *pixel_arrays[0].shape), dtype=np.float32)
    for k, index in enumerate(order):
        stored = pixel_arrays[index]
        slope, intercept = rescale[index]
        hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        if padding_value is not None:
            hu[stored == padding_value] = AIR_HU
        stack[k] = hu
    step = float(np.median(np.diff(along[order]))) if len(order) > 1 else 1.0
    affine = np.eye(4)
    # PixelSpacing is (row spacing, column spacing): x advances by the column spacing.
    affine[:3, 0] = row_dir * pixel_spacing[1]
    affine[:3, 1] = col_dir * pixel_spacing[0]
    affine[:3, 2] = normal * step
    affine[:3, 3] = positions[order[0]]
    return Volume(stack, affine)


def from_datasets(
    datasets: Sequence[Dataset], pixel_arrays: Sequence[npt.NDArray[np.generic]] | None = None
) -> Volume:
    """HU volume of single-frame slices (see from_slices), geometry read from the data sets.

    *pixel_arrays* are the decoded pixels when the caller decoded them already (in parallel);
    otherwise each data set's ``pixel_array`` is decoded here.
    """
    arrays = list(pixel_arrays) if pixel_arrays is not None else [ds.pixel_array for ds in datasets]
    first = datasets[0]
    padding = first.get("PixelPaddingValue")
    if (
        padding is not None
        and np.issubdtype(arrays[0].dtype, np.signedinteger)
        and padding >= 2**15
    ):
        padding -= 2**16  # stored as US while the pixels are signed (PS3.3 C.7.5.1.1.2)
    orientation = [float(v) for v in first.ImageOrientationPatient]
    return from_slices(
        arrays,
        [_triple(ds.ImagePositionPatient) for ds in datasets],
        (*_triple(orientation[:3]), *_triple(orientation[3:])),
        (float(first.PixelSpacing[0]), float(first.PixelSpacing[1])),
        [
            (float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0)))
            for ds in datasets
        ],
        None if padding is None else float(padding),
    )


def _triple(value: Sequence[object]) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in value)  # type: ignore[arg-type]
    return (x, y, z)
