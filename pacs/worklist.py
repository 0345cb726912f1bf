"""The radiologist's worklist: every study with its AI state and review state, AI-flagged first.

Order (a triage tool never hides a study, it only sorts them):

1. flagged studies first: the current run (see :func:`pacs.results.current_run`) has a
   reportable nodule (probability at or above the model's operating point);
2. then the highest nodule probability, 3. then the largest nodule diameter;
4. then the oldest study (StudyDate, StudyTime, then when the archive first saw it).

Unflagged and never-analysed studies follow in the same order of age. The answer comes from
the index alone: one statement ranks the studies by narrow sort keys (each run row carries
the summary of its reportable findings, written by :func:`pacs.results.save_run`, so no
finding row is read) and one describes the page's studies; no blob is opened.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    FromClause,
    and_,
    case,
    func,
    literal,
    select,
)

from pacs.errors import QueryError
from pacs.facilities import Scope
from pacs.index.schema import ai_run, facility, job, patient, review, study
from pacs.jobs import JobStatus
from pacs.results import NODULE_DETECTION, RunOutcome, read_rejections
from pacs.review import ReviewStatus
from pacs.search import Level, Query, matching_condition

#: Attributes the worklist matches as QIDO-RS and C-FIND do (wild cards, date ranges, lists).
MATCHING_KEYWORDS = frozenset(("PatientName", "PatientID", "StudyDate", "ModalitiesInStudy"))
#: PS3.5 Table 6.2-1: a facility is named like an LO value.
MAX_FACILITY_LENGTH = 64


class AiStatus(enum.StrEnum):
    """Where the AI is with a study: the state of its newest nodule-detection job."""

    #: No job yet: the study has not been stable (still arriving) or predates the AI.
    NOT_QUEUED = "not_queued"
    QUEUED = "queued"
    RUNNING = "running"
    #: Analysed; the current run holds the findings (maybe none).
    DONE = "done"
    #: The job failed on every attempt (its last error says why).
    FAILED = "failed"
    #: Done, but no series was eligible (not a chest CT, too few slices, ...): the reasons
    #: of the series selection say why.
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True)
class WorklistQuery:
    """Filters and paging of a worklist request; valid on construction.

    Attributes
    ----------
    matching : dict
        DICOM keyword (one of MATCHING_KEYWORDS) -> matching value, as in QIDO-RS and C-FIND
        (PS3.4 C.2.2.2: wild cards in names and IDs, ``A-B`` date ranges, lists of modalities).
    ai, review : frozenset
        Only studies in one of these AI or review states (empty: any).
    facilities : frozenset of str
        Only studies of patients of these facilities, by name (empty: any).
    limit, offset : int
        The page: at most *limit* studies from position *offset* of the whole order.
    scope : Scope
        The facilities whose studies (own or shared with them) the reader may see.

    Raises
    ------
    QueryError
        A keyword the worklist does not match on, a malformed value (by its VR), a facility
        name that cannot be one, or negative paging.
    """

    matching: dict[str, str] = field(default_factory=dict)
    ai: frozenset[AiStatus] = frozenset()
    review: frozenset[ReviewStatus] = frozenset()
    facilities: frozenset[str] = frozenset()
    limit: int = 50
    offset: int = 0
    scope: Scope = field(kw_only=True)
    query: Query = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.matching) - MATCHING_KEYWORDS)
        if unknown:
            raise QueryError(f"the worklist cannot match on {', '.join(unknown)}")
        for name in self.facilities:
            if not name or len(name) > MAX_FACILITY_LENGTH:
                raise QueryError(f"facility: {name[:16]!r} is not a facility name")
        if self.limit < 0 or self.offset < 0:
            raise QueryError("limit and offset must not be negative")
        # Checks every value against its VR (pacs.matching), as QIDO-RS and C-FIND do.
        object.__setattr__(
            self, "query", Query(Level.STUDY, dict(self.matching), (), scope=self.scope)
        )


@dataclass(frozen=True)
class WorklistItem:
    """One study on the worklist (values as indexed; DICOM keywords for DICOM attributes)."""

    StudyInstanceUID: str
    PatientName: str | None
    PatientID: str
    StudyDate: str | None
    StudyTime: str | None
    StudyDescription: str | None
    AccessionNumber: str | None
    ModalitiesInStudy: list[str]
    facility: str
    created_at: datetime
    #: The current run has a reportable nodule.
    flagged: bool
    #: Reportable nodules of the current run (0 without one).
    nodules: int
    largest_diameter_mm: float | None
    highest_probability: float | None
    ai_status: AiStatus
    #: Why the AI did not analyse the study (not_applicable) or failed (failed); else None.
    ai_reason: str | None
    review_status: ReviewStatus


@dataclass(frozen=True)
class WorklistPage:
    """A page of the worklist and how many studies the filters match in all."""

    items: list[WorklistItem]
    total: int


def worklist(
    conn: Connection, request: WorklistQuery, kind: str = NODULE_DETECTION
) -> WorklistPage:
    """The page of the worklist *request* asks for, in worklist order, and the total.

    Parameters
    ----------
    conn : Connection
        A read transaction on the index (both statements see the same snapshot).
    request : WorklistQuery
        Filters and paging.
    kind : str
        The job kind whose newest job gives the AI status.
    """
    parts = _Parts(kind)
    conditions = parts.conditions(request)
    # 1. Rank: the ids of the page's studies, from the sort keys alone (a sort of narrow rows).
    #    With filters on the AI or review state, the same pass counts the matches (they are
    #    known only once each study's state is); else a count of the studies alone is cheaper.
    derived = bool(request.ai or request.review)
    ranked = (
        select(study.c.id, (func.count().over() if derived else literal(None)).label("total"))
        .select_from(parts.joined(request))
        .where(*conditions)
        .order_by(*parts.order)
        .limit(request.limit)
        .offset(request.offset)
    )
    ids, total = [], None
    for row in conn.execute(ranked):
        ids.append(row.id)
        total = row.total
    if total is None:  # not counted yet, or an empty page (past the end, or no match)
        counted = select(func.count()).select_from(parts.joined(request, ranking=False))
        total = conn.execute(counted.where(*conditions)).scalar_one()
    # 2. Describe the page's studies.
    described = select(*parts.columns).select_from(parts.joined(None)).where(study.c.id.in_(ids))
    rows = {row.id: row for row in conn.execute(described)} if ids else {}
    return WorklistPage([_item(rows[i]) for i in ids], int(total))


class _Parts:
    """The pieces of the worklist statements: AI and review state, columns, filters, order.

    A study's current run and newest job are correlated subqueries (one index lookup each per
    study, as pacs.results.current_run and pacs.jobs.latest_job pick them for one study);
    the run row carries the summary the order needs.
    """

    def __init__(self, kind: str) -> None:
        uid = study.c.study_instance_uid
        # The current run: the newest whose job is done, else the newest of any.
        candidate, run_job = ai_run.alias("candidate"), job.alias("run_job")
        current_run_id = (
            select(candidate.c.id)
            .select_from(candidate.outerjoin(run_job, run_job.c.id == candidate.c.job_id))
            .where(candidate.c.study_fk == study.c.id)
            .order_by(
                case((run_job.c.status == JobStatus.DONE.value, 0), else_=1),
                candidate.c.id.desc(),
            )
            .limit(1)
            .correlate(study)
            .scalar_subquery()
        )
        # The newest job of *kind*: its state is the AI status.
        newest_job_id = (
            select(job.c.id)
            .where(job.c.kind == kind, job.c.study_instance_uid == uid)
            .order_by(job.c.id.desc())
            .limit(1)
            .correlate(study)
            .scalar_subquery()
        )
        self.run = run = ai_run.alias("run")
        self.newest_job = newest_job = job.alias("newest_job")
        self.run_on = run.c.id == current_run_id
        self.newest_job_on = newest_job.c.id == newest_job_id
        finished = newest_job.c.status.in_([JobStatus.DONE.value, JobStatus.SUPERSEDED.value])
        self.ai_status: ColumnElement[str] = case(
            (newest_job.c.id.is_(None), literal(AiStatus.NOT_QUEUED.value)),
            (
                and_(finished, run.c.outcome == RunOutcome.NO_ELIGIBLE_SERIES.value),
                literal(AiStatus.NOT_APPLICABLE.value),
            ),
            # A superseded job is never a study's newest (a newer one superseded it); if it
            # were, its result is there: done.
            (finished, literal(AiStatus.DONE.value)),
            else_=newest_job.c.status,
        )
        self.review_status: ColumnElement[str] = func.coalesce(
            review.c.status, literal(ReviewStatus.UNREAD.value)
        )
        self.columns = [
            study.c.id,
            study.c.study_instance_uid,
            patient.c.patient_name,
            patient.c.patient_id,
            study.c.study_date,
            study.c.study_time,
            study.c.study_description,
            study.c.accession_number,
            study.c.modalities_in_study,
            facility.c.name.label("facility"),
            study.c.created_at,
            func.coalesce(run.c.reportable_count, 0).label("nodules"),
            run.c.max_diameter_mm,
            run.c.max_probability,
            self.ai_status.label("ai_status"),
            run.c.rejections,
            newest_job.c.last_error,
            self.review_status.label("review_status"),
        ]
        self.order = [
            case((func.coalesce(run.c.reportable_count, 0) > 0, 0), else_=1),  # flagged first
            run.c.max_probability.desc().nulls_last(),
            run.c.max_diameter_mm.desc().nulls_last(),
            # Oldest first; a study without a date or time goes after those with one.
            func.nullif(study.c.study_date, "").asc().nulls_last(),
            func.nullif(study.c.study_time, "").asc().nulls_last(),
            study.c.created_at,
            study.c.id,
        ]

    def joined(self, request: WorklistQuery | None, ranking: bool = True) -> FromClause:
        """study and the rows the order (when *ranking*), the filters of *request* or the
        columns (all of them, for None) read; no more, so a count of studies stays cheap."""
        if request is None:
            patients = ai = reviews = True
        else:
            names = {"PatientName", "PatientID"} & set(request.matching)
            patients = bool(names or request.facilities)
            ai, reviews = bool(request.ai), bool(request.review)
        joined: FromClause = study
        if patients:
            joined = joined.join(patient, patient.c.id == study.c.patient_fk).join(
                facility, facility.c.id == patient.c.facility_id
            )
        if ranking or ai:
            joined = joined.outerjoin(self.run, self.run_on)
        if ai:
            joined = joined.outerjoin(self.newest_job, self.newest_job_on)
        if reviews:
            joined = joined.outerjoin(
                review, review.c.study_instance_uid == study.c.study_instance_uid
            )
        return joined

    def conditions(self, request: WorklistQuery) -> list[ColumnElement[bool]]:
        found = [matching_condition(request.query)]
        if request.facilities:
            found.append(facility.c.name.in_(sorted(request.facilities)))
        if request.ai:
            found.append(self.ai_status.in_(sorted(s.value for s in request.ai)))
        if request.review:
            found.append(self.review_status.in_(sorted(s.value for s in request.review)))
        return found


def _item(row: Any) -> WorklistItem:
    status = AiStatus(row.ai_status)
    reason = None
    if status is AiStatus.NOT_APPLICABLE:
        reason = "no eligible series" + "".join(
            f"; {r.SeriesInstanceUID}: {r.reason}" for r in read_rejections(row.rejections)
        )
    elif status is AiStatus.FAILED:
        reason = row.last_error
    return WorklistItem(
        StudyInstanceUID=row.study_instance_uid,
        PatientName=row.patient_name,
        PatientID=row.patient_id,
        StudyDate=row.study_date or None,
        StudyTime=row.study_time or None,
        StudyDescription=row.study_description,
        AccessionNumber=row.accession_number,
        ModalitiesInStudy=[m for m in (row.modalities_in_study or "").split("\\") if m],
        facility=row.facility,
        created_at=row.created_at,
        flagged=row.nodules > 0,
        nodules=row.nodules,
        largest_diameter_mm=row.max_diameter_mm,
        highest_probability=row.max_probability,
        ai_status=status,
        ai_reason=reason,
        review_status=ReviewStatus(row.review_status),
    )
