"""Studies in known AI and review states, built through the archive's own functions.

Each study is a real instance (CT_small or MR_small with new UIDs and the given attributes)
stored through the one ingest path; its AI state comes from the job queue and save_run as a
worker leaves them (enqueue, claim, save, complete or fail); its review state is a review row
as the review API writes it (no row: unread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydicom.uid import generate_uid

from pacs.index.schema import review
from pacs.ingest import Archive, Source
from pacs.jobs import claim_next_job, complete, enqueue, fail
from pacs.results import NODULE_DETECTION, Finding, NewRun, Rejection, RunOutcome, save_run
from tests.dicom import CT_SMALL, MR_SMALL, derived, encode

LEASE = timedelta(seconds=60)
MODEL = ("demo-nodule-centernet", "1.0.0")
THRESHOLD = 0.5


@dataclass(frozen=True)
class Study:
    """What to store: the attributes of a new study (DICOM keywords) and where it is from."""

    PatientName: str
    PatientID: str
    StudyDate: str
    StudyTime: str = "120000"
    path: Path = CT_SMALL
    facility: str = "north"
    AccessionNumber: str = field(default_factory=lambda: generate_uid()[-12:])
    StudyInstanceUID: str = field(default_factory=lambda: str(generate_uid()))
    SeriesInstanceUID: str = field(default_factory=lambda: str(generate_uid()))


def store_study(archive: Archive, study: Study) -> str:
    """Store the study's one instance; its StudyInstanceUID."""
    ds = derived(
        study.path,
        PatientName=study.PatientName,
        PatientID=study.PatientID,
        StudyDate=study.StudyDate,
        StudyTime=study.StudyTime,
        AccessionNumber=study.AccessionNumber,
        StudyInstanceUID=study.StudyInstanceUID,
        SeriesInstanceUID=study.SeriesInstanceUID,
    )
    archive.store(encode(ds), Source("IMPORT", facility=study.facility))
    return study.StudyInstanceUID


def nodule(probability: float, diameter_mm: float) -> Finding:
    return Finding(10.0, 20.0, -30.0, diameter_mm, probability)


def start_job(archive: Archive, study: Study, max_attempts: int = 3) -> int:
    """Queue a nodule-detection job for the study and claim it (running); its id.

    Only one job is runnable at a time here: the caller finishes it (or leaves it running)
    before starting the next, so the claim takes this one.
    """
    with archive.db.write() as conn:
        job_id = enqueue(conn, NODULE_DETECTION, study.StudyInstanceUID, max_attempts=max_attempts)
    claimed = claim_next_job(archive.db, "test", [NODULE_DETECTION], LEASE)
    assert claimed is not None and claimed.id == job_id
    return job_id


def save(
    archive: Archive,
    study: Study,
    job_id: int,
    findings: list[Finding],
    outcome: RunOutcome = RunOutcome.ANALYSED,
    rejections: list[Rejection] | None = None,
) -> int:
    """Save the job's run (as the pipeline does, at THRESHOLD); the run's id."""
    series = None if outcome is RunOutcome.NO_ELIGIBLE_SERIES else study.SeriesInstanceUID
    new = NewRun(
        job_id,
        study.StudyInstanceUID,
        series,
        MODEL,
        outcome,
        rejections or [],
        findings,
        1.5,
        report_threshold=THRESHOLD,
    )
    return save_run(archive.db, new)


def analyse(
    archive: Archive,
    study: Study,
    findings: list[Finding],
    outcome: RunOutcome = RunOutcome.ANALYSED,
    rejections: list[Rejection] | None = None,
) -> int:
    """A whole nodule-detection job: queued, claimed, its run saved, done; the job's id."""
    job_id = start_job(archive, study)
    run_id = save(archive, study, job_id, findings, outcome, rejections)
    complete(archive.db, job_id, "test", f"ai_run:{run_id}")
    return job_id


def fail_job(archive: Archive, study: Study, error: str) -> int:
    """A job that failed its only attempt; its id."""
    job_id = start_job(archive, study, max_attempts=1)
    fail(archive.db, job_id, "test", error)
    return job_id


def queue_job(archive: Archive, study: Study) -> int:
    """A job waiting for a worker (call last: a later start_job would claim it)."""
    with archive.db.write() as conn:
        return enqueue(conn, NODULE_DETECTION, study.StudyInstanceUID)


def set_review(archive: Archive, study: Study, status: str) -> None:
    """A review row in *status* (in_review or final), as the review API leaves one."""
    now = datetime.now(UTC)
    with archive.db.write() as conn:
        conn.execute(
            review.insert().values(
                study_instance_uid=study.StudyInstanceUID,
                status=status,
                version=1,
                series_instance_uid=study.SeriesInstanceUID,
                impression="",
                revision=1 if status == "final" else 0,
                created_at=now,
                updated_at=now,
            )
        )


#: The worklist order of the ward's studies (see build_ward).
WARD_ORDER = ["c", "d", "b", "a", "i", "e", "g", "h", "f", "l", "j", "k", "n"]


def build_ward(archive: Archive) -> dict[str, Study]:
    """Thirteen studies in every AI and review state; their worklist order is WARD_ORDER.

    Flagged (a reportable nodule), by highest probability, then largest diameter, then oldest:
    c (0.95), d (0.9, 20 mm, 2023), b (0.9, 20 mm, 2024), a (0.9, 10 mm: its 40 mm candidate
    is below the operating point). Then the rest, oldest first: i (failed), e (analysed,
    nothing found), g (never queued), h (MR: not applicable), f (only a candidate below the
    operating point), l (a done run with nothing found, and a newer job running whose run is
    saved but not current), j (running), k (queued), n (no StudyDate: last).
    Reviews: a in review, b final; the others unread.
    """
    ward = {
        "a": Study("NGUYEN^AN", "PA", "20240105"),
        "b": Study("DOE^JANE", "PB", "20240301"),
        "c": Study("DOE^JOHN", "PC", "20240601"),
        "d": Study("SMITH^JANE", "PD", "20231201", facility="south"),
        "e": Study("BROWN^EVE", "PE", "20200101"),
        "f": Study("GARCIA^FE", "PF", "20220601"),
        "g": Study("MULLER^GUS", "PG", "20210101", facility="south"),
        "h": Study("KOWALSKI^HA", "PH", "20220101", path=MR_SMALL),
        "i": Study("OMAR^IBN", "PI", "20190101", facility="south"),
        "j": Study("LI^JIN", "PJ", "20230601"),
        "k": Study("DOE^KIM", "PK", "20240101"),
        "l": Study("NGUYEN^LAN", "PL", "20230101"),
        "n": Study("EMPTY^DATE", "PN", ""),
    }
    for study in ward.values():
        store_study(archive, study)
    analyse(archive, ward["a"], [nodule(0.9, 10), nodule(0.7, 8), nodule(0.3, 40)])
    analyse(archive, ward["b"], [nodule(0.9, 20)])
    analyse(archive, ward["c"], [nodule(0.95, 5)])
    analyse(archive, ward["d"], [nodule(0.6, 4), nodule(0.9, 20)])
    analyse(archive, ward["e"], [])
    analyse(archive, ward["f"], [nodule(0.3, 12)])
    rejected = [Rejection(ward["h"].SeriesInstanceUID, "Modality MR is not CT")]
    analyse(archive, ward["h"], [], RunOutcome.NO_ELIGIBLE_SERIES, rejected)
    fail_job(archive, ward["i"], "RuntimeError: out of memory")
    analyse(archive, ward["l"], [])
    save(archive, ward["l"], start_job(archive, ward["l"]), [nodule(0.99, 30)])
    start_job(archive, ward["j"])
    queue_job(archive, ward["k"])
    set_review(archive, ward["a"], "in_review")
    set_review(archive, ward["b"], "final")
    return ward
