"""QIDO-RS (PS3.18 10.6): search for studies, series and instances, from the one search."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pacs.facilities import Scope
from pacs.ingest import Archive
from pacs.search import ATTRIBUTES, Level, Query, count_matches, search
from pacs.uids import is_valid_uid
from viewer_api.audit import audited_response
from viewer_api.auth import Reader
from viewer_api.deps import scope
from viewer_api.dicomjson import (
    MEDIA_TYPE,
    accepts_json,
    base_url,
    from_match,
    keyword_of,
    public_root,
)
from viewer_api.parameters import integer
from viewer_api.problems import BadRequest, NotAcceptable

router = APIRouter(prefix="/dicom-web", tags=["QIDO-RS"])

# PS3.18 Table 10.6.3-3..5: attributes returned without includefield.
DEFAULT_FIELDS = {
    Level.STUDY: (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
        "StudyInstanceUID",
    ),
    Level.IMAGE: (
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "NumberOfFrames",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    ),
}
# Matches one response returns when the client gives no limit, and at most (a larger limit is
# clamped to it, with the Warning that says more results exist: PS3.18 8.3.4.4).
DEFAULT_LIMIT = 100
MAX_LIMIT = 1_000


@router.get("/studies")
def search_studies(request: Request, _: Reader) -> Response:
    return _search(request, Level.STUDY, {})


@router.get("/series")
def search_all_series(request: Request, _: Reader) -> Response:
    return _search(request, Level.SERIES, {})


@router.get("/studies/{study}/series")
def search_series(request: Request, study: str, _: Reader) -> Response:
    return _search(request, Level.SERIES, {"StudyInstanceUID": _uid(study)})


@router.get("/instances")
def search_all_instances(request: Request, _: Reader) -> Response:
    return _search(request, Level.IMAGE, {})


@router.get("/studies/{study}/instances")
def search_study_instances(request: Request, study: str, _: Reader) -> Response:
    return _search(request, Level.IMAGE, {"StudyInstanceUID": _uid(study)})


@router.get("/studies/{study}/series/{series}/instances")
def search_series_instances(request: Request, study: str, series: str, _: Reader) -> Response:
    fixed = {"StudyInstanceUID": _uid(study), "SeriesInstanceUID": _uid(series)}
    return _search(request, Level.IMAGE, fixed)


def _search(request: Request, level: Level, fixed: dict[str, str]) -> Response:
    """Run one QIDO-RS search; when more matches exist than this response carries, say how
    many in a Warning header (PS3.18 8.3.4.4 and 10.6.3.3), so a client can page with
    ``offset`` instead of believing it has everything."""
    accept = request.headers.get("accept")
    if not accepts_json(accept):
        raise NotAcceptable(f"QIDO-RS answers {MEDIA_TYPE}, not {accept}")
    query = parse_query(request.query_params.multi_items(), level, fixed, scope(request))
    archive: Archive = request.app.state.archive
    base = base_url(request)
    with archive.db.read() as conn:
        matches = [from_match(m, _retrieve_url(base, level, m)) for m in search(conn, query)]
        more = 0
        if len(matches) == query.limit:
            more = count_matches(conn, query) - query.offset - len(matches)
    headers = {}
    if more > 0:
        host = urlsplit(public_root(request)).hostname or "pacs"
        headers["Warning"] = (
            f"299 {host}: There are {more} additional results that can be requested"
        )
    return audited_response(request, JSONResponse(matches, media_type=MEDIA_TYPE, headers=headers))


def parse_query(
    params: list[tuple[str, str]], level: Level, fixed: dict[str, str], scope: Scope
) -> Query:
    """A Query from QIDO-RS parameters (PS3.18 8.3.4) over the studies *scope* sees;
    BadRequest when malformed."""
    matching = dict(fixed)
    returned = list(DEFAULT_FIELDS[level])
    limit, offset, fuzzy = DEFAULT_LIMIT, 0, False
    for name, value in params:
        if name == "limit":
            limit = min(integer(name, value, 1, 2**63 - 1), MAX_LIMIT)
        elif name == "offset":
            offset = integer(name, value, 0, 2**31 - 1)
        elif name == "fuzzymatching":
            fuzzy = value.lower() == "true"
        elif name == "includefield":
            returned += _include(value, level)
        else:
            keyword = keyword_of(name)
            if keyword is None or keyword not in ATTRIBUTES:
                raise BadRequest(f"{name} is not an attribute this archive can match on")
            if keyword in fixed and value != fixed[keyword]:  # the path names the entity
                raise BadRequest(f"{name}={value!r} contradicts the {keyword} in the path")
            matching[keyword] = value
    if fuzzy:  # person names: the value anywhere in the name, any case
        for keyword, value in matching.items():
            if ATTRIBUTES[keyword].vr == "PN" and value:
                matching[keyword] = f"*{value.strip('*')}*"
    return Query(
        level,
        matching,
        tuple(dict.fromkeys(returned)),
        limit=limit,
        offset=offset,
        scope=scope,
    )


def _include(value: str, level: Level) -> list[str]:
    fields = []
    depth = list(Level).index(level)
    for part in value.split(","):
        part = part.strip()
        if part == "all":
            fields += [k for k, a in ATTRIBUTES.items() if list(Level).index(a.level) <= depth]
            continue
        keyword = keyword_of(part)
        if keyword is None:
            raise BadRequest(f"includefield {part!r} is neither a keyword nor a tag")
        attribute = ATTRIBUTES.get(keyword)
        if attribute is not None and list(Level).index(attribute.level) <= depth:
            fields.append(keyword)  # attributes the index does not hold are not returned
    return fields


def _retrieve_url(base: str, level: Level, match: dict[str, Any]) -> str | None:
    study = match.get("StudyInstanceUID")
    if level is Level.STUDY:
        return f"{base}/studies/{study}"
    if level is Level.SERIES:
        return f"{base}/studies/{study}/series/{match.get('SeriesInstanceUID')}"
    return (
        f"{base}/studies/{study}/series/{match.get('SeriesInstanceUID')}"
        f"/instances/{match.get('SOPInstanceUID')}"
    )


def _uid(value: str) -> str:
    if not is_valid_uid(value):
        raise BadRequest(f"{value!r} is not a valid UID")
    return value
