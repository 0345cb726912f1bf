"""FHIR search parameter values (R4 3.1.1.4 ff.): tokens, dates, references, paging.

Each parser takes the raw query string value and returns a typed value or raises BadRequest
naming the parameter and the reason, so a hostile or mistyped value is a 400, never a 500.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from viewer_api.problems import BadRequest

#: Page size when the client gives none, and the most one page holds (a larger ``_count`` is
#: clamped to it, as R4 3.1.1.5.7 allows).
DEFAULT_COUNT, MAX_COUNT = 20, 100
#: The largest ``_offset`` accepted: beyond any real result set, within every database's range.
MAX_OFFSET = 2**31 - 1
#: FHIR logical ids (R4 2.1.28.0.1).
ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DATE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d{1,9})?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


@dataclass(frozen=True)
class Paging:
    """``_count`` (clamped to MAX_COUNT; 0 asks for the total only) and ``_offset``."""

    count: int
    offset: int


@dataclass(frozen=True)
class Token:
    """``[system]|[code]``: *system* None matches any system, "" only identifiers without one."""

    system: str | None
    code: str


@dataclass(frozen=True)
class DateRange:
    """A date search value: the comparison prefix and the half-open interval [low, high) that the
    value's precision spans (``2024`` is the whole year)."""

    prefix: str
    low: datetime
    high: datetime


def split_or(value: str) -> list[str]:
    """A parameter value's comma-separated alternatives (R4 3.1.1.4.7), ``\\,`` being a comma."""
    return [part.replace("\\,", ",") for part in re.split(r"(?<!\\),", value)]


def paging(count: str | None, offset: str | None, summary: str | None) -> Paging:
    """Parse ``_count``, ``_offset`` and ``_summary`` (only ``count`` and ``false``)."""
    if summary not in (None, "false", "count"):
        raise BadRequest(f"_summary={summary} is not supported (only count and false)")
    size = DEFAULT_COUNT if count is None else _natural("_count", count)
    start = 0 if offset is None else _natural("_offset", offset)
    if start > MAX_OFFSET:
        raise BadRequest(f"_offset must not exceed {MAX_OFFSET}")
    return Paging(0 if summary == "count" else min(size, MAX_COUNT), start)


def _natural(name: str, value: str) -> int:
    if not re.fullmatch(r"[0-9]{1,64}", value):
        raise BadRequest(f"{name} must be a non-negative integer of at most 64 digits")
    return int(value)


def token(name: str, value: str) -> Token:
    """One token alternative: ``system|code``, ``|code`` or ``code``."""
    parts = re.split(r"(?<!\\)\|", value, maxsplit=1)
    if len(parts) == 1:
        return Token(None, _unescape(value))
    system, code = parts
    if not code:
        raise BadRequest(f"{name}={value!r}: a token needs a code after '|'")
    return Token(_unescape(system), _unescape(code))


def _unescape(value: str) -> str:
    return re.sub(r"\\([\\|$,])", r"\1", value)


def reference_id(name: str, value: str, resource_type: str) -> str:
    """``Patient/abc``, ``abc`` or an absolute URL ending in ``Patient/abc`` -> ``abc``."""
    match = re.fullmatch(rf"(?:.*/)?(?:{resource_type}/)?({ID.pattern})", value)
    if match is None or (("/" in value) and f"{resource_type}/" not in value):
        raise BadRequest(f"{name}={value!r} is not a {resource_type} reference")
    return match.group(1)


def date(name: str, value: str) -> DateRange:
    """A FHIR date search value with its prefix; a value without a zone is in server local time
    (R4 3.1.1.4.2). The interval is returned in UTC."""
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    moment = value[2:] if value[:2] in DATE_PREFIXES else value
    match = _DATE.fullmatch(moment)
    if match is None:
        raise BadRequest(f"{name}={value!r} is not a FHIR date (YYYY[-MM[-DD[Thh:mm[:ss]]]])")
    parts = match.groupdict()
    try:
        low = datetime(
            int(parts["year"]),
            int(parts["month"] or 1),
            int(parts["day"] or 1),
            int(parts["hour"] or 0),
            int(parts["minute"] or 0),
            int(parts["second"] or 0),
            int(float(parts["fraction"] or 0) * 1_000_000),
        )
        zone = parts["zone"]
        if zone:
            low = datetime.fromisoformat(low.isoformat() + zone.replace("Z", "+00:00"))
        else:
            low = low.astimezone()  # server local time
        return DateRange(prefix, low.astimezone(UTC), _after(low, parts).astimezone(UTC))
    except (ValueError, OverflowError) as exc:
        raise BadRequest(f"{name}={value!r} is not a valid date: {exc}") from exc


def _after(low: datetime, parts: dict[str, str | None]) -> datetime:
    """The end of the interval a value of this precision spans."""
    if parts["month"] is None:
        return low.replace(year=low.year + 1)
    if parts["day"] is None:
        return low.replace(year=low.year + low.month // 12, month=low.month % 12 + 1)
    if parts["hour"] is None:
        return low + timedelta(days=1)
    if parts["second"] is None:
        return low + timedelta(minutes=1)
    if parts["fraction"] is None:
        return low + timedelta(seconds=1)
    return low + timedelta(microseconds=1)
