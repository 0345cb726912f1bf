"""Compare a study's nodules with the patient's earlier CT: register, match, measure change.

Patients lie differently from one scan to the next, so patient coordinates alone do not say
where a prior nodule lies today. The prior CT is registered rigidly onto the current one on
the lungs (SimpleITK: both volumes smoothed and resampled to a coarse isotropic grid, Mattes
mutual information over a dilated lung mask, an Euler transform initialised on the lungs'
centres of mass, two resolution levels), each prior nodule centre is mapped through the
transform, and nodules are paired by distance and size (Hungarian assignment,
``scipy.optimize.linear_sum_assignment``) within a gate. Per current nodule: new, stable,
grown or shrunk (Lung-RADS growth: the reported mean diameter changed by more than 1.5 mm,
``pacs.lung_rads.change_of``), the change in mean diameter and volume, and the volume doubling
time for a grown nodule (Schwartz: ``VDT = t ln 2 / ln(V2 / V1)``, t in days between the
StudyDates).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk  # noqa: N813 - the name its documentation uses
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from models.synthetic import LUNG_THRESHOLD_HU
from models.volume import Volume
from pacs.lung_rads import Change, History, Nodule, NoduleType, change_of
from pacs.results import Finding

#: The grid both volumes are registered on (mm, isotropic): coarse enough for seconds.
REGISTRATION_SPACING_MM = 4.0
#: A prior nodule more than this (mm, after registration) from a current one is not its
#: predecessor, whatever the size; the gate grows with the larger nodule's diameter.
MATCH_GATE_MM = 10.0
#: How much a diameter difference (mm) counts against a pairing, next to distance (mm).
SIZE_WEIGHT = 0.5
NOT_COMPUTED = "not computed: the nodule did not grow"


@dataclass(frozen=True)
class Registration:
    """A rigid transform taking prior-CT patient points (LPS mm) to current-CT ones.

    Attributes
    ----------
    matrix : ndarray, shape (4, 4)
        Homogeneous: ``current = matrix @ (prior, 1)``.
    metric : float
        Final Mattes mutual information (negative; lower is better).
    seconds : float
    """

    matrix: npt.NDArray[np.float64]
    metric: float
    seconds: float

    def to_current(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Prior-CT LPS points ``(..., 3)`` where they lie on the current CT."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    @property
    def rotation_deg(self) -> float:
        """The rotation's angle in degrees."""
        cos = (np.trace(self.matrix[:3, :3]) - 1) / 2
        return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


@dataclass(frozen=True)
class NoduleChange:
    """One current nodule against the prior CT.

    Attributes
    ----------
    tracking_uid : str
        The current nodule.
    change : Change
        New (no predecessor), stable, grown or shrunk.
    prior_tracking_uid : str or None
    distance_mm : float or None
        From the predecessor's mapped centre.
    diameter_change_mm, volume_change_mm3 : float or None
        Current minus prior.
    doubling_time_days : float or None
        Volume doubling time, for a grown nodule with both study dates (else None, see
        ``doubling_time_note``).
    """

    tracking_uid: str
    change: Change
    prior_tracking_uid: str | None = None
    distance_mm: float | None = None
    diameter_change_mm: float | None = None
    volume_change_mm3: float | None = None
    doubling_time_days: float | None = None
    doubling_time_note: str | None = None


@dataclass(frozen=True)
class Comparison:
    """The current study against one prior study."""

    prior_study: str
    interval_days: int | None
    registration: Registration
    changes: list[NoduleChange]
    #: Prior nodules with no successor (resolved, or missed today).
    unmatched_prior: list[str]


def to_sitk(volume: Volume) -> sitk.Image:
    """The volume as a SimpleITK image in the same patient (LPS) geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=np.float32))
    spacing = np.asarray(volume.spacing)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in volume.affine[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (volume.affine[:3, :3] / spacing).ravel()))
    return image


def _coarse(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    smoothed = sitk.SmoothingRecursiveGaussian(image, spacing_mm / 2)
    size = [
        max(1, round(n * s / spacing_mm))
        for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)
    ]
    return sitk.Resample(
        smoothed,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        (spacing_mm,) * 3,
        image.GetDirection(),
        -1000.0,
        sitk.sitkFloat32,
    )


def lungs(volume: Volume) -> npt.NDArray[np.bool_]:
    """The lungs, for registration: low-density regions that touch no in-plane border on
    their own axial slice (outside air does, even where a moved scan leaves air-filled
    slices above or below the patient), the larger 3-D components kept."""
    low = volume.array < LUNG_THRESHOLD_HU
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = True
    labels, count = ndimage.label(low, structure=in_plane)
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
    inside = low & ~np.isin(labels, border[border > 0])
    parts, count = ndimage.label(inside)
    if count == 0:
        return inside
    sizes = ndimage.sum(inside, parts, index=np.arange(1, count + 1))
    keep = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
    return np.isin(parts, keep)


def _mask(image: sitk.Image, dilate_mm: float) -> sitk.Image:
    affine = np.eye(4)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    found = lungs(Volume(sitk.GetArrayFromImage(image).astype(np.float32), affine))
    steps = max(1, round(dilate_mm / image.GetSpacing()[0]))
    mask = sitk.GetImageFromArray(ndimage.binary_dilation(found, iterations=steps).astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def register(
    current: Volume, prior: Volume, *, spacing_mm: float = REGISTRATION_SPACING_MM, seed: int = 7
) -> Registration:
    """Rigidly register *prior* onto *current* on the lungs.

    Parameters
    ----------
    current, prior : Volume
        HU volumes in their own patient coordinates.
    spacing_mm : float
        The isotropic grid the registration runs on.
    seed : int
        For the metric's random sampling: the same inputs give the same transform.
    """
    start = time.perf_counter()
    fixed = _coarse(to_sitk(current), spacing_mm)
    moving = _coarse(to_sitk(prior), spacing_mm)
    fixed_mask, moving_mask = _mask(fixed, 8.0), _mask(moving, 8.0)
    initial = sitk.CenteredTransformInitializer(
        sitk.Cast(fixed_mask, sitk.sitkFloat32),
        sitk.Cast(moving_mask, sitk.sitkFloat32),
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricFixedMask(fixed_mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=150, relaxationFactor=0.6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    found = method.Execute(fixed, moving)
    # ``found`` maps current (fixed) points to prior (moving) ones; we want the inverse.
    forward = _affine_of(
        found,
        np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([n / 2 for n in fixed.GetSize()])),
    )
    return Registration(
        np.linalg.inv(forward).astype(np.float64),
        float(method.GetMetricValue()),
        time.perf_counter() - start,
    )


def _affine_of(transform: sitk.Transform, near: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The 4x4 matrix of a (rigid) transform, read from where it sends four points."""
    points = [near + offset for offset in (np.zeros(3), *np.eye(3) * 100.0)]
    moved = [np.asarray(transform.TransformPoint(tuple(float(v) for v in p))) for p in points]
    matrix = np.eye(4)
    matrix[:3, :3] = np.stack([(m - moved[0]) / 100.0 for m in moved[1:]], axis=1)
    matrix[:3, 3] = moved[0] - matrix[:3, :3] @ points[0]
    return matrix


def sphere_volume(diameter_mm: float) -> float:
    """The volume (mm3) of a sphere of this diameter: the fallback where none was measured."""
    return math.pi / 6 * diameter_mm**3


def volume_of(nodule: Nodule) -> float:
    return nodule.volume_mm3 if nodule.volume_mm3 is not None else sphere_volume(nodule.diameter_mm)


def doubling_time(prior_mm3: float, current_mm3: float, days: int) -> float | None:
    """Volume doubling time in days (None: the volume did not increase)."""
    if current_mm3 <= prior_mm3 or days <= 0:
        return None
    return days * math.log(2) / math.log(current_mm3 / prior_mm3)


def match(
    current: Sequence[Nodule], prior: Sequence[Nodule], registration: Registration
) -> list[tuple[int, int]]:
    """Pairs (current index, prior index) of predecessors: the assignment that minimises
    distance plus ``SIZE_WEIGHT`` times the diameter difference, within the gate."""
    if not current or not prior:
        return []
    here = np.array([n.centre for n in current], dtype=np.float64)
    there = registration.to_current(np.array([n.centre for n in prior], dtype=np.float64))
    distance = np.linalg.norm(here[:, None, :] - there[None, :, :], axis=-1)
    sizes_now = np.array([n.diameter_mm for n in current])
    sizes_then = np.array([n.diameter_mm for n in prior])
    size_gap = np.abs(sizes_now[:, None] - sizes_then[None, :])
    gate = np.maximum(MATCH_GATE_MM, np.maximum(sizes_now[:, None], sizes_then[None, :]))
    cost = distance + SIZE_WEIGHT * size_gap
    cost[distance > gate] = 1e6
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < 1e6]


def compare(
    current: Sequence[Nodule],
    interval: int | None,
    prior: Sequence[Nodule],
    registration: Registration,
    prior_study: str = "",
) -> Comparison:
    """Each current nodule against its predecessor on the prior CT (every nodule needs a
    ``centre``); *interval*: days between the StudyDates (None: unknown)."""
    pairs = dict(match(current, prior, registration))
    mapped = registration.to_current(np.array([n.centre for n in prior])) if prior else None
    changes = []
    for i, nodule in enumerate(current):
        j = pairs.get(i)
        if j is None:
            changes.append(NoduleChange(nodule.tracking_uid, Change.NEW))
            continue
        before = prior[j]
        assert mapped is not None and nodule.centre is not None
        change = change_of(before.diameter_mm, nodule.diameter_mm)
        v_then, v_now = volume_of(before), volume_of(nodule)
        vdt = None
        if change != Change.GROWN:
            note: str | None = NOT_COMPUTED
        elif interval is None:
            note = "not computed: a study date is missing"
        else:
            vdt = doubling_time(v_then, v_now, interval)
            note = None if vdt is not None else "not computed: the volume did not increase"
        changes.append(
            NoduleChange(
                nodule.tracking_uid,
                change,
                before.tracking_uid,
                float(np.linalg.norm(np.asarray(nodule.centre) - mapped[j])),
                nodule.diameter_mm - before.diameter_mm,
                v_now - v_then,
                vdt,
                note,
            )
        )
    matched = set(pairs.values())
    unmatched = [n.tracking_uid for j, n in enumerate(prior) if j not in matched]
    return Comparison(prior_study, interval, registration, changes, unmatched)


def with_history(
    current: Sequence[Nodule], prior: Sequence[Nodule], comparison: Comparison
) -> list[Nodule]:
    """The current nodules with their predecessors attached, for ``pacs.lung_rads.suggest``
    (with ``compared=True``: a nodule left without history is new)."""
    by_uid = {n.tracking_uid: n for n in prior}
    out = []
    for nodule, change in zip(current, comparison.changes, strict=True):
        before = by_uid.get(change.prior_tracking_uid or "")
        if before is None:
            out.append(replace(nodule, history=None))
            continue
        history = History(
            before.diameter_mm, before.solid_diameter_mm, before.type, comparison.interval_days
        )
        out.append(replace(nodule, history=history))
    return out


def nodules_of(findings: Sequence[Finding]) -> list[Nodule]:
    """Stored findings as the comparison's input: centre, mean diameter (measured on the
    outline when there is one) and, for a characterised finding, type, solid part and volume."""
    return [
        Nodule(
            f.tracking_uid,
            f.reported_diameter_mm,
            type=None if f.character is None else NoduleType(f.character.type),
            type_probability=None if f.character is None else f.character.type_probability,
            solid_diameter_mm=None if f.character is None else f.character.solid_diameter_mm,
            volume_mm3=None if f.character is None else f.character.volume_mm3,
            centre=(f.x, f.y, f.z),
        )
        for f in findings
    ]


def annotate(
    findings: Sequence[Finding], prior: Sequence[Finding], comparison: Comparison
) -> list[Finding]:
    """The findings with their change against the prior study, as the index stores them."""
    diameters = {f.tracking_uid: f.reported_diameter_mm for f in prior}
    by_uid = {c.tracking_uid: c for c in comparison.changes}
    out = []
    for f in findings:
        c = by_uid[f.tracking_uid]
        out.append(
            replace(
                f,
                change=c.change.value,
                prior_tracking_uid=c.prior_tracking_uid,
                prior_diameter_mm=diameters.get(c.prior_tracking_uid or ""),
                volume_change_mm3=c.volume_change_mm3,
                doubling_time_days=c.doubling_time_days,
            )
        )
    return out
