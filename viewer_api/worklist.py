"""The radiologist's worklist: ``GET /api/v1/worklist`` (see pacs.worklist for the order).

Filters are query parameters, each given at most once; a list is comma-separated:

- ``review_status``: unread, in_review, final
- ``ai_status``: not_queued, queued, running, done, failed, not_applicable
- ``modality``: modalities in the study (any of them), e.g. ``CT`` or ``CT,MR``
- ``StudyDate``: a DICOM date or range (``20240101``, ``20240101-20240630``, ``-20231231``),
  or ``from`` and/or ``to`` (``YYYYMMDD`` or ``YYYY-MM-DD``, inclusive) instead
- ``PatientName``, ``PatientID``: matched as in QIDO-RS (``*`` and ``?`` wild cards; names
  in any case)
- ``facility``: facility names
- ``limit`` (default 50; more than 1000 is clamped to 1000, as QIDO-RS does), ``offset``

An unknown parameter or a malformed value is a 400 that says which and why: a filter the
server silently ignored would show a radiologist the wrong list.
"""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from pacs.review import ReviewStatus
from pacs.worklist import AiStatus, WorklistItem, WorklistQuery, worklist
from viewer_api.auth import Radiologist
from viewer_api.deps import ArchiveDep, scope
from viewer_api.dicomjson import public_root
from viewer_api.parameters import integer
from viewer_api.problems import BadRequest

router = APIRouter(prefix="/api/v1", tags=["Worklist"])

DEFAULT_LIMIT = 50
MAX_LIMIT = 1_000  # as QIDO-RS: a larger limit is clamped to it
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_LIST = frozenset(("review_status", "ai_status", "modality", "facility"))
PARAMETERS = _LIST | {"StudyDate", "from", "to", "PatientName", "PatientID", "limit", "offset"}
_Member = TypeVar("_Member", AiStatus, ReviewStatus)


class Links(BaseModel):
    """Where to open the study: OHIF on our DICOMweb, our review API, the AI findings."""

    viewer: str = Field(description="OHIF at /viewer?StudyInstanceUIDs=<uid>")
    review: str
    findings: str


class WorklistEntry(BaseModel):
    """One study of the worklist."""

    StudyInstanceUID: str
    PatientName: str | None
    PatientID: str
    StudyDate: str | None
    StudyTime: str | None
    StudyDescription: str | None
    AccessionNumber: str | None
    ModalitiesInStudy: list[str]
    facility: str
    flagged: bool = Field(description="The AI reported at least one nodule")
    nodules: int = Field(description="Reportable nodules of the current AI run")
    largest_diameter_mm: float | None
    highest_probability: float | None
    ai_status: AiStatus
    ai_reason: str | None = Field(description="Why not applicable, or why the job failed")
    review_status: ReviewStatus
    links: Links


class WorklistResponse(BaseModel):
    """A page of the worklist, in worklist order, and how many studies match in all."""

    items: list[WorklistEntry]
    total: int
    limit: int
    offset: int


@router.get("/worklist")
def get_worklist(
    _: Radiologist,
    request: Request,
    archive: ArchiveDep,
    review_status: Annotated[str | None, Query(description="unread,in_review,final")] = None,
    ai_status: Annotated[str | None, Query(description="AI states, comma-separated")] = None,
    modality: Annotated[str | None, Query(description="e.g. CT or CT,MR")] = None,
    StudyDate: Annotated[str | None, Query(description="DICOM date or range")] = None,
    date_from: Annotated[str | None, Query(alias="from", description="YYYYMMDD")] = None,
    date_to: Annotated[str | None, Query(alias="to", description="YYYYMMDD")] = None,
    PatientName: Annotated[str | None, Query(description="wild cards * ?")] = None,
    PatientID: Annotated[str | None, Query()] = None,
    facility: Annotated[str | None, Query(description="facility names")] = None,
    limit: Annotated[str | None, Query(description=f"1 to {MAX_LIMIT}")] = None,
    offset: Annotated[str | None, Query()] = None,
) -> WorklistResponse:
    """Studies with their AI and review state: AI-flagged first, by certainty, then diameter,
    then oldest; unflagged and not-analysed studies too."""
    _check_names(request)
    matching = {
        keyword: value
        for keyword, value in (
            ("PatientName", PatientName),
            ("PatientID", PatientID),
            ("StudyDate", _study_date(StudyDate, date_from, date_to)),
            ("ModalitiesInStudy", None if modality is None else modality.replace(",", "\\")),
        )
        if value is not None
    }
    query = WorklistQuery(
        matching,
        ai=frozenset(_values("ai_status", ai_status, AiStatus)),
        review=frozenset(_values("review_status", review_status, ReviewStatus)),
        facilities=frozenset(v.strip() for v in (facility or "").split(",") if v.strip()),
        limit=_limit(limit),
        offset=0 if offset is None else integer("offset", offset, 0, 2**31 - 1),
        scope=scope(request),
    )
    with archive.db.read() as conn:
        page = worklist(conn, query)
    root = public_root(request)
    return WorklistResponse(
        items=[_entry(item, root) for item in page.items],
        total=page.total,
        limit=query.limit,
        offset=query.offset,
    )


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    return min(integer("limit", value, 1, 2**63 - 1), MAX_LIMIT)


def _check_names(request: Request) -> None:
    """Each parameter known and given once (lists are comma-separated)."""
    seen: set[str] = set()
    for name, _value in request.query_params.multi_items():
        if name not in PARAMETERS:
            raise BadRequest(f"{name[:32]!r} is not a worklist parameter")
        if name in seen:
            hint = " (separate values with commas)" if name in _LIST else ""
            raise BadRequest(f"{name} given more than once{hint}")
        seen.add(name)


def _values(name: str, value: str | None, kind: type[_Member]) -> list[_Member]:
    """The comma-separated members of *kind* in *value*; BadRequest naming the bad one."""
    found = []
    for part in (value or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            found.append(kind(part))
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            raise BadRequest(f"{name}: {part[:32]!r} is not one of {allowed}") from None
    return found


def _study_date(study_date: str | None, low: str | None, high: str | None) -> str | None:
    """One DICOM date matching value (PS3.4 C.2.2.2.5) from StudyDate or from/to."""
    if low is None and high is None:
        return study_date
    if study_date is not None:
        raise BadRequest("give StudyDate or from/to, not both")
    # A DICOM range; pacs.matching checks each bound is a real date.
    return f"{_dicom_date('from', low)}-{_dicom_date('to', high)}"


def _dicom_date(name: str, value: str | None) -> str:
    if value is None:
        return ""
    iso = _ISO_DATE.fullmatch(value)
    if iso:
        return "".join(iso.groups())
    if not re.fullmatch(r"\d{8}", value):
        raise BadRequest(f"{name} must be a date, YYYYMMDD or YYYY-MM-DD, not {value[:32]!r}")
    return value


def _entry(item: WorklistItem, root: str) -> WorklistEntry:
    uid = item.StudyInstanceUID
    return WorklistEntry(
        StudyInstanceUID=uid,
        PatientName=item.PatientName,
        PatientID=item.PatientID,
        StudyDate=item.StudyDate,
        StudyTime=item.StudyTime,
        StudyDescription=item.StudyDescription,
        AccessionNumber=item.AccessionNumber,
        ModalitiesInStudy=item.ModalitiesInStudy,
        facility=item.facility,
        flagged=item.flagged,
        nodules=item.nodules,
        largest_diameter_mm=_rounded(item.largest_diameter_mm, 2),
        highest_probability=_rounded(item.highest_probability, 4),
        ai_status=item.ai_status,
        ai_reason=item.ai_reason,
        review_status=item.review_status,
        links=Links(
            viewer=f"{root}/viewer?StudyInstanceUIDs={uid}",
            review=f"{root}/api/v1/studies/{uid}/review",
            findings=f"{root}/api/v1/studies/{uid}/findings",
        ),
    )


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
