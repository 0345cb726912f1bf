"""Replacement values: dummies consistent with the VR (action D) and shifted dates (option C).

PS3.15 E.1.1: a dummy is a non-zero length value consistent with the VR; it carries nothing of
the original. Under Retain Longitudinal Temporal Information with Modified Dates (E.3.6) dates
move by the patient's offset in whole days, so intervals between them are kept; times of day
are kept as they are.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

from pydicom.dataelem import DataElement

DUMMY_TEXT = "ANONYMIZED"  # valid for AE, CS, LO, LT, PN, SH, ST, UC, UT (<= 16 characters)
DUMMY_DATE = "19000101"
DUMMY_TIME = "000000"
DUMMY_DATETIME = "19000101000000"
_DUMMIES: dict[str, Any] = {
    "DA": DUMMY_DATE,
    "TM": DUMMY_TIME,
    "DT": DUMMY_DATETIME,
    "AS": "000D",
    "DS": "0",
    "IS": "0",
    "UR": "urn:x-anonymized",
}
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV", "AT"})
# PS3.5 6.2 DA (YYYYMMDD; ACR-NEMA wrote YYYY.MM.DD) and DT (YYYY[MM[DD[...]]] then time/zone).
_DATE = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")
_DATETIME = re.compile(r"(\d{4})(\d{2})?(\d{2})?(.*)", re.DOTALL)


def dummy(element: DataElement) -> Any:
    """A non-identifying, non-empty value for *element* consistent with its VR."""
    vr = element.VR
    if vr in _DUMMIES:
        return _DUMMIES[vr]
    if vr in _TEXT_VRS:
        return DUMMY_TEXT
    if vr in _BINARY_VRS:
        length = len(element.value) if isinstance(element.value, bytes | bytearray) else 0
        return bytes(max(length, 2) + max(length, 2) % 2)  # zeros, even length
    if vr in _NUMBER_VRS:
        return 0
    return DUMMY_TEXT


def shift_date(value: str, days: int) -> str:
    """A DA value moved by *days*; an unparsable value becomes the dummy date."""
    found = _DATE.fullmatch(value.strip())
    if found is None:
        return DUMMY_DATE
    try:
        moved = date(*(int(part) for part in found.groups())) + timedelta(days=days)
    except ValueError:
        return DUMMY_DATE
    return moved.strftime("%Y%m%d")


def shift_datetime(value: str, days: int) -> str:
    """A DT value moved by *days*, keeping its precision, time of day and offset from UTC."""
    found = _DATETIME.fullmatch(value.strip())
    if found is None:
        return DUMMY_DATETIME
    year, month, day, rest = found.groups()
    try:
        # A reduced-precision value (year, or year and month) moves its midpoint.
        anchor = date(int(year), int(month or 7), int(day or (15 if month else 1)))
    except ValueError:
        return DUMMY_DATETIME
    moved = anchor + timedelta(days=days)
    shifted = f"{moved.year:04d}"
    if month:
        shifted += f"{moved.month:02d}"
    if day:
        shifted += f"{moved.day:02d}"
    return shifted + (rest if day else "")


def shifted(element: DataElement, days: int) -> Any:
    """The value of a DA or DT *element* with each of its values moved by *days*."""
    shift = shift_date if element.VR == "DA" else shift_datetime
    values = element.value if element.VM > 1 else [element.value]
    moved = [shift(str(v), days) for v in values if v not in (None, "")]
    if not moved:
        return element.value
    return moved if len(moved) > 1 else moved[0]
