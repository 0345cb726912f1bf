"""Training samples: patches of real or phantom chest CT with synthetic nodules, and targets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom

from models.luna16 import Annotation
from models.networks.centernet import STRIDE
from models.preprocess import resample
from models.synthetic import (
    PHANTOM_SPACING_MM,
    POSITION_WEIGHTS,
    Background,
    Nodule,
    chest_phantom,
    insert_nodule,
    random_nodule,
)
from models.volume import FloatArray, Volume, from_datasets, thick_slices


def read_series(folder: Path) -> tuple[str, Volume]:
    """SeriesInstanceUID and HU volume of the single CT series of DICOM files under ``folder``."""
    datasets = [pydicom.dcmread(path) for path in sorted(folder.rglob("*.dcm"))]
    if not datasets:
        raise FileNotFoundError(f"no DICOM files under {folder}")
    return str(datasets[0].SeriesInstanceUID), from_datasets(datasets)


def at_spacing(volume: Volume, spacing_mm: tuple[float, float, float]) -> Volume:
    tensor, grid = resample(volume, spacing_mm)
    return Volume(tensor.numpy(), grid.affine)


@dataclass(frozen=True)
class Sample:
    """A training patch (HU, ``[z, y, x]``), its nodules and the cells the loss must ignore."""

    patch: FloatArray
    centres: npt.NDArray[np.float64]  # (N, 3) patch voxels
    diameters_mm: npt.NDArray[np.float64]
    ignore: npt.NDArray[np.bool_]  # output cells (stride 2) inside excluded regions


class SampleSource:
    """Draws training samples from backgrounds, deterministically from its generator."""

    def __init__(
        self,
        backgrounds: list[Background],
        excluded: list[list[Annotation]],
        patch: int,
        rng: np.random.Generator,
        positive_fraction: float = 0.75,
        diameter_range: tuple[float, float] = (3.0, 30.0),
        thick_fraction: float = 0.0,
        position_weights: tuple[float, float, float] = POSITION_WEIGHTS,
    ) -> None:
        if len(excluded) != len(backgrounds):
            raise ValueError("one list of excluded regions per background")
        self.backgrounds = backgrounds
        self.excluded = excluded
        self.patch = patch
        self.rng = rng
        self.positive_fraction = positive_fraction
        self.diameter_range = diameter_range
        self.thick_fraction = thick_fraction
        self.position_weights = position_weights

    def sample(self) -> Sample:
        rng = self.rng
        which = int(rng.integers(len(self.backgrounds)))
        background = self.backgrounds[which]
        p = self.patch
        shape = np.asarray(background.lung.shape)
        lung = np.argwhere(background.lung[::4, ::4, ::4]) * 4
        centre = lung[rng.integers(len(lung))] + rng.integers(-p // 4, p // 4 + 1, size=3)
        corner = np.clip(centre - p // 2, 0, np.maximum(shape - p, 0))
        box = tuple(slice(int(c), int(c) + p) for c in corner)
        array = np.full((p, p, p), -1000.0, dtype=np.float32)
        crop = background.volume.array[box]
        array[: crop.shape[0], : crop.shape[1], : crop.shape[2]] = crop
        affine = background.volume.affine.copy()
        affine[:3, 3] = background.volume.to_world(corner.astype(np.float64))
        volume = Volume(array, affine)

        nodules: list[Nodule] = []
        if rng.random() < self.positive_fraction:
            margin = 4
            inner = tuple(slice(int(c) + margin, int(c) + p - margin) for c in corner)
            for _ in range(int(rng.integers(1, 4))):
                nodule = random_nodule(
                    background,
                    rng,
                    within=inner,  # type: ignore[arg-type]
                    diameter_range=self.diameter_range,
                    position_weights=self.position_weights,
                )
                if nodule is not None:
                    insert_nodule(volume, nodule)
                    nodules.append(nodule)
        if self.thick_fraction and rng.random() < self.thick_fraction:
            array = thick_and_back(array)
        centres = np.array([volume.to_voxel(n.centre) for n in nodules]).reshape(-1, 3)
        diameters = np.array([n.diameter_mm for n in nodules])
        cells = volume.grid.to_voxel(
            np.array([a.centre for a in self.excluded[which]]).reshape(-1, 3)
        )
        ignore = np.zeros((p // STRIDE,) * 3, dtype=bool)
        spacing = float(np.mean(volume.spacing))
        grid = np.indices(ignore.shape).transpose(1, 2, 3, 0) * STRIDE
        for region, voxel in zip(self.excluded[which], cells, strict=True):
            reach = (region.diameter_mm / 2 + 2.0) / spacing
            if np.all(voxel > -reach) and np.all(voxel < p + reach):
                ignore |= np.linalg.norm(grid - voxel, axis=-1) < reach
        # Random flips: nodules look the same mirrored, and the network sees more variety.
        for axis in range(3):
            if rng.random() < 0.5:
                array = np.flip(array, axis)
                ignore = np.flip(ignore, axis)
                centres[:, axis] = p - 1 - centres[:, axis]
        return Sample(np.ascontiguousarray(array), centres, diameters, ignore.copy())


def thick_and_back(array: FloatArray) -> FloatArray:
    """The patch as a scan with slices twice as thick would show it once resampled to these
    voxels: every two slices averaged (``thick_slices``), then interpolated
    linearly back to the original slice positions. Nodules and vessels blur along z as in
    2.5-3 mm clinical CT (the partial volume the held-out real scan has)."""
    thick = thick_slices(Volume(array, np.eye(4)), 2).array
    # Thick slice j lies at original position 2j + 0.5.
    position = np.clip((np.arange(array.shape[0]) - 0.5) / 2, 0, len(thick) - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, len(thick) - 1)
    weight = (position - below).astype(np.float32)[:, None, None]
    blended: FloatArray = (thick[below] * (1 - weight) + thick[above] * weight).astype(np.float32)
    return blended


def heatmap_targets(
    sample: Sample, spacing_mm: float
) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """CenterNet targets at stride 2: Gaussian heatmap, log diameter, offset, and peak cells."""
    size = sample.patch.shape[0] // STRIDE
    heat = np.zeros((size,) * 3, dtype=np.float32)
    log_d = np.zeros((size,) * 3, dtype=np.float32)
    offset = np.zeros((3, size, size, size), dtype=np.float32)
    peak = np.zeros((size,) * 3, dtype=bool)
    grid = np.indices(heat.shape).transpose(1, 2, 3, 0)
    for centre, diameter in zip(sample.centres, sample.diameters_mm, strict=True):
        cell = centre / STRIDE
        index = np.clip(np.floor(cell).astype(int), 0, size - 1)
        sigma = max(0.5, diameter / 2 / spacing_mm / STRIDE / 2)
        blob = np.exp(-np.sum((grid - index) ** 2, axis=-1) / (2 * sigma**2))
        np.maximum(heat, blob.astype(np.float32), out=heat)
        z, y, x = index
        peak[z, y, x] = True
        heat[z, y, x] = 1.0
        log_d[z, y, x] = np.log(diameter)
        offset[:, z, y, x] = cell - index
    return heat, log_d, offset, peak


def phantom_backgrounds(count: int, seed: int, spacing_mm: float) -> list[Background]:
    return [Background.of(volume) for volume in phantom_volumes(count, seed, spacing_mm)]


def phantom_volumes(count: int, seed: int, spacing_mm: float) -> list[Volume]:
    """``count`` chest phantoms drawn as the evaluation draws them (1.5 mm voxels, so the same
    anatomy in millimetres), resampled to the model's ``spacing_mm`` where that differs."""
    rng = np.random.default_rng(seed)
    phantoms = [chest_phantom(rng) for _ in range(count)]
    if spacing_mm != PHANTOM_SPACING_MM:
        phantoms = [at_spacing(p, (spacing_mm,) * 3) for p in phantoms]
    return phantoms
