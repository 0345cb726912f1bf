"""Loading the checked-in extract of PS3.15 Table E.1-1 (``table_e1_1.csv``, source in its header).

Each row names an attribute (or a repeating group, or every private attribute) and its action
codes for the Basic Profile and for the two options this archive offers. The rules are looked up
by tag while walking a data set.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from pacs.deid.actions import Action, ActionCode

TABLE_FILE = "table_e1_1.csv"
PRIVATE = "private"


@dataclass(frozen=True)
class Options:
    """The options of PS3.15 E.3 chosen for an export, besides the Basic Profile.

    Attributes
    ----------
    modified_dates : bool
        Retain Longitudinal Temporal Information with Modified Dates (E.3.6): dates are
        shifted by an offset per patient instead of removed, so intervals survive.
    clean_descriptors : bool
        Clean Descriptors (E.3.5): descriptions and labels are kept, cleaned of identifying
        text, instead of removed.
    """

    modified_dates: bool = False
    clean_descriptors: bool = False


@dataclass(frozen=True)
class Rule:
    """One row of Table E.1-1.

    Attributes
    ----------
    tag : str
        The row's tag as the extract writes it ("00100010", "60xx3000", "private").
    name : str
        The attribute name from the table.
    basic : ActionCode
        The Basic Profile's code.
    modified_dates, clean_descriptors : ActionCode or None
        The code of each option's column, None where the column is empty.
    """

    tag: str
    name: str
    basic: ActionCode
    modified_dates: ActionCode | None
    clean_descriptors: ActionCode | None

    def code(self, options: Options) -> ActionCode:
        """The code in force: an option's column overrides the basic one where filled in."""
        if options.modified_dates and self.modified_dates is not None:
            return self.modified_dates
        if options.clean_descriptors and self.clean_descriptors is not None:
            return self.clean_descriptors
        return self.basic

    def matches(self, tag: int) -> bool:
        """True when *tag* (a 32-bit group/element) is this row's attribute."""
        if self.tag == PRIVATE:
            return bool((tag >> 16) % 2)
        mask, value = _pattern(self.tag)
        return tag & mask == value


class ConfidentialityTable:
    """The rows of Table E.1-1, looked up by tag.

    Parameters
    ----------
    rules : list[Rule]
        The table's rows; exact tags are unique, patterns (repeating groups) may overlap none.
    """

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = tuple(rules)
        self._exact = {int(r.tag, 16): r for r in rules if _is_exact(r.tag)}
        if len(self._exact) != sum(_is_exact(r.tag) for r in rules):
            raise ValueError("Table E.1-1 extract lists a tag twice")
        self._patterns = tuple(r for r in rules if not _is_exact(r.tag))

    def rule_for(self, tag: int) -> Rule | None:
        """The row for *tag*, or None when the table does not list the attribute."""
        exact = self._exact.get(tag)
        if exact is not None:
            return exact
        return next((r for r in self._patterns if r.matches(tag)), None)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)


def parse_table(text: str) -> ConfidentialityTable:
    """Parse the extract's CSV text (comment lines start with "#").

    Raises
    ------
    ValueError
        A row with an unknown action code or a malformed tag.
    """
    lines = (line for line in text.splitlines() if line.strip() and not line.startswith("#"))
    rules = []
    for row in csv.DictReader(lines):
        tag = row["tag"].strip()
        if tag != PRIVATE:
            _pattern(tag)  # validates
        rules.append(
            Rule(
                tag=tag,
                name=row["name"].strip(),
                basic=ActionCode.parse(row["basic"]),
                modified_dates=_optional(row["modified_dates"]),
                clean_descriptors=_optional(row["clean_descriptors"]),
            )
        )
    return ConfidentialityTable(rules)


@cache
def load_table() -> ConfidentialityTable:
    """The checked-in extract, parsed once per process."""
    return parse_table(files("pacs.deid").joinpath(TABLE_FILE).read_text(encoding="utf-8"))


# A row for dates the table does not list (Instance Creation Date, Verification DateTime, DATE
# and DATETIME content items, ...): left as they are, an original date beside shifted ones gives
# the offset away. They are treated like the table's own date rows: removed, emptied or
# dummied as the IOD allows, shifted under the Modified Dates option.
UNLISTED_DATE = Rule(
    tag="",
    name="date or date-time not listed in Table E.1-1",
    basic=ActionCode.parse("X/Z/D"),
    modified_dates=ActionCode("C", (Action.C,)),
    clean_descriptors=None,
)


def _optional(cell: str | None) -> ActionCode | None:
    return ActionCode.parse(cell) if cell and cell.strip() else None


def _is_exact(tag: str) -> bool:
    return tag != PRIVATE and "x" not in tag.lower()


def _pattern(tag: str) -> tuple[int, int]:
    """(mask, value) of a tag written with "x" for any hex digit."""
    if len(tag) != 8:
        raise ValueError(f"malformed tag in Table E.1-1 extract: {tag!r}")
    mask = value = 0
    for char in tag.lower():
        mask, value = mask << 4, value << 4
        if char != "x":
            mask |= 0xF
            value |= int(char, 16)
    return mask, value
