"""LUNA16's FROC and CPM.

A detection is a hit when its centre lies within an annotated nodule's radius; each nodule
counts once, at the best score of the detections that hit it, and further hits on it are
neither true nor false positives. Detections inside an excluded region (``annotations_excluded``)
are ignored. Every other detection is a false positive. Sensitivity is read off the curve
(linear interpolation, as LUNA16's script does) at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives
per scan; the CPM is their mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: The demo model's rule for its report threshold (ModelSpec.report_threshold): the lowest
#: score that keeps false positives at or below this rate, rounded up to a multiple of the step.
REPORT_FP_RATE = 1.0
REPORT_THRESHOLD_STEP = 0.05


@dataclass(frozen=True)
class Sphere:
    centre: tuple[float, float, float]
    diameter_mm: float


@dataclass(frozen=True)
class Scored:
    centre: tuple[float, float, float]
    score: float


@dataclass(frozen=True)
class Scan:
    """One scan's truth (nodules and excluded regions) and the detector's output."""

    nodules: list[Sphere]
    excluded: list[Sphere]
    detections: list[Scored]


@dataclass(frozen=True)
class Froc:
    fps_per_scan: list[float]
    sensitivity: list[float]
    #: Sensitivity at each of FP_RATES.
    at_rates: dict[float, float]
    cpm: float
    nodules: int
    scans: int
    #: Nodules hit at any score (the curve's ceiling).
    detected: int
    #: The lowest score threshold that keeps false positives at or below each of FP_RATES
    #: (an operating point for ModelSpec.report_threshold).
    threshold_at_rates: dict[float, float]


def inside(point: tuple[float, float, float], sphere: Sphere) -> bool:
    """LUNA16's hit rule: *point* lies within *sphere*'s radius."""
    distance = float(np.linalg.norm(np.subtract(point, sphere.centre)))
    return distance <= sphere.diameter_mm / 2


def froc(scans: list[Scan]) -> Froc:
    """FROC curve and CPM over ``scans``."""
    nodule_scores: list[float] = []  # best hit score per nodule, -inf when missed
    false_positives: list[float] = []
    for scan in scans:
        best = [-np.inf] * len(scan.nodules)
        for detection in scan.detections:
            hits = [i for i, n in enumerate(scan.nodules) if inside(detection.centre, n)]
            for i in hits:
                best[i] = max(best[i], detection.score)
            if hits or any(inside(detection.centre, e) for e in scan.excluded):
                continue
            false_positives.append(detection.score)
        nodule_scores.extend(best)
    total = len(nodule_scores)
    n_scans = max(len(scans), 1)
    scores = np.asarray(nodule_scores, dtype=np.float64)
    fps = np.asarray(false_positives, dtype=np.float64)
    thresholds = np.unique(np.concatenate([scores[np.isfinite(scores)], fps]))[::-1]
    curve_fps = [0.0]
    curve_sens = [0.0]
    for threshold in thresholds:
        curve_fps.append(float(np.sum(fps >= threshold)) / n_scans)
        curve_sens.append(float(np.sum(scores >= threshold)) / total if total else 0.0)
    # At equal FP rates keep the best sensitivity, so the curve is a function of the FP rate.
    xs = np.asarray(curve_fps)
    ys = np.maximum.accumulate(np.asarray(curve_sens))
    unique_x = np.unique(xs)
    unique_y = np.array([ys[xs == x].max() for x in unique_x])
    at_rates = {rate: float(np.interp(rate, unique_x, unique_y)) for rate in FP_RATES}
    threshold_at_rates = {}
    for rate in FP_RATES:
        allowed = [t for t, x in zip(thresholds, curve_fps[1:], strict=True) if x <= rate]
        threshold_at_rates[rate] = float(min(allowed)) if allowed else 1.0
    return Froc(
        fps_per_scan=[float(x) for x in unique_x],
        sensitivity=[float(y) for y in unique_y],
        at_rates=at_rates,
        cpm=float(np.mean(list(at_rates.values()))),
        nodules=total,
        scans=len(scans),
        detected=int(np.sum(np.isfinite(scores))),
        threshold_at_rates=threshold_at_rates,
    )


def report_threshold(result: Froc) -> float:
    """The report threshold ``result`` gives by the model card's rule (REPORT_FP_RATE, step).

    Choose it on a validation set, never on the held-out set whose FROC the card reports.
    """
    lowest = result.threshold_at_rates[REPORT_FP_RATE]
    steps = math.ceil(round(lowest / REPORT_THRESHOLD_STEP, 9))
    return round(min(steps * REPORT_THRESHOLD_STEP, 1.0), 2)
