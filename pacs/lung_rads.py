"""A Lung-RADS v2022 suggestion for a screening CT: solid, part-solid and ground-glass nodules,
at baseline and against a prior CT (new, stable, growing), from one table.

Source: ACR Lung-RADS v2022 assessment categories (released November 2022), summarised in
Christensen et al., "ACR Lung-RADS v2022: Assessment Categories and Management
Recommendations", J Am Coll Radiol 2024;21(3):473-488, doi:10.1016/j.jacr.2023.09.009 (also
CHEST 2024;165(3):738-753). v2022 kept the size thresholds of v1.1 (NCBI Bookshelf NBK568579,
Appendix A Table 2) and added the stepped management of stable nodules. Sizes are mean
diameters, reported to one decimal place, and the thresholds apply to that rounded value
(5.96 mm is reported as 6.0 mm). Growth: "an increase in mean diameter > 1.5 mm within a
12-month interval". The rows we apply (``TABLE``, one test each):

===========  ===============================================================================
Category     Findings
===========  ===============================================================================
1            no lung nodules
2            solid < 6 mm at baseline, or new < 4 mm; part-solid < 6 mm total at baseline;
             ground-glass < 30 mm (baseline, new or growing), or >= 30 mm and stable;
             category 3 nodules stable or smaller at follow-up
3            solid >= 6 to < 8 mm at baseline, or new 4 to < 6 mm; part-solid >= 6 mm total
             with a solid component < 6 mm, or new < 6 mm total; ground-glass >= 30 mm at
             baseline or new; category 4A nodules stable or smaller at follow-up
4A           solid >= 8 to < 15 mm at baseline, growing < 8 mm, or new 6 to < 8 mm; part-solid
             >= 6 mm total with a solid component >= 6 to < 8 mm, or a new or growing solid
             component < 4 mm
4B           solid >= 15 mm at baseline, or new or growing >= 8 mm; part-solid with a solid
             component >= 8 mm at baseline, or a new or growing solid component >= 4 mm
===========  ===============================================================================

"Size thresholds apply to nodules at first detection and that enlarge, reaching a higher size
category ... even if not meeting the definition of growth, the nodule should be reclassified
based on size": a stable nodule whose size now falls in a higher baseline category than its
prior's gets the baseline row (``crossed``). A category 4B nodule leaves 4B only when proven
benign, which no image shows, so a stable one stays 4B.

This is a suggestion only. Calcified, fat-containing, perifissural/juxtapleural and airway
nodules, atypical cysts, infectious findings (category 0), slow growth over several exams
(4B), 4X features and the S modifier need a radiologist's judgement and are never suggested;
the radiologist may set any valid category (see ``CATEGORIES``). Every input the table needs
and the study lacks (the nodule type, the solid component, a prior CT, the interval) is named
in the suggestion with what was assumed instead.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

#: Lung-RADS v2022 assessment categories (ACR Lung-RADS v2022 assessment categories table).
CATEGORIES = ("0", "1", "2", "3", "4A", "4B", "4X")
#: "The modifier S may be added to Lung-RADS categories 0-4 for clinically significant or
#: potentially clinically significant findings unrelated to lung cancer": written e.g. ``2S``.
S_MODIFIER = "S"
_CATEGORY = re.compile(r"(0|1|2|3|4A|4B|4X)(S)?")
#: The categories a suggestion can have, least suspicious first.
SUGGESTED = ("1", "2", "3", "4A", "4B")
NO_NODULE = "1"
#: "Nodule growth: an increase in mean diameter > 1.5 mm within a 12-month interval."
GROWTH_MM = 1.5
GROWTH_INTERVAL_DAYS = 365
#: Below this type probability the type is called uncertain in the suggestion.
UNCERTAIN_TYPE = 0.7

CAVEAT = (
    "Suggestion from size only: the nodule type is not known, so a solid nodule on a baseline "
    "screening CT is assumed (ACR Lung-RADS v2022 thresholds). Part-solid, non-solid, "
    "calcified or perifissural nodules, and new or growing ones, are categorised differently: "
    "the radiologist decides."
)
_JUDGEMENT = (
    "Calcified, perifissural, juxtapleural and airway nodules, cysts and infectious findings "
    "are categorised differently: the radiologist decides."
)


class NoduleType(enum.StrEnum):
    """The nodule's attenuation, as Lung-RADS names it (ground-glass: "non-solid")."""

    SOLID = "solid"
    PART_SOLID = "part-solid"
    GROUND_GLASS = "ground-glass"


class Change(enum.StrEnum):
    """A nodule against its predecessor on the prior CT (see ``change_of``)."""

    NEW = "new"
    STABLE = "stable"
    GROWN = "grown"
    SHRUNK = "shrunk"


class Context(enum.StrEnum):
    """Which part of the table a nodule is read against."""

    BASELINE = "baseline"
    NEW = "new"
    GROWING = "growing"
    STABLE = "stable"  # stable or smaller at follow-up


@dataclass(frozen=True)
class History:
    """A nodule's predecessor on the prior CT: its sizes and the days between the two CTs."""

    diameter_mm: float
    solid_diameter_mm: float | None = None
    type: NoduleType | None = None
    interval_days: int | None = None


@dataclass(frozen=True)
class Nodule:
    """A nodule the suggestion considers.

    Attributes
    ----------
    tracking_uid : str
    diameter_mm : float
        Mean diameter ((long + short axis) / 2, or the detector's sphere diameter).
    type, type_probability : NoduleType or None, float or None
        None: not characterised (solid is assumed and said so).
    solid_diameter_mm : float or None
        The solid component's mean diameter (part-solid nodules).
    volume_mm3 : float or None
    centre : tuple of float or None
        Patient LPS mm.
    history : History or None
        The predecessor on the prior CT; None with a prior CT compared: the nodule is new.
    """

    tracking_uid: str
    diameter_mm: float
    type: NoduleType | None = None
    type_probability: float | None = None
    solid_diameter_mm: float | None = None
    volume_mm3: float | None = None
    centre: tuple[float, float, float] | None = None
    history: History | None = None


@dataclass(frozen=True)
class Range:
    """A half-open range [low, high) of a reported diameter in mm."""

    low: float = 0.0
    high: float = math.inf

    def __contains__(self, value: object) -> bool:
        return isinstance(value, float | int) and self.low <= value < self.high

    def __str__(self) -> str:
        if self.high == math.inf:
            return f">= {self.low:g} mm"
        return f"< {self.high:g} mm" if self.low == 0 else f">= {self.low:g} to < {self.high:g} mm"


ANY = Range()


@dataclass(frozen=True)
class Row:
    """One row of the table: a nodule of one of *types*, read in *context*, whose reported
    mean diameter is in *mean*, solid component in *solid*, and (stable rows) whose prior's
    baseline category was *prior*, is *category*."""

    id: str
    category: str
    types: frozenset[NoduleType]
    context: Context
    mean: Range = ANY
    solid: Range = ANY
    prior: str | None = None

    def matches(
        self, type_: NoduleType, context: Context, mean: float, solid: float, prior: str | None
    ) -> bool:
        return (
            type_ in self.types
            and context == self.context
            and mean in self.mean
            and solid in self.solid
            and (self.prior is None or self.prior == prior)
        )

    def describe(self) -> str:
        kinds = "/".join(sorted(self.types))
        if self.prior is not None:
            return f"{kinds} nodule, category {self.prior} before, stable or smaller at follow-up"
        sizes = (
            [f"{self.mean} total" if self.solid != ANY else str(self.mean)]
            if self.mean != ANY
            else []
        )
        if self.solid != ANY:
            sizes.append(f"solid component {self.solid}")
        return f"{kinds} nodule, {self.context}, " + ", ".join(sizes)


_S, _P, _G = NoduleType.SOLID, NoduleType.PART_SOLID, NoduleType.GROUND_GLASS
_ALL = frozenset(NoduleType)
_B, _N, _GR, _ST = Context.BASELINE, Context.NEW, Context.GROWING, Context.STABLE

#: The Lung-RADS v2022 rows, first match wins (see the module docstring).
TABLE: tuple[Row, ...] = (
    Row("solid-baseline-2", "2", frozenset({_S}), _B, Range(0, 6)),
    Row("solid-baseline-3", "3", frozenset({_S}), _B, Range(6, 8)),
    Row("solid-baseline-4A", "4A", frozenset({_S}), _B, Range(8, 15)),
    Row("solid-baseline-4B", "4B", frozenset({_S}), _B, Range(15)),
    Row("solid-new-2", "2", frozenset({_S}), _N, Range(0, 4)),
    Row("solid-new-3", "3", frozenset({_S}), _N, Range(4, 6)),
    Row("solid-new-4A", "4A", frozenset({_S}), _N, Range(6, 8)),
    Row("solid-new-4B", "4B", frozenset({_S}), _N, Range(8)),
    Row("solid-growing-4A", "4A", frozenset({_S}), _GR, Range(0, 8)),
    Row("solid-growing-4B", "4B", frozenset({_S}), _GR, Range(8)),
    Row("part-solid-baseline-2", "2", frozenset({_P}), _B, Range(0, 6)),
    Row("part-solid-baseline-3", "3", frozenset({_P}), _B, Range(6), Range(0, 6)),
    Row("part-solid-baseline-4A", "4A", frozenset({_P}), _B, Range(6), Range(6, 8)),
    Row("part-solid-baseline-4B", "4B", frozenset({_P}), _B, Range(6), Range(8)),
    Row("part-solid-new-3", "3", frozenset({_P}), _N, Range(0, 6)),
    Row("part-solid-new-4A", "4A", frozenset({_P}), _N, Range(6), Range(0, 4)),
    Row("part-solid-new-4B", "4B", frozenset({_P}), _N, Range(6), Range(4)),
    Row("part-solid-growing-4A", "4A", frozenset({_P}), _GR, solid=Range(0, 4)),
    Row("part-solid-growing-4B", "4B", frozenset({_P}), _GR, solid=Range(4)),
    Row("ground-glass-baseline-2", "2", frozenset({_G}), _B, Range(0, 30)),
    Row("ground-glass-baseline-3", "3", frozenset({_G}), _B, Range(30)),
    Row("ground-glass-new-2", "2", frozenset({_G}), _N, Range(0, 30)),
    Row("ground-glass-new-3", "3", frozenset({_G}), _N, Range(30)),
    Row("ground-glass-growing-2", "2", frozenset({_G}), _GR, Range(0, 30)),
    # The table has ">= 30 mm and unchanged or slowly growing" as 2 and no row for faster
    # growth; how fast is slow is the radiologist's call, so 3 (as a new one) is suggested.
    Row("ground-glass-growing-3", "3", frozenset({_G}), _GR, Range(30)),
    Row("stable-2", "2", _ALL, _ST, prior="2"),
    Row("stable-3", "2", _ALL, _ST, prior="3"),
    Row("stable-4A", "3", _ALL, _ST, prior="4A"),
    Row("stable-4B", "4B", _ALL, _ST, prior="4B"),
)


@dataclass(frozen=True)
class Assumption:
    """An input the table needs that was missing, and what was assumed instead."""

    input: str
    assumed: str


@dataclass(frozen=True)
class Suggestion:
    """The suggested category, the nodule that decided it (None: no nodule), and why.

    Attributes
    ----------
    rule : str
        The rule that fired, in words.
    row : str or None
        The id of the table row that fired (None: no nodule, category 1).
    assumptions : tuple of Assumption
        For the driving nodule and the study: what was missing and what was assumed.
    context : Context or None
        Baseline, new, growing or stable: how the driving nodule was read.
    """

    category: str
    driving_nodule: Nodule | None
    rule: str
    caveat: str = CAVEAT
    row: str | None = None
    assumptions: tuple[Assumption, ...] = ()
    context: Context | None = None
    #: Whether a prior CT was compared (False: every nodule read as at baseline).
    compared: bool = False


@dataclass(frozen=True)
class _Reading:
    nodule: Nodule
    row: Row
    context: Context
    assumptions: tuple[Assumption, ...] = field(default=())


def reported_diameter(diameter_mm: float) -> float:
    """The mean diameter as Lung-RADS reports it: to one decimal place (half up)."""
    return float(Decimal(repr(diameter_mm)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def change_of(prior_mm: float, current_mm: float) -> Change:
    """Grown or shrunk: the reported mean diameter changed by more than 1.5 mm; else stable."""
    delta = reported_diameter(current_mm) - reported_diameter(prior_mm)
    if delta > GROWTH_MM + 1e-9:
        return Change.GROWN
    if delta < -GROWTH_MM - 1e-9:
        return Change.SHRUNK
    return Change.STABLE


def solid_baseline_category(diameter_mm: float) -> str:
    """The v2022 category of one solid nodule at baseline, by its mean diameter."""
    return baseline_category(NoduleType.SOLID, diameter_mm, None)


def baseline_category(type_: NoduleType, diameter_mm: float, solid_mm: float | None) -> str:
    """The v2022 category of one nodule at baseline (a part-solid one with no solid component
    measured: taken as solid throughout, see ``suggest``)."""
    solid = diameter_mm if solid_mm is None else solid_mm
    return _row(type_, Context.BASELINE, diameter_mm, solid, None).category


def rank(category: str) -> int:
    """The order of a suggested category (1 < 2 < 3 < 4A < 4B)."""
    return SUGGESTED.index(category)


def _row(
    type_: NoduleType, context: Context, mean_mm: float, solid_mm: float, prior: str | None
) -> Row:
    mean, solid = reported_diameter(mean_mm), reported_diameter(solid_mm)
    for row in TABLE:
        if row.matches(type_, context, mean, solid, prior):
            return row
    # Every (type, context) has rows from 0 mm up, and stable rows every prior category.
    raise ValueError(f"no Lung-RADS row for a {type_} nodule, {context}, {mean} mm")


def _read(nodule: Nodule, compared: bool) -> _Reading:
    """The row one nodule falls in, and what had to be assumed to find it."""
    assumed: list[Assumption] = []
    type_ = nodule.type
    if type_ is None:
        type_ = NoduleType.SOLID
        assumed.append(Assumption("type", "not characterised: solid assumed"))
    elif nodule.type_probability is not None and nodule.type_probability < UNCERTAIN_TYPE:
        assumed.append(
            Assumption(
                "type", f"uncertain ({type_}, p={nodule.type_probability:.2f}): {type_} taken"
            )
        )
    solid = nodule.solid_diameter_mm
    if type_ == NoduleType.PART_SOLID and solid is None:
        solid = nodule.diameter_mm
        assumed.append(Assumption("solid component", "not measured: taken as the whole nodule"))
    solid_mm = nodule.diameter_mm if solid is None else solid
    if not compared:
        assumed.append(Assumption("prior CT", "none compared: baseline screening CT assumed"))
        row = _row(type_, Context.BASELINE, nodule.diameter_mm, solid_mm, None)
        return _Reading(nodule, row, Context.BASELINE, tuple(assumed))
    history = nodule.history
    if history is None:
        return _Reading(
            nodule,
            _row(type_, Context.NEW, nodule.diameter_mm, solid_mm, None),
            Context.NEW,
            tuple(assumed),
        )
    if history.interval_days is None:
        assumed.append(
            Assumption("interval", "no study dates: a change counts as within 12 months")
        )
    elif history.interval_days > GROWTH_INTERVAL_DAYS:
        assumed.append(
            Assumption(
                "interval",
                f"{history.interval_days} days (> 12 months): a change over it counted as growth",
            )
        )
    prior_type = history.type or type_
    prior_solid = history.solid_diameter_mm
    if (
        type_ == NoduleType.PART_SOLID
        and prior_type == NoduleType.PART_SOLID
        and prior_solid is not None
    ):
        change = change_of(prior_solid, solid_mm)  # a part-solid nodule grows by its solid part
    elif type_ == NoduleType.PART_SOLID and prior_type == NoduleType.GROUND_GLASS:
        change = Change.GROWN  # a new solid component: "new or growing solid component"
    else:
        if type_ == NoduleType.PART_SOLID:
            assumed.append(
                Assumption(
                    "prior solid component", "not measured: growth of the whole nodule taken"
                )
            )
        change = change_of(history.diameter_mm, nodule.diameter_mm)
    if change == Change.GROWN:
        return _Reading(
            nodule,
            _row(type_, Context.GROWING, nodule.diameter_mm, solid_mm, None),
            Context.GROWING,
            tuple(assumed),
        )
    prior_solid_mm = history.diameter_mm if prior_solid is None else prior_solid
    before = baseline_category(prior_type, history.diameter_mm, prior_solid_mm)
    now = _row(type_, Context.BASELINE, nodule.diameter_mm, solid_mm, None)
    if rank(now.category) > rank(before):
        crossed = Assumption(
            "growth",
            f"none, but a size threshold was crossed since the prior CT (category {before} "
            "then): reclassified by size",
        )
        return _Reading(nodule, now, Context.BASELINE, (*assumed, crossed))
    stable = _row(type_, Context.STABLE, nodule.diameter_mm, solid_mm, before)
    return _Reading(nodule, stable, Context.STABLE, tuple(assumed))


def suggest(nodules: Sequence[Nodule], *, compared: bool = False) -> Suggestion:
    """The suggestion for a study from its confirmed nodules: the one in the highest category
    decides (the largest among equals).

    Parameters
    ----------
    nodules : sequence of Nodule
    compared : bool
        Whether a prior CT was compared: then a nodule without ``history`` is new. False:
        every nodule is read as on a baseline screening CT, and the suggestion says so.
    """
    if not nodules:
        rule = "no confirmed lung nodule: category 1"
        caveat = CAVEAT if not compared else _JUDGEMENT
        return Suggestion(NO_NODULE, None, rule, caveat, compared=compared)
    readings = [_read(n, compared) for n in nodules]
    top = max(readings, key=lambda r: (rank(r.row.category), r.nodule.diameter_mm))
    nodule, row = top.nodule, top.row
    sizes = _sizes(nodule)
    if compared and nodule.history is not None:
        sizes += f", {reported_diameter(nodule.history.diameter_mm):.1f} mm on the prior CT"
    rule = f"{sizes}: {row.describe()}: category {row.category}"
    return Suggestion(
        row.category,
        nodule,
        rule,
        _caveat(top.assumptions),
        row=row.id,
        assumptions=top.assumptions,
        context=top.context,
        compared=compared,
    )


def _sizes(nodule: Nodule) -> str:
    text = f"nodule of {reported_diameter(nodule.diameter_mm):.1f} mm (mean diameter)"
    if nodule.solid_diameter_mm is not None:
        text += f", solid component {reported_diameter(nodule.solid_diameter_mm):.1f} mm"
    return text


def _caveat(assumptions: Sequence[Assumption]) -> str:
    inputs = {a.input for a in assumptions}
    if {"type", "prior CT"} <= inputs and all(
        a.assumed.startswith(("not characterised", "none compared")) for a in assumptions
    ):
        return CAVEAT
    if not assumptions:
        return f"Suggestion from the nodule's type, size and change. {_JUDGEMENT}"
    listed = "; ".join(f"{a.input}: {a.assumed}" for a in assumptions)
    return f"Suggestion with missing inputs ({listed}). {_JUDGEMENT}"


def is_valid_category(value: str) -> bool:
    """Whether *value* is a v2022 category, optionally with the S modifier (``4AS``, ``2S``).

    ``1S``...``4XS`` and ``0S`` are all allowed: S applies to categories 0-4.
    """
    return _CATEGORY.fullmatch(value) is not None
