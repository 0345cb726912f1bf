"""The Lung-RADS v2022 suggestion: every row of the table, the thresholds at their edges, growth
and the inputs it had to assume."""

from __future__ import annotations

import pytest

from pacs.lung_rads import (
    CATEGORIES,
    CAVEAT,
    TABLE,
    Change,
    History,
    Nodule,
    NoduleType,
    change_of,
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


# The v2022 table, row by row: every row of TABLE fires for a nodule built to meet it.

S, P, G = NoduleType.SOLID, NoduleType.PART_SOLID, NoduleType.GROUND_GLASS


def _baseline(type_: NoduleType, mean: float, solid: float | None = None) -> tuple[Nodule, bool]:
    return Nodule("1.2.9", mean, type_, 0.95, solid), False


def _new(type_: NoduleType, mean: float, solid: float | None = None) -> tuple[Nodule, bool]:
    return Nodule("1.2.9", mean, type_, 0.95, solid), True


def _was(
    type_: NoduleType,
    mean: float,
    prior: float,
    solid: float | None = None,
    prior_solid: float | None = None,
) -> tuple[Nodule, bool]:
    history = History(prior, prior_solid, type_, interval_days=365)
    return Nodule("1.2.9", mean, type_, 0.95, solid, history=history), True


ROWS = [
    ("solid-baseline-2", _baseline(S, 5.9)),
    ("solid-baseline-3", _baseline(S, 6.0)),
    ("solid-baseline-4A", _baseline(S, 8.0)),
    ("solid-baseline-4B", _baseline(S, 15.0)),
    ("solid-new-2", _new(S, 3.9)),
    ("solid-new-3", _new(S, 4.0)),
    ("solid-new-4A", _new(S, 6.0)),
    ("solid-new-4B", _new(S, 8.0)),
    ("solid-growing-4A", _was(S, 7.9, 6.3)),  # + 1.6 mm
    ("solid-growing-4B", _was(S, 8.0, 6.4)),
    ("part-solid-baseline-2", _baseline(P, 5.9, 3.0)),
    ("part-solid-baseline-3", _baseline(P, 6.0, 5.9)),
    ("part-solid-baseline-4A", _baseline(P, 12.0, 6.0)),
    ("part-solid-baseline-4B", _baseline(P, 12.0, 8.0)),
    ("part-solid-new-3", _new(P, 5.9, 4.0)),
    ("part-solid-new-4A", _new(P, 6.0, 3.9)),
    ("part-solid-new-4B", _new(P, 6.0, 4.0)),
    ("part-solid-growing-4A", _was(P, 10.0, 10.0, 3.9, 2.3)),  # the solid part grew
    ("part-solid-growing-4B", _was(P, 10.0, 10.0, 4.0, 2.4)),
    ("ground-glass-baseline-2", _baseline(G, 29.9)),
    ("ground-glass-baseline-3", _baseline(G, 30.0)),
    ("ground-glass-new-2", _new(G, 29.9)),
    ("ground-glass-new-3", _new(G, 30.0)),
    ("ground-glass-growing-2", _was(G, 29.9, 20.0)),
    ("ground-glass-growing-3", _was(G, 32.0, 30.0)),
    ("stable-2", _was(S, 5.0, 4.0)),
    ("stable-3", _was(S, 7.0, 7.5)),  # category 3 then, smaller now: 2
    ("stable-4A", _was(S, 10.0, 9.0)),  # + 1.0 mm: not growth, category 4A then: 3
    ("stable-4B", _was(S, 16.0, 16.0)),
]


def test_every_row_of_the_table_is_tested() -> None:
    assert sorted(r for r, _ in ROWS) == sorted(row.id for row in TABLE)


@pytest.mark.parametrize(("row_id", "case"), ROWS, ids=[r for r, _ in ROWS])
def test_table_row(row_id: str, case: tuple[Nodule, bool]) -> None:
    nodule, compared = case
    suggestion = suggest([nodule], compared=compared)
    (row,) = [r for r in TABLE if r.id == row_id]
    assert (suggestion.row, suggestion.category) == (row_id, row.category)
    assert suggestion.driving_nodule == nodule and suggestion.compared == compared
    assert f"category {row.category}" in suggestion.rule


def test_growth_is_more_than_1_5_mm_of_the_reported_mean_diameter() -> None:
    assert change_of(6.0, 7.5) == Change.STABLE
    assert change_of(6.0, 7.6) == Change.GROWN
    assert change_of(6.04, 7.55) == Change.GROWN  # 6.0 -> 7.6 as reported
    assert change_of(7.6, 6.0) == Change.SHRUNK
    assert change_of(7.5, 6.0) == Change.STABLE


def test_a_stable_nodule_crossing_a_threshold_is_reclassified_by_size() -> None:
    nodule, _ = _was(S, 8.4, 7.5)  # + 0.9 mm: not growth, but now >= 8 mm (4A), was 3
    suggestion = suggest([nodule], compared=True)
    assert (suggestion.category, suggestion.row) == ("4A", "solid-baseline-4A")
    assert any("size threshold" in a.assumed for a in suggestion.assumptions)


def test_the_highest_category_decides_not_the_largest_nodule() -> None:
    ggn = Nodule("1.2.1", 25.0, G, 0.9)
    part_solid = Nodule("1.2.2", 9.0, P, 0.9, 6.5)
    suggestion = suggest([ggn, part_solid])
    assert (suggestion.category, suggestion.driving_nodule) == ("4A", part_solid)


def test_missing_inputs_are_named_with_what_was_assumed() -> None:
    suggestion = suggest([Nodule("1.2.3", 9.2)])
    assumed = {a.input: a.assumed for a in suggestion.assumptions}
    assert assumed == {
        "type": "not characterised: solid assumed",
        "prior CT": "none compared: baseline screening CT assumed",
    }
    assert suggestion.caveat == CAVEAT
    uncertain = Nodule("1.2.4", 9.0, P, 0.55)  # part-solid, unsure, solid part not measured
    suggestion = suggest([uncertain], compared=True)
    assumed = {a.input: a.assumed for a in suggestion.assumptions}
    assert assumed["type"].startswith("uncertain (part-solid, p=0.55)")
    assert assumed["solid component"] == "not measured: taken as the whole nodule"
    assert "prior CT" not in assumed
    assert (suggestion.category, suggestion.row) == ("4B", "part-solid-new-4B")
    assert "solid component" in suggestion.caveat


def test_a_prior_without_dates_or_older_than_a_year_is_said() -> None:
    old = Nodule("1.2.5", 9.0, S, 0.9, history=History(7.0, None, S, 500))
    (assumption,) = suggest([old], compared=True).assumptions
    assert assumption.input == "interval" and "500 days" in assumption.assumed
    undated = Nodule("1.2.5", 9.0, S, 0.9, history=History(7.0))
    assert suggest([undated], compared=True).assumptions[0].input == "interval"


def test_a_fully_characterised_compared_nodule_assumes_nothing() -> None:
    nodule = Nodule("1.2.6", 9.0, S, 0.95, history=History(7.0, None, S, 360))
    suggestion = suggest([nodule], compared=True)
    assert suggestion.assumptions == () and suggestion.category == "4B"  # growing >= 8 mm
    assert "7.0 mm on the prior CT" in suggestion.rule


def test_a_ground_glass_nodule_that_gains_a_solid_component_reads_as_growing() -> None:
    history = History(12.0, None, G, 365)
    nodule = Nodule("1.2.7", 12.5, P, 0.9, 4.5, history=history)
    suggestion = suggest([nodule], compared=True)
    assert (suggestion.category, suggestion.row) == ("4B", "part-solid-growing-4B")
