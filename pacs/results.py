"""AI results in the index: one run per job, its findings, and a ``findings.ready`` change.

The archive stores what the AI found as first-class data next to the images. A run is the
result of exactly one job: saving a run for a job that already has one replaces it (a worker
killed after saving but before reporting ``done`` re-runs the job; the job still has one
result).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import Connection, delete, select

from pacs.changefeed import ChangeKind, append_change
from pacs.index import Database
from pacs.index.schema import ai_run, finding, instance, job, series, study
from pacs.jobs import latest_job


@dataclass(frozen=True)
class Finding:
    """One nodule: centre in patient LPS mm, diameter in mm, probability 0..1."""

    x: float
    y: float
    z: float
    diameter_mm: float
    probability: float
    tracking_uid: str = field(default_factory=lambda: str(generate_uid()))


@dataclass(frozen=True)
class Rejection:
    SeriesInstanceUID: str
    reason: str


@dataclass(frozen=True)
class Run:
    id: int
    job_id: int
    StudyInstanceUID: str
    SeriesInstanceUID: str | None
    model_name: str
    model_version: str
    outcome: str
    rejections: list[Rejection]
    seconds: float
    created_at: datetime
    findings: list[Finding]
    sr_sop_instance_uid: str | None = None
    seg_sop_instance_uid: str | None = None


#: The job kind that produces runs: lung-nodule detection on a stable study.
NODULE_DETECTION = "nodule-detection"

#: Run outcomes.
ANALYSED = "analysed"
NO_ELIGIBLE_SERIES = "no_eligible_series"


@dataclass(frozen=True)
class NewRun:
    """The result of one job, to be saved (see save_run)."""

    job_id: int
    StudyInstanceUID: str
    SeriesInstanceUID: str | None
    model: tuple[str, str]  # name, version
    outcome: str
    rejections: list[Rejection]
    findings: list[Finding]
    seconds: float
    #: SOP Instance UIDs of the SR and SEG already stored for it.
    sr_sop_instance_uid: str | None = None
    seg_sop_instance_uid: str | None = None


def save_run(db: Database, new: NewRun) -> int:
    """Store a job's run and findings, and append ``findings.ready``, in one transaction."""
    now = datetime.now(UTC)
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
        .where(ai_run.c.study_instance_uid == StudyInstanceUID, job.c.status == "done")
        .order_by(ai_run.c.id.desc())
        .limit(1)
    ).first()
    if done is not None:
        return _run(conn, done)
    runs = runs_of_study(conn, StudyInstanceUID)
    return runs[0] if runs else None


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
        outcome=r.outcome,
        rejections=[Rejection(item["series"], item["reason"]) for item in json.loads(r.rejections)],
        seconds=r.seconds,
        created_at=r.created_at,
        findings=[
            Finding(f.x, f.y, f.z, f.diameter_mm, f.probability, f.tracking_uid) for f in found
        ],
        sr_sop_instance_uid=r.sr_sop_instance_uid,
        seg_sop_instance_uid=r.seg_sop_instance_uid,
    )


def findings_document(conn: Connection, StudyInstanceUID: str, kind: str) -> dict[str, Any] | None:
    """What the API and ``pacs findings`` show for a study; None when the study is unknown.

    ``status`` is the state of the newest job of *kind* (``not_queued`` before the study was
    ever stable); ``run`` and ``findings`` are the current result (see current_run), which a
    newer queued or running job may be about to replace.
    """
    known = conn.execute(
        select(study.c.id).where(study.c.study_instance_uid == StudyInstanceUID)
    ).first()
    if known is None:
        return None
    newest = latest_job(conn, kind, StudyInstanceUID)
    run = current_run(conn, StudyInstanceUID)
    return {
        "StudyInstanceUID": StudyInstanceUID,
        "status": newest.status.value if newest else "not_queued",
        "job": None
        if newest is None
        else {
            "id": newest.id,
            "status": newest.status.value,
            "attempts": newest.attempts,
            "max_attempts": newest.max_attempts,
            "last_error": newest.last_error,
        },
        "run": None
        if run is None
        else {
            "id": run.id,
            "job_id": run.job_id,
            "SeriesInstanceUID": run.SeriesInstanceUID,
            "model": {"name": run.model_name, "version": run.model_version},
            "outcome": run.outcome,
            "seconds": round(run.seconds, 3),
            "created_at": run.created_at.isoformat(),
            "results": {
                "SR": run.sr_sop_instance_uid,
                "SEG": run.seg_sop_instance_uid,
            },
            "rejected_series": [
                {"SeriesInstanceUID": r.SeriesInstanceUID, "reason": r.reason}
                for r in run.rejections
            ],
        },
        "findings": []
        if run is None
        else [
            {
                "tracking_uid": f.tracking_uid,
                "position_mm": {"x": f.x, "y": f.y, "z": f.z},
                "coordinate_system": "DICOM patient (LPS)",
                "diameter_mm": round(f.diameter_mm, 2),
                "probability": round(f.probability, 4),
            }
            for f in run.findings
        ],
    }


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
