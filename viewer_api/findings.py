"""AI findings of a study: ``GET /api/v1/studies/{study}/findings``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Final, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from pacs.jobs import Job, JobStatus
from pacs.results import NODULE_DETECTION, Finding, Run, RunOutcome, StudyFindings, study_findings
from viewer_api.auth import ResultReader
from viewer_api.deps import ArchiveDep, StudyDep
from viewer_api.problems import NotFound

router = APIRouter(prefix="/api/v1", tags=["AI findings"])

#: The status of a study the AI has not been asked about yet (never stable).
NOT_QUEUED: Final = "not_queued"


class JobState(BaseModel):
    """The newest nodule-detection job of the study."""

    id: int
    status: JobStatus
    attempts: int
    max_attempts: int
    last_error: str | None


class Model(BaseModel):
    name: str
    version: str


class Results(BaseModel):
    """SOP Instance UIDs of the DICOM results stored in the study (TID 1500 SR, SEG)."""

    SR: str | None
    SEG: str | None


class RejectedSeries(BaseModel):
    SeriesInstanceUID: str
    reason: str


class RunState(BaseModel):
    """The current run: what the model did with the study."""

    id: int
    job_id: int
    SeriesInstanceUID: str | None
    model: Model
    outcome: RunOutcome
    seconds: float
    created_at: str  # ISO 8601, as stored
    results: Results
    rejected_series: list[RejectedSeries]
    prior: PriorStudyState | None = Field(
        default=None, description="the patient's earlier CT the findings were compared with"
    )


class PriorStudyState(BaseModel):
    StudyInstanceUID: str
    interval_days: int | None = Field(description="days between the two StudyDates")


class Position(BaseModel):
    x: float
    y: float
    z: float


class PriorChange(BaseModel):
    """The finding against the patient's prior CT (``run.prior``), after registration."""

    change: Literal["new", "stable", "grown", "shrunk"]
    prior_tracking_uid: str | None = Field(description="the predecessor; null when new")
    prior_diameter_mm: float | None
    diameter_change_mm: float | None
    volume_change_mm3: float | None
    doubling_time_days: float | None = Field(
        description="volume doubling time; null when not computed (not grown, or no dates)"
    )


class NoduleCharacter(BaseModel):
    """The nodule measured on its outline: type (with the classifier's probability), long
    and perpendicular short axis on the axial slice of greatest extent, their mean, volume,
    and the solid component's mean diameter (null for ground glass)."""

    type: Literal["solid", "part-solid", "ground-glass"]
    type_probability: float
    long_axis_mm: float
    short_axis_mm: float
    mean_diameter_mm: float
    volume_mm3: float
    solid_diameter_mm: float | None


class Nodule(BaseModel):
    """One finding: centre in DICOM patient coordinates (LPS, mm); ``diameter_mm`` is the
    detector's; ``character`` is null when the nodule was not outlined."""

    tracking_uid: str
    position_mm: Position
    coordinate_system: Literal["DICOM patient (LPS)"] = "DICOM patient (LPS)"
    diameter_mm: float
    probability: float
    character: NoduleCharacter | None = None
    prior: PriorChange | None = Field(
        default=None, description="against the prior CT; null when none was compared"
    )


class FindingsResponse(BaseModel):
    """``status`` is the newest job's state (``not_queued`` before the study was ever stable);
    ``run`` and ``findings`` are the current result, which a newer queued or running job may
    be about to replace."""

    StudyInstanceUID: str
    status: JobStatus | Literal["not_queued"]
    job: JobState | None
    run: RunState | None
    findings: list[Nodule]

    @classmethod
    def of(cls, found: StudyFindings) -> FindingsResponse:
        run = found.run
        return cls(
            StudyInstanceUID=found.StudyInstanceUID,
            status=NOT_QUEUED if found.status is None else found.status,
            job=None if found.job is None else _job(found.job),
            run=None if run is None else _run(run),
            findings=[] if run is None else [_nodule(f) for f in run.findings],
        )


@router.get("/studies/{study}/findings")
def get_study_findings(_: ResultReader, study: StudyDep, archive: ArchiveDep) -> FindingsResponse:
    """The study's lung-nodule findings (centres in patient LPS mm) and its job status."""
    # The token is checked first (dependencies resolve in order): no 404 before a 401.
    with archive.db.read() as conn:
        found = study_findings(conn, study, NODULE_DETECTION)
    if found is None:  # removed since StudyDep saw it
        raise NotFound(f"no study {study}")
    return FindingsResponse.of(found)


def _job(job: Job) -> JobState:
    return JobState(
        id=job.id,
        status=job.status,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        last_error=job.last_error,
    )


def _run(run: Run) -> RunState:
    return RunState(
        id=run.id,
        job_id=run.job_id,
        SeriesInstanceUID=run.SeriesInstanceUID,
        model=Model(name=run.model_name, version=run.model_version),
        outcome=run.outcome,
        seconds=round(run.seconds, 3),
        created_at=run.created_at.isoformat(),
        results=Results(SR=run.sr_sop_instance_uid, SEG=run.seg_sop_instance_uid),
        rejected_series=[
            RejectedSeries(SeriesInstanceUID=r.SeriesInstanceUID, reason=r.reason)
            for r in run.rejections
        ],
        prior=None
        if run.prior is None
        else PriorStudyState(
            StudyInstanceUID=run.prior.StudyInstanceUID, interval_days=run.prior.interval_days
        ),
    )


def _nodule(f: Finding) -> Nodule:
    return Nodule(
        tracking_uid=f.tracking_uid,
        position_mm=Position(x=f.x, y=f.y, z=f.z),
        diameter_mm=round(f.diameter_mm, 2),
        probability=round(f.probability, 4),
        character=None
        if f.character is None
        else NoduleCharacter.model_validate(asdict(f.character)),
        prior=None if f.change is None else _prior_change(f),
    )


def _prior_change(f: Finding) -> PriorChange:
    before = f.prior_diameter_mm
    return PriorChange(
        change=f.change,  # type: ignore[arg-type]  # one of the four, as saved
        prior_tracking_uid=f.prior_tracking_uid,
        prior_diameter_mm=None if before is None else round(before, 2),
        diameter_change_mm=None if before is None else round(f.reported_diameter_mm - before, 2),
        volume_change_mm3=None if f.volume_change_mm3 is None else round(f.volume_change_mm3, 1),
        doubling_time_days=None if f.doubling_time_days is None else round(f.doubling_time_days, 1),
    )
