"""Synthetic lung nodules and chest phantoms: the demo model's training and test data.

Nodules are rendered in patient millimetres through the volume's affine, so a nodule asked
for at an LPS point lands at the voxel the DICOM geometry gives for that point, whatever the
spacing or orientation. Each one has a smooth HU profile, a partial-volume edge (a sigmoid of
the signed distance over about half a voxel), an optional lobulated or spiculated outline,
and one of three densities: solid, part-solid (ground glass around a solid core) and
ground-glass. Everything is deterministic from a ``numpy.random.Generator``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from models.volume import AIR_HU, FloatArray, Volume, axis_aligned_affine

#: Lung parenchyma is below this; the body (and vessels) above it.
LUNG_THRESHOLD_HU = -400.0
#: The phantoms' voxel size, in training and in evaluation alike.
PHANTOM_SPACING_MM = 1.5


class Density(enum.StrEnum):
    SOLID = "solid"
    PART_SOLID = "part_solid"
    GROUND_GLASS = "ground_glass"


class Outline(enum.StrEnum):
    SMOOTH = "smooth"
    LOBULATED = "lobulated"
    SPICULATED = "spiculated"


class Position(enum.StrEnum):
    ISOLATED = "isolated"
    JUXTA_VASCULAR = "juxta_vascular"
    JUXTA_PLEURAL = "juxta_pleural"


#: Chances of each Position (in its order) for a random nodule, evaluation and training alike.
POSITION_WEIGHTS = (0.5, 0.25, 0.25)


@dataclass(frozen=True)
class Nodule:
    """One synthetic nodule: LUNA16's row (centre in patient LPS mm, diameter) plus its look."""

    centre: tuple[float, float, float]
    diameter_mm: float
    density: Density = Density.SOLID
    outline: Outline = Outline.SMOOTH
    position: Position = Position.ISOLATED
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1.0 <= self.diameter_mm <= 60.0:
            raise ValueError(f"nodule diameter {self.diameter_mm} mm is outside 1..60 mm")


@dataclass(frozen=True)
class NoduleTruth:
    """What the generator knows of an inserted nodule: its true mask on the volume's grid.

    ``mask`` is the voxel box starting at ``offset`` (``[z, y, x]`` of its first voxel) where
    the rendered nodule covers more than half of a voxel (partial-volume weight > 0.5) and
    the voxel was lung parenchyma before (below LUNG_THRESHOLD_HU): the part of the nodule an
    outline can see. Where it overlaps the chest wall or a vessel it is invisible and left out.
    """

    nodule: Nodule
    mask: npt.NDArray[np.bool_]
    offset: tuple[int, int, int]


def insert_nodule(volume: Volume, nodule: Nodule) -> NoduleTruth | None:
    """Render ``nodule`` into ``volume.array`` in place (it only ever brightens a voxel).

    Returns its true mask, or None when the nodule lies wholly outside the volume.
    """
    rng = np.random.default_rng(nodule.seed)
    radius = nodule.diameter_mm / 2
    reach = radius * (2.2 if nodule.outline is Outline.SPICULATED else 1.4) + 2 * max(
        volume.spacing
    )
    centre = volume.to_voxel(nodule.centre)
    # Voxel box around the centre: reach in mm converted per axis (z, y, x spacing).
    spacing_zyx = np.array(volume.spacing[::-1])
    low = np.maximum(np.floor(centre - reach / spacing_zyx).astype(int), 0)
    high = np.minimum(np.ceil(centre + reach / spacing_zyx).astype(int) + 1, volume.array.shape)
    if np.any(high <= low):
        return None
    grid = _voxel_grid(low, high)
    offset_mm = volume.to_world(grid) - np.asarray(nodule.centre)  # (z, y, x, 3) LPS mm
    distance = np.linalg.norm(offset_mm, axis=-1)
    direction = offset_mm / np.maximum(distance, 1e-6)[..., None]

    outline = np.full(distance.shape, radius)
    if nodule.outline is not Outline.SMOOTH:
        # Lobulation: a few low-order angular harmonics about random axes.
        for _ in range(3):
            axis = _unit(rng)
            order = rng.integers(2, 5)
            amplitude = rng.uniform(0.05, 0.14)
            angle = np.arccos(np.clip(direction @ axis, -1, 1))
            outline = outline * (1 + amplitude * np.cos(order * angle + rng.uniform(0, np.pi)))
    edge = 0.5 * float(np.mean(volume.spacing))
    alpha = _sigmoid((outline - distance) / edge)
    if nodule.outline is Outline.SPICULATED:
        for _ in range(int(rng.integers(6, 13))):
            axis = _unit(rng)
            length = radius * rng.uniform(1.4, 2.1)
            along = offset_mm @ axis
            across = np.linalg.norm(offset_mm - along[..., None] * axis, axis=-1)
            width = rng.uniform(0.5, 1.0) * np.clip(1 - along / length, 0, 1)
            spike = _sigmoid((width - across) / edge) * (along > 0) * (along < length)
            alpha = np.maximum(alpha, spike)

    hu = _density_profile(nodule, distance / max(radius, 1e-6), rng)
    texture = rng.normal(0.0, 12.0, size=distance.shape)
    region = volume.array[tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))]
    blended = region + alpha * (hu + texture - region)
    visible = (alpha > 0.5) & (region < LUNG_THRESHOLD_HU)
    region[...] = np.maximum(region, blended).astype(np.float32)
    return NoduleTruth(nodule, visible, (int(low[0]), int(low[1]), int(low[2])))


def _density_profile(
    nodule: Nodule, relative_radius: npt.NDArray[np.float64], rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """HU inside the nodule as a function of distance / radius: smooth, densest at the centre."""
    solid = rng.uniform(-40.0, 80.0)
    glass = rng.uniform(-700.0, -350.0)
    if nodule.density is Density.SOLID:
        return solid - 60.0 * np.clip(relative_radius, 0, 1) ** 2
    if nodule.density is Density.GROUND_GLASS:
        return np.full(relative_radius.shape, glass) + 40.0 * (1 - relative_radius.clip(0, 1))
    core = rng.uniform(0.3, 0.6)
    weight = _sigmoid((core - relative_radius) / 0.08)
    return glass + weight * (solid - glass)


def _voxel_grid(low: npt.NDArray[np.int_], high: npt.NDArray[np.int_]) -> npt.NDArray[np.float64]:
    """Voxel indices ``(z, y, x)`` of the box ``[low, high)``, shape ``(dz, dy, dx, 3)``."""
    axes = (np.arange(lo, hi) for lo, hi in zip(low, high, strict=True))
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float64)


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def _unit(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


# --- Where nodules may go ---------------------------------------------------------------


def lung_mask(volume: Volume) -> npt.NDArray[np.bool_]:
    """The lungs: low-density regions that do not touch the in-plane border (outside air).

    The top and bottom slices are not border: the trachea leaves the scan through the top.

    The two largest such components are kept, then closed so vessels inside count as lung.
    """
    low = volume.array < LUNG_THRESHOLD_HU
    labels, count = ndimage.label(low)
    if count == 0:
        return np.zeros(volume.array.shape, dtype=bool)
    border = np.unique(
        np.concatenate(
            [
                labels[:, 0].ravel(),
                labels[:, -1].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    sizes = ndimage.sum(low, labels, index=np.arange(1, count + 1))
    sizes[border[border > 0] - 1] = 0
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] > 0.002 * low.size]
    mask = np.isin(labels, keep)
    mask = ndimage.binary_closing(mask, structure=np.ones((3, 5, 5)), iterations=2)
    filled: npt.NDArray[np.bool_] = ndimage.binary_fill_holes(mask)
    return filled


@dataclass(frozen=True)
class Background:
    """A scan to insert nodules into, with the maps that choose where they go (all ``[z,y,x]``)."""

    volume: Volume
    lung: npt.NDArray[np.bool_]
    #: mm from each lung voxel to the nearest non-lung voxel (pleura, mediastinum).
    wall_distance: npt.NDArray[np.float32]
    #: mm from each lung voxel to the nearest vessel (dense voxel inside the lung).
    vessel_distance: npt.NDArray[np.float32]

    @classmethod
    def of(cls, volume: Volume) -> Background:
        lung = lung_mask(volume)
        sampling = volume.spacing[::-1]
        wall = ndimage.distance_transform_edt(lung, sampling=sampling).astype(np.float32)
        vessels = lung & (volume.array > -500) & (wall > 3.0)
        if vessels.any():
            vessel = ndimage.distance_transform_edt(~vessels, sampling=sampling)
        else:
            vessel = np.full(lung.shape, 1e3)
        return cls(volume, lung, wall, vessel.astype(np.float32))

    def sample_centre(
        self,
        diameter_mm: float,
        position: Position,
        rng: np.random.Generator,
        within: tuple[slice, slice, slice] | None = None,
    ) -> tuple[float, float, float] | None:
        """An LPS point for a nodule of this size and position, or None where none fits."""
        radius = diameter_mm / 2
        region = within or (slice(None), slice(None), slice(None))
        wall, vessel = self.wall_distance[region], self.vessel_distance[region]
        if position is Position.JUXTA_PLEURAL:
            ok = (wall >= 0.6 * radius) & (wall <= radius + 1.0)
        elif position is Position.JUXTA_VASCULAR:
            ok = (wall > radius + 2.0) & (vessel >= 0.5 * radius) & (vessel <= radius + 1.0)
        else:
            ok = (wall > radius + 3.0) & (vessel > radius + 1.0)
        candidates = np.flatnonzero(ok)
        if candidates.size == 0:
            return None
        corner = [s.indices(n)[0] for s, n in zip(region, self.lung.shape, strict=True)]
        index = np.asarray(np.unravel_index(rng.choice(candidates), ok.shape)) + corner
        jitter = rng.uniform(-0.5, 0.5, size=3)
        world = self.volume.to_world(index.astype(np.float64) + jitter)
        return (float(world[0]), float(world[1]), float(world[2]))


def random_nodule(
    background: Background,
    rng: np.random.Generator,
    within: tuple[slice, slice, slice] | None = None,
    diameter_range: tuple[float, float] = (3.0, 30.0),
    position_weights: tuple[float, float, float] = POSITION_WEIGHTS,
) -> Nodule | None:
    """A nodule of random size, density, outline and position that fits in the lungs.

    ``position_weights``: the chances of isolated, juxta-vascular and juxta-pleural (an
    attached nodule that does not fit where it was asked for falls back to isolated).
    """
    # Small nodules are the common ones: log-uniform diameter.
    diameter = float(np.exp(rng.uniform(*np.log(diameter_range))))
    position = Position(rng.choice([p.value for p in Position], p=list(position_weights)))
    centre = background.sample_centre(diameter, position, rng, within)
    if centre is None and position is not Position.ISOLATED:
        position = Position.ISOLATED
        centre = background.sample_centre(diameter, position, rng, within)
    if centre is None:
        return None
    density = Density(rng.choice([d.value for d in Density], p=[0.6, 0.2, 0.2]))
    outline = Outline(rng.choice([o.value for o in Outline], p=[0.4, 0.35, 0.25]))
    return Nodule(centre, diameter, density, outline, position, int(rng.integers(2**31)))


# --- Procedural chest phantoms -------------------------------------------------------------


def chest_phantom(
    rng: np.random.Generator,
    shape_zyx: tuple[int, int, int] = (160, 192, 224),
    spacing_mm: float = PHANTOM_SPACING_MM,
) -> Volume:
    """A chest: body, fat, two lungs with branching vessels, spine and ribs, and CT noise."""
    nz, ny, nx = shape_zyx
    z, y, x = np.meshgrid(
        np.arange(nz, dtype=np.float32) * spacing_mm,
        (np.arange(ny, dtype=np.float32) - ny / 2) * spacing_mm,
        (np.arange(nx, dtype=np.float32) - nx / 2) * spacing_mm,
        indexing="ij",
    )
    array = np.full(shape_zyx, AIR_HU, dtype=np.float32)
    half_width = nx * spacing_mm * rng.uniform(0.40, 0.46)
    half_depth = ny * spacing_mm * rng.uniform(0.34, 0.42)
    body = (x / half_width) ** 2 + (y / half_depth) ** 2
    array[body < 1] = rng.uniform(-110, -80)  # subcutaneous fat
    inner = body < rng.uniform(0.78, 0.86)
    array[inner] = rng.uniform(30, 55)  # muscle, mediastinum
    height = nz * spacing_mm
    lungs = np.zeros(shape_zyx, dtype=bool)
    for side in (-1, 1):
        cx = side * half_width * rng.uniform(0.42, 0.50)
        rx = half_width * rng.uniform(0.32, 0.38)
        ry = half_depth * rng.uniform(0.62, 0.72)
        top, bottom = height * rng.uniform(0.02, 0.08), height * rng.uniform(0.92, 0.98)
        zc = (z - top) / (bottom - top)
        # Wider at the base than the apex.
        taper = np.clip(np.sqrt(np.clip(zc, 0, 1)) * 1.1, 0.25, 1.0)
        lung = ((x - cx) / (rx * taper)) ** 2 + ((y + 0.1 * half_depth) / (ry * taper)) ** 2
        lungs |= (lung < 1) & (zc > 0) & (zc < 1)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape_zyx).astype(np.float32), 3) * 150
    array[lungs] = rng.uniform(-880, -820) + texture[lungs]
    _vessel_trees(array, lungs, rng, spacing_mm)
    spine = ((x / 18) ** 2 + ((y - half_depth * 0.72) / 16) ** 2) < 1
    array[spine] = rng.uniform(350, 650)
    for rib_z in np.arange(rng.uniform(5, 20), height, rng.uniform(22, 28)):
        shell = np.abs(np.sqrt(body) - 0.9) < 0.025
        array[shell & (np.abs(z - rib_z) < 5)] = rng.uniform(300, 600)
    array = ndimage.gaussian_filter(array, 0.6)
    array += rng.normal(0, rng.uniform(10, 30), shape_zyx).astype(np.float32)
    affine = axis_aligned_affine(
        (spacing_mm, spacing_mm, spacing_mm), (-nx / 2 * spacing_mm, -ny / 2 * spacing_mm, -400.0)
    )
    return Volume(array.astype(np.float32), affine)


def _vessel_trees(
    array: FloatArray, lungs: npt.NDArray[np.bool_], rng: np.random.Generator, spacing: float
) -> None:
    """Branching vessels from each hilum, tapering, drawn as capsules inside the lungs."""
    points = np.argwhere(lungs)
    if points.size == 0:
        return
    centre = points.mean(axis=0)
    for side in (-1, 1):
        half = points[(points[:, 2] - centre[2]) * side > 0]
        if half.size == 0:
            continue
        hilum = half.mean(axis=0)
        hilum[2] = centre[2] + 0.6 * (hilum[2] - centre[2])  # hila sit medially
        extent = np.ptp(half[:, 0])
        for level in (-0.3, -0.1, 0.1, 0.3):
            root = hilum + np.array([level * extent, 0.0, 0.0])
            stack = [(root, _unit(rng), 4.5 / spacing, 0)]
            while stack:
                start, direction, radius, depth = stack.pop()
                length = rng.uniform(10, 25) / spacing
                end = start + direction * length
                _capsule(array, lungs, start, end, radius, rng.uniform(20, 60))
                if depth < 6 and radius > 0.4:
                    for _ in range(2):
                        turn = direction + rng.normal(0, 0.7, 3)
                        stack.append((end, turn / np.linalg.norm(turn), radius * 0.75, depth + 1))


def _capsule(
    array: FloatArray,
    lungs: npt.NDArray[np.bool_],
    start: npt.NDArray[np.float64],
    end: npt.NDArray[np.float64],
    radius: float,
    hu: float,
) -> None:
    low = np.maximum(np.floor(np.minimum(start, end) - radius - 2).astype(int), 0)
    high = np.minimum(np.ceil(np.maximum(start, end) + radius + 3).astype(int), array.shape)
    if np.any(high <= low):
        return
    grid = _voxel_grid(low, high)
    segment = end - start
    t = np.clip(((grid - start) @ segment) / max(float(segment @ segment), 1e-9), 0, 1)
    distance = np.linalg.norm(grid - (start + t[..., None] * segment), axis=-1)
    alpha = _sigmoid((radius - distance) / 0.5)
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
    inside = lungs[box]
    region = array[box]
    region[inside] = np.maximum(region, region + alpha * (hu - region))[inside]
