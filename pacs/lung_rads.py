"""A size-based Lung-RADS v2022 suggestion for a baseline screening CT, from solid nodules.

ACR Lung-RADS v2022 (Christensen et al., "ACR Lung-RADS v2022: Assessment Categories and
Management Recommendations", J Am Coll Radiol 2024;21(3):473-488, doi:10.1016/j.jacr.2023.09.009)
kept the solid-nodule size thresholds of v1.1 (the v1.1 table: NCBI Bookshelf NBK568579,
Appendix A Table 2). For a solid nodule at baseline, by mean diameter:

===========  ========================
Category     Solid nodule at baseline
===========  ========================
1            no lung nodules
2            < 6 mm
3            >= 6 to < 8 mm
4A           >= 8 to < 15 mm
4B           >= 15 mm
===========  ========================

The mean diameter is reported to one decimal place (v2022 "nodule size"), and the thresholds
apply to that rounded value: 5.96 mm is reported as 6.0 mm, a category 3.

This is a suggestion only. Our model reports neither the nodule's type (solid, part-solid,
non-solid, calcified, perifissural, juxtapleural, endobronchial) nor prior examinations (new or
growing nodules), and every one of those changes the category; so solid at baseline is assumed
and said so. Categories 0 and 4X, and the S modifier, need a radiologist's judgement and are
never suggested; the radiologist may set any valid category (see ``CATEGORIES``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

#: Lung-RADS v2022 assessment categories (ACR Lung-RADS v2022 assessment categories table).
CATEGORIES = ("0", "1", "2", "3", "4A", "4B", "4X")
#: "The modifier S may be added to Lung-RADS categories 0-4 for clinically significant or
#: potentially clinically significant findings unrelated to lung cancer": written e.g. ``2S``.
S_MODIFIER = "S"
_CATEGORY = re.compile(r"(0|1|2|3|4A|4B|4X)(S)?")

#: (upper bound, exclusive, of the rounded mean diameter in mm; category), solid at baseline.
SOLID_BASELINE: tuple[tuple[float, str], ...] = (
    (6.0, "2"),
    (8.0, "3"),
    (15.0, "4A"),
    (float("inf"), "4B"),
)
NO_NODULE = "1"

CAVEAT = (
    "Suggestion from size only: the nodule type is not known, so a solid nodule on a baseline "
    "screening CT is assumed (ACR Lung-RADS v2022 thresholds). Part-solid, non-solid, "
    "calcified or perifissural nodules, and new or growing ones, are categorised differently: "
    "the radiologist decides."
)


@dataclass(frozen=True)
class Nodule:
    """A nodule the suggestion considers: its tracking UID and mean diameter in mm."""

    tracking_uid: str
    diameter_mm: float


@dataclass(frozen=True)
class Suggestion:
    """The suggested category, the nodule that decided it (None: no nodule), and why."""

    category: str
    driving_nodule: Nodule | None
    rule: str
    caveat: str = CAVEAT


def reported_diameter(diameter_mm: float) -> float:
    """The mean diameter as Lung-RADS reports it: to one decimal place (half up)."""
    return float(Decimal(repr(diameter_mm)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def solid_baseline_category(diameter_mm: float) -> str:
    """The v2022 category of one solid nodule at baseline, by its mean diameter."""
    reported = reported_diameter(diameter_mm)
    return next(category for bound, category in SOLID_BASELINE if reported < bound)


def suggest(nodules: Sequence[Nodule]) -> Suggestion:
    """The suggestion for a study from its confirmed nodules: the largest one decides."""
    if not nodules:
        return Suggestion(NO_NODULE, None, "no confirmed lung nodule: category 1")
    largest = max(nodules, key=lambda n: n.diameter_mm)
    category = solid_baseline_category(largest.diameter_mm)
    reported = reported_diameter(largest.diameter_mm)
    rule = (
        f"largest confirmed nodule {reported:.1f} mm (mean diameter), solid at baseline "
        f"{_range(category)}: category {category}"
    )
    return Suggestion(category, largest, rule)


def _range(category: str) -> str:
    lower = 0.0
    for bound, named in SOLID_BASELINE:
        if named == category:
            if bound == float("inf"):
                return f">= {lower:g} mm"
            return f"< {bound:g} mm" if lower == 0 else f">= {lower:g} to < {bound:g} mm"
        lower = bound
    raise ValueError(category)  # pragma: no cover - categories come from SOLID_BASELINE


def is_valid_category(value: str) -> bool:
    """Whether *value* is a v2022 category, optionally with the S modifier (``4AS``, ``2S``).

    ``1S``...``4XS`` and ``0S`` are all allowed: S applies to categories 0-4.
    """
    return _CATEGORY.fullmatch(value) is not None
