"""LUNA16 FROC/CPM against a small example computed by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from models.froc import FP_RATES, Scan, Scored, Sphere, froc, report_threshold


def test_froc_matches_a_hand_computed_example() -> None:
    # Scan 1: two nodules. Detections: a hit on nodule A (0.9) and a weaker second hit on A
    # (0.5, neither TP nor FP), a FP (0.8), one inside an excluded region (0.95, ignored).
    # Scan 2: one nodule C, hit at 0.3; FPs at 0.7 and 0.2. Nodule B is never hit.
    a, b, c = Sphere((0, 0, 0), 10), Sphere((50, 0, 0), 6), Sphere((0, 0, 0), 8)
    scans = [
        Scan(
            [a, b],
            [Sphere((100, 100, 100), 10)],
            [
                Scored((1, 1, 1), 0.9),
                Scored((-3, 0, 0), 0.5),
                Scored((20, 0, 0), 0.8),
                Scored((102, 100, 100), 0.95),
            ],
        ),
        Scan([c], [], [Scored((0, 3.9, 0), 0.3), Scored((30, 0, 0), 0.7), Scored((9, 9, 9), 0.2)]),
    ]
    result = froc(scans)
    # Thresholds, descending: 0.9 -> 1 TP, 0 FP; 0.8 -> 1 FP; 0.7 -> 2 FP; 0.3 -> 2 TP, still
    # 2 FP; 0.2 -> 3 FP. So (FP/scan, sensitivity): (0, 1/3), (0.5, 1/3), (1, 2/3), (1.5, 2/3).
    assert result.nodules == 3 and result.scans == 2 and result.detected == 2
    assert result.fps_per_scan == [0.0, 0.5, 1.0, 1.5]
    assert result.sensitivity == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    expected = {
        0.125: 1 / 3,
        0.25: 1 / 3,
        0.5: 1 / 3,
        1.0: 2 / 3,
        2.0: 2 / 3,
        4.0: 2 / 3,
        8.0: 2 / 3,
    }
    assert result.at_rates == pytest.approx(expected)
    assert result.cpm == pytest.approx(sum(expected.values()) / len(FP_RATES))
    # Operating points: at most 1 FP/scan allows scores down to 0.3 (FPs 0.8 and 0.7: 1/scan).
    assert result.threshold_at_rates[1.0] == 0.3
    assert result.threshold_at_rates[0.125] == 0.9


def test_interpolates_between_curve_points() -> None:
    # One nodule hit at 0.5, two FPs above it: at 1 FP/scan sensitivity 0, at 2 it is 1;
    # halfway (1.5) interpolates linearly, like LUNA16's script.
    scans = [
        Scan(
            [Sphere((0, 0, 0), 10)],
            [],
            [Scored((50, 0, 0), 0.9), Scored((60, 0, 0), 0.8), Scored((0, 0, 0), 0.5)],
        )
    ]
    result = froc(scans)
    assert result.fps_per_scan == [0.0, 1.0, 2.0]
    assert result.sensitivity == [0.0, 0.0, 1.0]
    assert result.at_rates[1.0] == 0.0 and result.at_rates[2.0] == 1.0


def test_no_detections_means_zero_sensitivity() -> None:
    result = froc([Scan([Sphere((0, 0, 0), 10)], [], [])])
    assert result.cpm == 0.0 and result.detected == 0


@pytest.mark.parametrize(
    ("lowest", "chosen"),
    # The lowest score for <= 1 FP/scan, rounded up to a multiple of 0.05 (the demo model's
    # earlier operating points: 0.530 -> 0.55, 0.365 -> 0.40); a score on the grid stays.
    [(0.5303547382354736, 0.55), (0.36532866954803467, 0.40), (0.3, 0.3), (0.951, 1.0)],
)
def test_report_threshold_rounds_the_one_fp_per_scan_score_up(lowest: float, chosen: float) -> None:
    result = froc([Scan([Sphere((0, 0, 0), 10)], [], [Scored((0, 0, 0), 0.5)])])
    at_one = replace(result, threshold_at_rates={**result.threshold_at_rates, 1.0: lowest})
    assert report_threshold(at_one) == chosen
