"""Query/Retrieve identifiers (PS3.4 C.4.1-C.4.3) to and from the archive's search."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from pacs.errors import QueryError
from pacs.facilities import Scope
from pacs.search import ATTRIBUTES, MULTI_VALUED, Level, Query

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"  # PS3.4 C.6.1
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # PS3.4 C.6.2
FIND_MODELS = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
MOVE_MODELS = (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)
RETRIEVE_MODELS = (*MOVE_MODELS, PATIENT_ROOT_GET, STUDY_ROOT_GET)
_STUDY_ROOT_MODELS = frozenset((STUDY_ROOT_FIND, STUDY_ROOT_MOVE, STUDY_ROOT_GET))

# Elements of the identifier that steer the query rather than match anything.
_CONTROL = frozenset(("QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"))
# Responses carry UTF-8 text: names in the index come from any character set.
RESPONSE_CHARACTER_SET = "ISO_IR 192"


def query_from_identifier(identifier: Dataset, model: str, limit: int, scope: Scope) -> Query:
    """The search a C-FIND, C-MOVE or C-GET identifier asks for.

    Raises
    ------
    QueryError
        Missing or unknown Query/Retrieve Level, a PATIENT level query on the Study Root model,
        a key below the level, or an unusable matching value.
    """
    try:
        level = Level(str(identifier.get("QueryRetrieveLevel", "")).strip())
    except ValueError as exc:
        raise QueryError("Query/Retrieve Level missing or unknown") from exc
    if model in _STUDY_ROOT_MODELS and level is Level.PATIENT:
        raise QueryError("the Study Root model has no PATIENT level")
    matching: dict[str, str] = {}
    returned: list[str] = []
    for element in identifier:
        keyword = element.keyword
        if keyword in _CONTROL or keyword not in ATTRIBUTES:
            continue  # unsupported optional keys come back empty (PS3.4 C.2.2.1.3)
        returned.append(keyword)
        value = _text(element.value)
        if value and value != "*":  # "*" alone is universal matching too
            matching[keyword] = value
    return Query(level, matching, tuple(returned), limit=limit, scope=scope)


def response_identifier(identifier: Dataset, level: Level, match: dict[str, Any]) -> Dataset:
    """A pending response: every requested key, with the match's value or empty."""
    response = Dataset()
    response.SpecificCharacterSet = RESPONSE_CHARACTER_SET
    response.QueryRetrieveLevel = level.value
    for element in identifier:
        keyword = element.keyword
        if keyword in _CONTROL or not keyword or not _returnable(element.tag):
            continue
        value = match.get(keyword)
        if value is None:
            setattr(response, keyword, None)
        elif keyword in MULTI_VALUED:
            setattr(response, keyword, str(value).split("\\"))
        else:
            setattr(response, keyword, value)
    for keyword, value in match.items():  # the unique key, even when not asked for
        if keyword not in response:
            setattr(response, keyword, value)
    return response


def _returnable(tag: BaseTag) -> bool:
    """Whether a requested key may appear in a response data set: never File Meta (group
    0002, PS3.10 7.1), command (0000) or group length (gggg,0000) elements, nor items and
    delimiters (FFFE); private and illegal odd groups have no keyword and are left out too."""
    return tag.group not in (0x0000, 0x0002, 0xFFFE) and tag.group % 2 == 0 and tag.element != 0


def _text(value: Any) -> str:
    """A key's value as received: numbers (IS, DS) as their original string, not pydicom's
    conversion (a 40-digit IS must reach validation as sent, not as a float)."""
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(_single(v) for v in value)
    return _single(value).strip()


def _single(value: Any) -> str:
    original = getattr(value, "original_string", None)  # IS and DS keep it as str
    return original if isinstance(original, str) else str(value)
