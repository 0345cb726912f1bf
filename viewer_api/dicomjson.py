"""The DICOM JSON model (PS3.18 F.2) for search results and stored instances."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import Request
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
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


def accept_ranges(header: str | None) -> list[tuple[str, dict[str, str]]]:
    """The media ranges of an Accept header, most preferred first (RFC 9110 12.5.1).

    q-values order the ranges (stable for equal q); ranges with q=0 are dropped; quoted and
    unquoted parameters are both read; a range with an unreadable q-value is ignored; an absent
    or empty header means ``*/*``.
    """
    ranked: list[tuple[float, str, dict[str, str]]] = []
    for media_range in _split_outside_quotes(header or "*/*"):
        if not media_range.strip():
            continue
        media, named = media_type(media_range)
        try:
            q = float(named.pop("q", "1"))
        except ValueError:
            continue  # an unreadable q-value: the range is ignored
        if not 0 <= q <= 1:  # RFC 9110 12.4.2: a weight is between 0 and 1
            continue
        if q > 0:
            ranked.append((q, media, named))
    ranked.sort(key=lambda entry: -entry[0])
    return [(media, named) for _, media, named in ranked]


def _split_outside_quotes(header: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def accepts_json(header: str | None) -> bool:
    """Whether an Accept header admits DICOM JSON (application/dicom+json or a range over it)."""
    return any(
        media in ("application/dicom+json", "application/json", "application/*", "*/*")
        for media, _ in accept_ranges(header)
    )


def public_root(request: Request) -> str:
    """The API's root as clients should address it: ``PACS_PUBLIC_URL`` when configured;
    else the X-Forwarded-Proto/Host a trusted proxy (``PACS_TRUSTED_PROXIES``) sent; else the
    address the request came to (its Host header: right only when clients reach the API
    directly, which is why production deployments set ``PACS_PUBLIC_URL``)."""
    configured: str | None = getattr(request.app.state, "public_url", None)
    if configured:
        return configured.rstrip("/")
    trusted: frozenset[str] = getattr(request.app.state, "trusted_proxies", frozenset())
    if request.client is not None and request.client.host in trusted:
        host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        if host and proto in ("http", "https"):
            return f"{proto}://{host}"
    return str(request.base_url).rstrip("/")


def base_url(request: Request) -> str:
    """The DICOMweb root as clients should address it: RetrieveURL and BulkDataURI start here."""
    return public_root(request) + PREFIX


def keyword_of(name: str) -> str | None:
    """A keyword from a keyword or an 8-hex-digit tag (as QIDO-RS accepts both)."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        return keyword_for_tag(int(name, 16)) or None
    return name if tag_for_keyword(name) is not None else None


def from_match(match: dict[str, Any], retrieve_url: str | None = None) -> dict[str, Any]:
    """DICOM JSON of one search match (keyword -> indexed value), attributes in match order.

    The same JSON pydicom's ``Dataset.to_json_dict`` gives (tests/viewer_api/test_dicomjson.py
    holds it to that): UIDs and integers, most of a large instance search, are written directly;
    every other value goes through pydicom once (values repeat from match to match).
    """
    document: dict[str, Any] = {}
    for keyword, value in match.items():
        tag, vr = _ENCODING.get(keyword) or _tag_and_vr(keyword)
        if value is None or value == "":
            document[tag] = {"vr": vr}
        elif vr == "UI" and type(value) is str and not value.strip(_UID_CHARACTERS):
            document[tag] = {"vr": vr, "Value": [value]}  # one value, nothing to strip
        elif vr in _INTEGER_VRS and type(value) is int:
            document[tag] = {"vr": vr, "Value": [value]}
        else:
            document[tag] = _element_json(keyword, value)
    if retrieve_url is not None:
        document[_RETRIEVE_URL] = (
            {"vr": "UR", "Value": [retrieve_url]}
            if retrieve_url == retrieve_url.strip(" ") and "\\" not in retrieve_url
            else _element_json("RetrieveURL", retrieve_url)
        )
    return document


_UID_CHARACTERS = "0123456789."
_INTEGER_VRS = frozenset(("IS", "US", "UL", "SS", "SL"))
_RETRIEVE_URL = f"{tag_for_keyword('RetrieveURL'):08X}"


_ENCODING: dict[str, tuple[str, str]] = {}  # keyword -> (JSON key, VR)


def _tag_and_vr(keyword: str) -> tuple[str, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not a DICOM keyword")
    _ENCODING[keyword] = f"{tag:08X}", dictionary_VR(tag)
    return _ENCODING[keyword]


@lru_cache(maxsize=4096, typed=True)
def _element_json(keyword: str, value: Any) -> dict[str, Any]:
    """pydicom's DICOM JSON of one attribute (returned shared: callers only serialize it)."""
    ds = Dataset()
    if keyword == "ModalitiesInStudy":
        ds.ModalitiesInStudy = str(value).split("\\")
    else:
        setattr(ds, keyword, value)
    [element] = ds.to_json_dict().values()
    return dict(element)
