"""Matching values checked against their VR (PS3.4 C.2.2.2, PS3.5 6.2), for :mod:`pacs.search`.

A malformed value is refused with a :class:`~pacs.errors.QueryError` that names the key and the
reason, so that QIDO-RS (400) and C-FIND (a failure status) answer the same, instead of
matching nothing or reaching the database with a number it cannot hold.
"""

from __future__ import annotations

import re
from datetime import date

from pacs.errors import QueryError
from pacs.uids import is_valid_uid

RANGED_VRS = frozenset(("DA", "TM", "DT"))
# PS3.5 Table 6.2-1: the value range of the integer VRs (IS holds a signed 32-bit value).
INTEGER_RANGES = {"IS": (-(2**31), 2**31 - 1), "US": (0, 2**16 - 1)}
# PS3.5 Table 6.2-1: maximum length in characters (PN: of each component group).
MAX_LENGTHS = {"CS": 16, "SH": 16, "LO": 64, "PN": 64, "UI": 64}
# PS3.4 C.2.2.2.4: the VRs in which "*" and "?" are wild cards; elsewhere they are refused.
WILD_CARD_VRS = frozenset(("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"))
# Values one list of UIDs (PS3.4 C.2.2.2.2) may hold: each becomes an SQL parameter, and
# databases limit the size of one statement (SQLite: "Expression tree is too large").
MAX_LIST_VALUES = 1000
# Lists in other VRs (an extension: PS3.4 defines lists of UIDs only) become a chain of ORs,
# which SQLite nests no deeper than 1000: they are kept far shorter.
MAX_OTHER_LIST_VALUES = 100
# PS3.5 6.2: the VRs whose checks this module knows (every searchable attribute has one).
CHECKED_VRS = frozenset((*RANGED_VRS, *INTEGER_RANGES, *MAX_LENGTHS))

_CS = re.compile(r"[A-Z0-9 _*?]*")
_TM = re.compile(r"([01]\d|2[0-3])([0-5]\d(([0-5]\d|60)(\.\d{1,6})?)?)?")
_DT = r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?"
_DT_RANGE = re.compile(f"(?P<low>{_DT})?-(?P<high>{_DT})?")
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")  # ESC (0x1b) starts ISO 2022 escapes
_FORMATS = {"DA": "date (YYYYMMDD)", "TM": "time (HHMMSS.FFFFFF)", "DT": "date-time"}
_SHOWN = 16  # characters of a refused value quoted (a DIMSE Error Comment holds 64)


def checked_value(keyword: str, vr: str, value: str) -> str:
    """*value* as a matching value of *keyword* (of *vr*), normalized.

    UID lists may be separated by commas too (as QIDO-RS clients send them); they become
    backslashes. Other values lose insignificant leading and trailing spaces.

    Raises
    ------
    QueryError
        The value (or one of a list) is not valid for the VR, has a wild card where PS3.4
        C.2.2.2.4 allows none, or the list holds more than MAX_LIST_VALUES values.
    """
    if vr == "UI":
        value = value.replace(",", "\\")
    if vr != "PN":
        value = "\\".join(v.strip() for v in value.split("\\"))
    values = value.split("\\")
    maximum = MAX_LIST_VALUES if vr == "UI" else MAX_OTHER_LIST_VALUES
    if len(values) > maximum:
        raise QueryError(f"{keyword}: {len(values)} values, at most {maximum} allowed")
    for single in values:
        reason = _invalid(vr, single)
        if reason:
            shown = single if len(single) <= _SHOWN else single[:_SHOWN] + "..."
            raise QueryError(f"{keyword}: {shown!r} {reason}")
    return value


def range_bounds(vr: str, value: str) -> tuple[str, str] | None:
    """The (low, high) bounds of a range matching value (PS3.4 C.2.2.2.5); None if single."""
    if vr == "DT":  # a UTC offset may hold a "-" too
        if re.fullmatch(_DT, value):
            return None
        found = _DT_RANGE.fullmatch(value)
        return (found["low"] or "", found["high"] or "") if found else None
    if "-" not in value:
        return None
    low, _, high = value.partition("-")
    return low, high


def _invalid(vr: str, value: str) -> str | None:
    """Why *value* is not a matching value of *vr*, or None."""
    if not value:
        return "is empty (in a list of values)"
    if vr not in WILD_CARD_VRS and any(c in value for c in "*?"):
        return f"has a wild card, not allowed in {vr} values (PS3.4 C.2.2.2.4)"
    if vr in INTEGER_RANGES:
        low, high = INTEGER_RANGES[vr]
        if not re.fullmatch(r"[+-]?\d+", value):
            return "is not a number"
        if len(value) > 12 or not low <= int(value) <= high:
            return f"is out of the {vr} range ({low} to {high})"
        return None
    if vr in RANGED_VRS:
        return _invalid_range(vr, value)
    if vr == "UI":
        return None if is_valid_uid(value) else "is not a UID (PS3.5 9.1)"
    if _CONTROL.search(value):
        return "has a control character"
    if vr == "CS" and not _CS.fullmatch(value):
        return "is not a code string (A-Z, 0-9, space, underscore)"
    if vr == "PN":
        return _invalid_name(value)
    maximum = MAX_LENGTHS.get(vr)
    if maximum is not None and len(value.replace("*", "")) > maximum:
        return f"is longer than {maximum} characters ({vr})"
    return None


def _invalid_name(value: str) -> str | None:
    """PS3.5 6.2.1: up to 3 component groups of up to 5 components, 64 characters each."""
    groups = value.split("=")
    if len(groups) > 3:
        return "has more than 3 component groups (PN)"
    if any(len(group.split("^")) > 5 for group in groups):
        return "has more than 5 name components (PN)"
    if any(len(group.replace("*", "")) > MAX_LENGTHS["PN"] for group in groups):
        return f"has a component group longer than {MAX_LENGTHS['PN']} characters (PN)"
    return None


def _invalid_range(vr: str, value: str) -> str | None:
    bounds = range_bounds(vr, value)
    if bounds is None:
        return _invalid_single(vr, value)
    low, high = bounds
    if not low and not high:
        return "is an empty range"
    if any(bound and _invalid_single(vr, bound) for bound in (low, high)):
        return f"is not a {_FORMATS[vr]} range (A-B, -B or A-)"
    return None


def _invalid_single(vr: str, value: str) -> str | None:
    if vr == "DA":
        if re.fullmatch(r"\d{8}", value):
            try:
                date(int(value[:4]), int(value[4:6]), int(value[6:]))
                return None
            except ValueError:
                pass
    elif vr == "TM":
        if _TM.fullmatch(value):
            return None
    elif re.fullmatch(_DT, value):
        return None
    return f"is not a {_FORMATS[vr]}"
