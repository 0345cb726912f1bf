"""The DICOM JSON model (PS3.18 F.2) for search results and stored instances."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

MEDIA_TYPE = "application/dicom+json"
PREFIX = "/dicom-web"


def media_type(value: str) -> tuple[str, dict[str, str]]:
    """The lower-case type/subtype of one media type or media range, and its parameters
    (names lower-case, values unquoted and as given: boundaries and UIDs are case-sensitive)."""
    media, *parameters = (part.strip() for part in value.split(";"))
    named = {}
    for parameter in parameters:
        name, _, parameter_value = parameter.partition("=")
        named[name.strip().lower()] = parameter_value.strip().strip('"')
    return media.lower(), named


def base_url(request: Request) -> str:
    """The DICOMweb root as the client reached it: RetrieveURL and BulkDataURI start here."""
    return str(request.base_url).rstrip("/") + PREFIX


def keyword_of(name: str) -> str | None:
    """A keyword from a keyword or an 8-hex-digit tag (as QIDO-RS accepts both)."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        return keyword_for_tag(int(name, 16)) or None
    return name if tag_for_keyword(name) is not None else None


def from_match(match: dict[str, Any], retrieve_url: str | None = None) -> dict[str, Any]:
    """DICOM JSON of one search match (keyword -> indexed value)."""
    ds = Dataset()
    for keyword, value in match.items():
        if value is None or value == "":
            setattr(ds, keyword, None)
        elif keyword == "ModalitiesInStudy":
            ds.ModalitiesInStudy = str(value).split("\\")
        else:
            setattr(ds, keyword, value)
    if retrieve_url is not None:
        ds.RetrieveURL = retrieve_url
    return ds.to_json_dict()
