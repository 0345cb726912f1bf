"""From a detected spot to a characterised nodule: outline, type, axes, volume.

:func:`characterise` is the one entry point the pipeline calls per finding; Lung-RADS and the
comparison with a prior scan consume its :class:`NoduleCharacter`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.nodule_type import TYPES, TypeClassifier
from models.outline import axes, outline, volume_mm3
from models.type_features import features, smoothed, solid_component
from models.volume import Volume

__all__ = ["TYPES", "NoduleCharacter", "characterise"]


@dataclass(frozen=True)
class NoduleCharacter:
    """What a screening report says of one nodule.

    Attributes
    ----------
    type : str
        ``"solid"``, ``"part-solid"`` or ``"ground-glass"``.
    type_probability : float
        The classifier's probability of ``type`` (0..1).
    long_axis_mm, short_axis_mm : float
        Largest in-plane diameter on the axial slice where it is greatest, and the longest
        chord perpendicular to it on that slice.
    mean_diameter_mm : float
        ``(long + short) / 2``, the Lung-RADS size.
    volume_mm3 : float
        Voxel count of the outline times the voxel volume.
    solid_diameter_mm : float or None
        Mean diameter (long + short axis of its own greatest slice, halved) of the solid
        component (voxels above -300 HU); None for a ground-glass nodule.
    mask : numpy.ndarray
        The outline, a boolean box of the volume starting at voxel ``offset`` (``[z, y, x]``).
    offset : tuple[int, int, int]
    outlined : bool
        False when no outline was found and the measurements are of the detector's sphere.
    """

    type: str
    type_probability: float
    long_axis_mm: float
    short_axis_mm: float
    mean_diameter_mm: float
    volume_mm3: float
    solid_diameter_mm: float | None
    mask: npt.NDArray[np.bool_]
    offset: tuple[int, int, int]
    outlined: bool = True


def characterise(
    volume: Volume,
    centre: tuple[float, float, float],
    diameter_mm: float,
    classifier: TypeClassifier,
) -> NoduleCharacter:
    """Outline, measure and type the nodule a detector found at ``centre`` (LPS mm).

    Parameters
    ----------
    volume : models.volume.Volume
        The analysed HU volume, at its acquired spacing (axial slices).
    centre : tuple[float, float, float]
        The detection's centre, patient LPS mm.
    diameter_mm : float
        The detector's diameter: sizes the crop and the fallback sphere.
    classifier : models.nodule_type.TypeClassifier
        Usually ``TypeClassifier.load()``.

    Returns
    -------
    NoduleCharacter
    """
    found = outline(volume, centre, diameter_mm)
    spacing = volume.spacing
    measured = axes(found.mask, spacing)
    probabilities = classifier.probabilities(features(found, spacing))[0]
    best = int(np.argmax(probabilities))
    kind = TYPES[best]
    solid_mm: float | None = None
    if kind != "ground-glass":
        solid = solid_component(found, smoothed(found))
        solid_mm = round(axes(solid, spacing).mean_mm, 2) if solid.any() else 0.0
        if kind == "solid":
            solid_mm = round(measured.mean_mm, 2)
    return NoduleCharacter(
        type=kind,
        type_probability=round(float(probabilities[best]), 4),
        long_axis_mm=round(measured.long_mm, 2),
        short_axis_mm=round(measured.short_mm, 2),
        mean_diameter_mm=round(measured.mean_mm, 2),
        volume_mm3=round(volume_mm3(found.mask, spacing), 1),
        solid_diameter_mm=solid_mm,
        mask=found.mask,
        offset=found.offset,
        outlined=not found.fallback,
    )
