"""AI results in the index: one run per job, its findings, and a ``findings.ready`` change.

The archive stores what the AI found as first-class data next to the images. A run is the
result of exactly one job: saving a run for a job that already has one replaces it (a worker
killed after saving but before reporting ``done`` re-runs the job; the job still has one
result). Each run also carries a summary of its reportable findings (count, highest
probability, largest diameter), written in the same transaction, so that the worklist sorts
studies by what the AI found from the run rows alone.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import Connection, delete, select

from pacs.changefeed import ChangeKind, append_change
from pacs.index import Database
from pacs.index.schema import ai_run, finding, instance, job, series, study
from pacs.jobs import Job, JobStatus, latest_job

#: The job kind that produces runs: lung-nodule detection on a stable study.
NODULE_DETECTION = "nodule-detection"


class RunOutcome(enum.StrEnum):
    """What a run did with its study (the stored ``ai_run.outcome`` values)."""

    #: A series was selected and went through the model (findings may be empty).
    ANALYSED = "analysed"
    #: No series passed the selection rules (each rejected one says why): nothing to analyse.
    NO_ELIGIBLE_SERIES = "no_eligible_series"


@dataclass(frozen=True)
class Character:
    """What the nodule's outline says of it (see models.characterise.NoduleCharacter).

    ``type`` is ``solid``, ``part-solid`` or ``ground-glass``; the axes are measured on the
    axial slice of greatest extent, ``mean_diameter_mm`` is their average, and
    ``solid_diameter_mm`` the mean diameter of the solid component (None: ground glass).
    """

    type: str
    type_probability: float
    long_axis_mm: float
    short_axis_mm: float
    mean_diameter_mm: float
    volume_mm3: float
    solid_diameter_mm: float | None = None


#: Character attributes stored as ``finding`` columns of the same name (``type`` is
#: ``nodule_type``).
CHARACTER_COLUMNS = (
    "type_probability",
    "long_axis_mm",
    "short_axis_mm",
    "mean_diameter_mm",
    "volume_mm3",
    "solid_diameter_mm",
)


@dataclass(frozen=True)
class Finding:
    """One nodule: centre in patient LPS mm, diameter in mm, probability 0..1, and its
    character when it was outlined."""

    x: float
    y: float
    z: float
    diameter_mm: float
    probability: float
    tracking_uid: str = field(default_factory=lambda: str(generate_uid()))
    character: Character | None = None
    #: Against the patient's prior CT (all None: no prior compared; ``change`` "new" with no
    #: predecessor): new, stable, grown or shrunk, the predecessor, and the volume change and
    #: doubling time (None where not computed: not grown).
    change: str | None = None
    prior_tracking_uid: str | None = None
    prior_diameter_mm: float | None = None
    volume_change_mm3: float | None = None
    doubling_time_days: float | None = None

    @property
    def reported_diameter_mm(self) -> float:
        """The mean diameter measured on the outline when there is one, else the detector's
        sphere diameter: the size the review, the comparison and Lung-RADS read."""
        return self.diameter_mm if self.character is None else self.character.mean_diameter_mm

    def describe_change(self) -> str:
        """The change against the prior CT in words ("" when none was compared)."""
        if self.change is None:
            return ""
        if self.prior_diameter_mm is None:
            return f"{self.change} since the prior CT"
        delta = self.reported_diameter_mm - self.prior_diameter_mm
        text = (
            f"{self.change} since the prior CT "
            f"({self.prior_diameter_mm:.1f} mm then, {delta:+.1f} mm"
        )
        if self.doubling_time_days is not None:
            text += f", volume doubling time {self.doubling_time_days:.0f} days"
        return text + ")"


@dataclass(frozen=True)
class Rejection:
    """A series the selection did not analyse, and why."""

    SeriesInstanceUID: str
    reason: str


@dataclass(frozen=True)
class Run:
    """A saved run: the result of one job, with its findings (most probable first)."""

    id: int
    job_id: int
    StudyInstanceUID: str
    SeriesInstanceUID: str | None
    model_name: str
    model_version: str
    outcome: RunOutcome
    rejections: list[Rejection]
    seconds: float
    created_at: datetime
    findings: list[Finding]
    sr_sop_instance_uid: str | None = None
    seg_sop_instance_uid: str | None = None
    #: The model's operating point the findings were reported at (None: saved before it was
    #: recorded; every finding saved then was a reported one).
    report_threshold: float | None = None
    #: The prior study the findings were compared with, and the days between the two.
    prior: PriorComparison | None = None


@dataclass(frozen=True)
class PriorComparison:
    """The patient's earlier analysed study a run's findings were compared with."""

    StudyInstanceUID: str
    interval_days: int | None


@dataclass(frozen=True)
class PriorStudy:
    """The patient's latest earlier study with an analysed run (see ``prior_study``)."""

    StudyInstanceUID: str
    StudyDate: str
    run: Run
    #: Days from its StudyDate to the current study's (None: a date cannot be read).
    interval_days: int | None


@dataclass(frozen=True)
class NewRun:
    """The result of one job, to be saved (see save_run)."""

    job_id: int
    StudyInstanceUID: str
    SeriesInstanceUID: str | None
    model: tuple[str, str]  # name, version
    outcome: RunOutcome
    rejections: list[Rejection]
    findings: list[Finding]
    seconds: float
    #: SOP Instance UIDs of the SR and SEG already stored for it.
    sr_sop_instance_uid: str | None = None
    seg_sop_instance_uid: str | None = None
    #: The model's ``report_threshold``: findings at or above it are reportable (they flag
    #: the study on the worklist). None: every finding given is a reported one.
    report_threshold: float | None = None
    prior: PriorComparison | None = None


@dataclass(frozen=True)
class RunSummary:
    """What a run's reportable findings add up to, as stored on its ``ai_run`` row."""

    reportable: int
    max_probability: float | None
    max_diameter_mm: float | None

    @classmethod
    def of(cls, findings: list[Finding], report_threshold: float | None) -> RunSummary:
        """The summary of *findings* reported at *report_threshold* (None: all of them)."""
        reported = [
            f for f in findings if report_threshold is None or f.probability >= report_threshold
        ]
        return cls(
            len(reported),
            max((f.probability for f in reported), default=None),
            max((f.diameter_mm for f in reported), default=None),
        )


@dataclass(frozen=True)
class StudyFindings:
    """What the API and ``pacs findings`` show for a study.

    Attributes
    ----------
    StudyInstanceUID : str
    job : Job or None
        The newest job of the kind (None: never queued, the study was never stable).
    run : Run or None
        The current result (see current_run), which a newer queued or running job may be
        about to replace.
    """

    StudyInstanceUID: str
    job: Job | None
    run: Run | None

    @property
    def status(self) -> JobStatus | None:
        """The newest job's state; None before the study was ever stable (not queued)."""
        return None if self.job is None else self.job.status


def save_run(db: Database, new: NewRun) -> int:
    """Store a job's run, its summary and findings, and append ``findings.ready``, in one
    transaction; the new run's id."""
    now = datetime.now(UTC)
    summary = RunSummary.of(new.findings, new.report_threshold)
    with db.write() as conn:
        conn.execute(delete(ai_run).where(ai_run.c.job_id == new.job_id))
        run_id = int(
            conn.execute(
                ai_run.insert()
                .values(
                    job_id=new.job_id,
                    study_instance_uid=new.StudyInstanceUID,
                    series_instance_uid=new.SeriesInstanceUID,
                    model_name=new.model[0],
                    model_version=new.model[1],
                    outcome=new.outcome,
                    rejections=json.dumps(
                        [
                            {"series": r.SeriesInstanceUID, "reason": r.reason}
                            for r in new.rejections
                        ]
                    ),
                    seconds=new.seconds,
                    created_at=now,
                    sr_sop_instance_uid=new.sr_sop_instance_uid,
                    seg_sop_instance_uid=new.seg_sop_instance_uid,
                    report_threshold=new.report_threshold,
                    reportable_count=summary.reportable,
                    max_probability=summary.max_probability,
                    max_diameter_mm=summary.max_diameter_mm,
                    prior_study_instance_uid=None
                    if new.prior is None
                    else new.prior.StudyInstanceUID,
                    prior_interval_days=None if new.prior is None else new.prior.interval_days,
                    study_fk=select(study.c.id)
                    .where(study.c.study_instance_uid == new.StudyInstanceUID)
                    .scalar_subquery(),
                )
                .returning(ai_run.c.id)
            ).scalar_one()
        )
        if new.findings:
            conn.execute(
                finding.insert(),
                [
                    {
                        "run_fk": run_id,
                        "tracking_uid": f.tracking_uid,
                        "x": f.x,
                        "y": f.y,
                        "z": f.z,
                        "diameter_mm": f.diameter_mm,
                        "probability": f.probability,
                        **_character_columns(f.character),
                        "change": f.change,
                        "prior_tracking_uid": f.prior_tracking_uid,
                        "prior_diameter_mm": f.prior_diameter_mm,
                        "volume_change_mm3": f.volume_change_mm3,
                        "doubling_time_days": f.doubling_time_days,
                    }
                    for f in new.findings
                ],
            )
        append_change(
            conn,
            ChangeKind.FINDINGS_READY,
            new.StudyInstanceUID,
            now=now,
            SeriesInstanceUID=new.SeriesInstanceUID,
            detail={
                "run": run_id,
                "job": new.job_id,
                "findings": len(new.findings),
                "outcome": new.outcome,
            },
        )
    return run_id


def runs_of_study(conn: Connection, StudyInstanceUID: str) -> list[Run]:
    """The study's runs, newest first."""
    rows = conn.execute(
        select(ai_run)
        .where(ai_run.c.study_instance_uid == StudyInstanceUID)
        .order_by(ai_run.c.id.desc())
    ).all()
    return [_run(conn, row) for row in rows]


def current_run(conn: Connection, StudyInstanceUID: str) -> Run | None:
    """The run to show: the newest whose job finished ``done`` (not superseded), else the
    newest of any."""
    done = conn.execute(
        select(ai_run)
        .join(job, job.c.id == ai_run.c.job_id)
        .where(ai_run.c.study_instance_uid == StudyInstanceUID, job.c.status == JobStatus.DONE)
        .order_by(ai_run.c.id.desc())
        .limit(1)
    ).first()
    if done is not None:
        return _run(conn, done)
    runs = runs_of_study(conn, StudyInstanceUID)
    return runs[0] if runs else None


def read_rejections(stored: str) -> list[Rejection]:
    """The rejected series of a run, from the JSON of its ``ai_run.rejections`` column."""
    return [Rejection(item["series"], item["reason"]) for item in json.loads(stored)]


def _run(conn: Connection, r: Any) -> Run:
    found = conn.execute(
        select(finding).where(finding.c.run_fk == r.id).order_by(finding.c.probability.desc())
    ).all()
    return Run(
        id=r.id,
        job_id=r.job_id,
        StudyInstanceUID=r.study_instance_uid,
        SeriesInstanceUID=r.series_instance_uid,
        model_name=r.model_name,
        model_version=r.model_version,
        outcome=RunOutcome(r.outcome),
        rejections=read_rejections(r.rejections),
        seconds=r.seconds,
        created_at=r.created_at,
        findings=[
            Finding(
                f.x,
                f.y,
                f.z,
                f.diameter_mm,
                f.probability,
                f.tracking_uid,
                _character(f),
                f.change,
                f.prior_tracking_uid,
                f.prior_diameter_mm,
                f.volume_change_mm3,
                f.doubling_time_days,
            )
            for f in found
        ],
        sr_sop_instance_uid=r.sr_sop_instance_uid,
        seg_sop_instance_uid=r.seg_sop_instance_uid,
        report_threshold=r.report_threshold,
        prior=None
        if r.prior_study_instance_uid is None
        else PriorComparison(r.prior_study_instance_uid, r.prior_interval_days),
    )


def _character_columns(character: Character | None) -> dict[str, Any]:
    if character is None:
        return {"nodule_type": None, **dict.fromkeys(CHARACTER_COLUMNS)}
    return {
        "nodule_type": character.type,
        **{name: getattr(character, name) for name in CHARACTER_COLUMNS},
    }


def characters_of_run(conn: Connection, run_id: int | None) -> dict[str, Character]:
    """The character of each outlined finding of the run *run_id*, by tracking UID."""
    if run_id is None:
        return {}
    rows = conn.execute(
        select(finding).where(finding.c.run_fk == run_id, finding.c.nodule_type.is_not(None))
    ).all()
    return {row.tracking_uid: character for row in rows if (character := _character(row))}


def _character(row: Any) -> Character | None:
    if row.nodule_type is None:
        return None
    return Character(row.nodule_type, *(getattr(row, name) for name in CHARACTER_COLUMNS))


def study_findings(conn: Connection, StudyInstanceUID: str, kind: str) -> StudyFindings | None:
    """The newest job of *kind* and the current run of a study; None when the study is
    unknown."""
    known = conn.execute(
        select(study.c.id).where(study.c.study_instance_uid == StudyInstanceUID)
    ).first()
    if known is None:
        return None
    return StudyFindings(
        StudyInstanceUID,
        latest_job(conn, kind, StudyInstanceUID),
        current_run(conn, StudyInstanceUID),
    )


def ai_series_of_study(conn: Connection, StudyInstanceUID: str) -> dict[str, list[str]]:
    """Series of the study holding our own AI results (stored with source ``AI``): series UID
    -> its SOP Instance UIDs."""
    rows = conn.execute(
        select(series.c.series_instance_uid, instance.c.sop_instance_uid)
        .join(instance, instance.c.series_fk == series.c.id)
        .join(study, study.c.id == series.c.study_fk)
        .where(study.c.study_instance_uid == StudyInstanceUID, instance.c.source == "AI")
    ).all()
    found: dict[str, list[str]] = {}
    for series_uid, sop_uid in rows:
        found.setdefault(series_uid, []).append(sop_uid)
    return found


def prior_study(conn: Connection, StudyInstanceUID: str) -> PriorStudy | None:
    """The same patient's (PatientID and IssuerOfPatientID, in the same facility) latest
    study with an earlier StudyDate whose current run analysed a series; None when the study
    has no date or there is none."""
    current = conn.execute(
        select(study.c.patient_fk, study.c.study_date).where(
            study.c.study_instance_uid == StudyInstanceUID
        )
    ).first()
    if current is None or not current.study_date:
        return None
    earlier = conn.execute(
        select(study.c.study_instance_uid, study.c.study_date)
        .where(
            study.c.patient_fk == current.patient_fk,
            study.c.study_date < current.study_date,
            study.c.study_date != "",
        )
        .order_by(study.c.study_date.desc())
    ).all()
    for uid, when in earlier:
        run = current_run(conn, uid)
        if run is not None and run.outcome == RunOutcome.ANALYSED and run.SeriesInstanceUID:
            return PriorStudy(uid, when, run, _days(when, current.study_date))
    return None


def _days(earlier: str, later: str) -> int | None:
    """Days between two DICOM DA values (YYYYMMDD); None when either is not one."""
    try:
        start, end = (datetime.strptime(v.strip(), "%Y%m%d").date() for v in (earlier, later))
    except ValueError:
        return None
    return (end - start).days
