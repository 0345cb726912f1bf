"""The size-based Lung-RADS v2022 suggestion: the baseline solid thresholds, at their edges."""

from __future__ import annotations

import pytest

from pacs.lung_rads import (
    CATEGORIES,
    Nodule,
    is_valid_category,
    reported_diameter,
    solid_baseline_category,
    suggest,
)


@pytest.mark.parametrize(
    ("diameter", "category"),
    [
        (0.5, "2"),
        (5.9, "2"),
        (5.94, "2"),  # reported as 5.9 mm
        (5.95, "3"),  # reported as 6.0 mm: the rounded mean diameter decides
        (6.0, "3"),
        (7.9, "3"),
        (8.0, "4A"),
        (14.9, "4A"),
        (14.96, "4B"),
        (15.0, "4B"),
        (23.4, "4B"),
    ],
)
def test_solid_baseline_thresholds(diameter: float, category: str) -> None:
    assert solid_baseline_category(diameter) == category


def test_reported_diameter_rounds_half_up_to_a_tenth() -> None:
    assert reported_diameter(5.95) == 6.0
    assert reported_diameter(5.949) == 5.9
    assert reported_diameter(12.25) == 12.3


def test_the_largest_nodule_decides_and_the_caveat_says_solid_is_assumed() -> None:
    small, large = Nodule("1.2.3", 4.0), Nodule("1.2.4", 9.2)
    suggestion = suggest([small, large])
    assert suggestion.category == "4A"
    assert suggestion.driving_nodule == large
    assert "9.2 mm" in suggestion.rule and ">= 8 to < 15 mm" in suggestion.rule
    assert "solid" in suggestion.caveat and "not known" in suggestion.caveat


def test_no_nodule_is_category_1() -> None:
    suggestion = suggest([])
    assert (suggestion.category, suggestion.driving_nodule) == ("1", None)


def test_valid_categories() -> None:
    assert all(is_valid_category(c) for c in CATEGORIES)
    assert all(is_valid_category(c + "S") for c in CATEGORIES)
    for bad in ("", "4", "4C", "5", "2s", " 2", "2 ", "4AX", "S", "2SS", "4A\n"):
        assert not is_valid_category(bad), bad
