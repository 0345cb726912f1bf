"""Worklist benchmark: ``GET /api/v1/worklist`` over an index of 10,000 studies on SQLite.

The index is built by the migrations (the real schema and indexes) and filled with direct
SQLAlchemy inserts: patients of three facilities, studies over five years with CT, MR and CR,
and for the studies the AI has seen, jobs and runs as the pipeline leaves them: analysed (a
third of those with 1-4 reportable nodules), not applicable (no eligible series, with the
selection's reasons), re-run (an older done run and a newer one), queued, running, failed;
some studies have no job yet; some are in review or signed. Runs carry the summary save_run
writes (pacs.results.RunSummary), and their findings rows are there too, though the worklist
never reads them.

Each scenario is timed twice: the index query alone (pacs.worklist.worklist in a read
transaction) and the whole HTTP request (the FastAPI app in process, with a radiologist's
token, JSON encoding included), after warm-up, as p50 and p99 of the repetitions.

Usage: python bench/worklist.py [--studies N] [--repetitions N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine
from pacs.facilities import Scope
from pacs.index import Database, upgrade
from pacs.index.schema import ai_run, facility, finding, job, patient, review, study
from pacs.ingest import Archive
from pacs.jobs import JobStatus
from pacs.results import NODULE_DETECTION, Finding, RunOutcome, RunSummary
from pacs.review import ReviewStatus
from pacs.storage import open_store
from pacs.worklist import AiStatus, WorklistQuery, worklist
from viewer_api.auth import Role, TokenVerifier, create_token
from viewer_api.main import create_app
from viewer_api.settings import ApiSettings

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "worklist.json"
FACILITIES = ("north", "south", "east")
MODALITIES = (("CT", 0.7), ("MR", 0.15), ("CR", 0.1), ("CT\\SR", 0.05))
REPORT_THRESHOLD = 0.55  # the demo model's operating point
SECRET = b"bench-worklist-secret-of-32-bytes"

EVERYWHERE = Scope.everything()  # the bench ward spans facilities; a global admin reads it

# Scenario -> (HTTP query parameters, the same as a WorklistQuery).
SCENARIOS: dict[str, tuple[dict[str, str], WorklistQuery]] = {
    "first_page": ({}, WorklistQuery(scope=EVERYWHERE)),
    "filtered_unread_done_ct": (
        {"review_status": "unread", "ai_status": "done", "modality": "CT"},
        WorklistQuery(
            {"ModalitiesInStudy": "CT"},
            ai=frozenset({AiStatus.DONE}),
            review=frozenset({ReviewStatus.UNREAD}),
            scope=EVERYWHERE,
        ),
    ),
    "filtered_facility_dates": (
        {"facility": "north", "StudyDate": "20230101-20231231"},
        WorklistQuery(
            {"StudyDate": "20230101-20231231"}, facilities=frozenset({"north"}), scope=EVERYWHERE
        ),
    ),
    "patient_name_wildcard": (
        {"PatientName": "doe^j*"},
        WorklistQuery({"PatientName": "doe^j*"}, scope=EVERYWHERE),
    ),
    "deep_page_offset_5000": (
        {"offset": "5000"},
        WorklistQuery(offset=5000, scope=EVERYWHERE),
    ),
}


def populate(db: Database, studies: int, seed: int = 11) -> dict[str, int]:
    """Fill the index with *studies* studies and their AI and review state; what was made."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    made = {status.value: 0 for status in AiStatus} | {"flagged": 0, "reviews": 0}
    with db.write() as conn:
        facility_ids = [
            int(
                conn.execute(
                    facility.insert().values(name=name, created_at=now).returning(facility.c.id)
                ).scalar_one()
            )
            for name in FACILITIES
        ]
        patients = []
        for number in range(studies * 3 // 5):
            given = rng.choice(("JOHN", "JANE", "ALEX", "MARIA", "LI", "OMAR"))
            family = rng.choice(("DOE", "SMITH", "NGUYEN", "GARCIA", "MULLER", "KOWALSKI"))
            patients.append(
                {
                    "facility_id": rng.choice(facility_ids),
                    "patient_id": f"P{number:07d}",
                    "issuer_of_patient_id": "",
                    "patient_name": f"{family}^{given}",
                    "patient_birth_date": f"19{rng.randint(30, 99)}0101",
                    "patient_sex": rng.choice("MF"),
                    "updated_at": now,
                    "fhir_id": os.urandom(16).hex(),
                }
            )
        conn.execute(patient.insert(), patients)
        patient_ids = list(conn.execute(select(patient.c.id).order_by(patient.c.id)).scalars())
        rows = []
        for number in range(studies):
            day = datetime(2021, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(5 * 365))
            modalities = rng.choices([m for m, _ in MODALITIES], [w for _, w in MODALITIES])[0]
            created = now - timedelta(seconds=studies - number)
            rows.append(
                {
                    "id": number + 1,
                    "study_instance_uid": generate_uid(),
                    "patient_fk": rng.choice(patient_ids),
                    "study_date": day.strftime("%Y%m%d"),
                    "study_time": f"{rng.randrange(24):02d}{rng.randrange(60):02d}00",
                    "accession_number": f"A{number:08d}",
                    "study_description": "CT CHEST" if "CT" in modalities else "OTHER",
                    "modalities_in_study": modalities,
                    "created_at": created,
                    "last_received_at": created,
                    "stable_at": created + timedelta(seconds=60),
                }
            )
        conn.execute(study.insert(), rows)
        jobs: list[dict[str, Any]] = []
        runs: list[dict[str, Any]] = []
        findings: list[dict[str, Any]] = []
        reviews: list[dict[str, Any]] = []
        for row in rows:
            uid = row["study_instance_uid"]
            state = rng.choices(
                ["not_queued", "done", "not_applicable", "rerun", "queued", "running", "failed"],
                [20, 55, 10, 5, 5, 3, 2],
            )[0]
            if state == "not_queued":
                made[AiStatus.NOT_QUEUED] += 1
            elif state in ("done", "not_applicable", "rerun"):
                if state == "rerun":  # an older done run, then a newer one
                    _analysed(rng, row, jobs, runs, findings)
                made["flagged"] += _analysed(
                    rng, row, jobs, runs, findings, state == "not_applicable"
                )
                made[AiStatus.NOT_APPLICABLE if state == "not_applicable" else AiStatus.DONE] += 1
            else:
                jobs.append(_job(uid, JobStatus(state), row["created_at"], len(jobs) + 1))
                made[state] += 1
            if state != "not_queued" and rng.random() < 0.25:
                status = rng.choice([ReviewStatus.IN_REVIEW, ReviewStatus.FINAL])
                reviews.append(_review(uid, status, now))
                made["reviews"] += 1
        conn.execute(job.insert(), jobs)
        conn.execute(ai_run.insert(), runs)
        conn.execute(finding.insert(), findings)
        conn.execute(review.insert(), reviews)
    return made


def _job(uid: str, status: JobStatus, when: datetime, job_id: int) -> dict[str, Any]:
    return {
        "id": job_id,
        "kind": NODULE_DETECTION,
        "study_instance_uid": uid,
        "payload": "{}",
        "status": status.value,
        "attempts": 3 if status is JobStatus.FAILED else 1,
        "max_attempts": 3,
        "run_after": when,
        "last_error": "RuntimeError: out of memory" if status is JobStatus.FAILED else None,
        "created_at": when,
        "updated_at": when,
    }


def _analysed(
    rng: random.Random,
    study_row: dict[str, Any],
    jobs: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    findings: list[dict[str, Any]],
    not_applicable: bool = False,
) -> int:
    """A done job and its run (and findings) for a study; 1 when the run flags it."""
    uid, when = study_row["study_instance_uid"], study_row["created_at"]
    job_id, run_id = len(jobs) + 1, len(runs) + 1
    jobs.append(_job(uid, JobStatus.DONE, when, job_id))
    found = []
    if not not_applicable and rng.random() < 1 / 3:
        found = [
            Finding(
                rng.uniform(-150, 150),
                rng.uniform(-150, 150),
                rng.uniform(-300, 0),
                rng.uniform(4, 30),
                rng.uniform(REPORT_THRESHOLD, 1),
            )
            for _ in range(rng.randint(1, 4))
        ]
    summary = RunSummary.of(found, REPORT_THRESHOLD)
    rejected = [{"series": generate_uid(), "reason": "Modality MR is not CT"}]
    runs.append(
        {
            "id": run_id,
            "job_id": job_id,
            "study_instance_uid": uid,
            "study_fk": study_row["id"],
            "series_instance_uid": None if not_applicable else generate_uid(),
            "model_name": "demo-nodule-centernet",
            "model_version": "1.0.0",
            "outcome": RunOutcome.NO_ELIGIBLE_SERIES if not_applicable else RunOutcome.ANALYSED,
            "rejections": json.dumps(rejected if not_applicable else []),
            "seconds": 4.2,
            "created_at": when,
            "report_threshold": REPORT_THRESHOLD,
            "reportable_count": summary.reportable,
            "max_probability": summary.max_probability,
            "max_diameter_mm": summary.max_diameter_mm,
        }
    )
    findings += [
        {
            "run_fk": run_id,
            "tracking_uid": f.tracking_uid,
            "x": f.x,
            "y": f.y,
            "z": f.z,
            "diameter_mm": f.diameter_mm,
            "probability": f.probability,
        }
        for f in found
    ]
    return int(summary.reportable > 0)


def _review(uid: str, status: ReviewStatus, now: datetime) -> dict[str, Any]:
    return {
        "study_instance_uid": uid,
        "status": status.value,
        "series_instance_uid": generate_uid(),
        "version": 1,
        "impression": "",
        "revision": 1 if status is ReviewStatus.FINAL else 0,
        "created_at": now,
        "updated_at": now,
    }


def timed(call: Callable[[], Any], repetitions: int, warmup: int = 3) -> dict[str, float]:
    """p50 and p99 (ms) of *repetitions* calls after *warmup* untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    percentiles = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(percentiles[98], 2),
        "max_ms": round(max(samples), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--repetitions", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the generated index")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pacs-bench-worklist-"))
    db = Database(f"sqlite:///{work / 'index.db'}")
    try:
        upgrade(db)
        started = time.perf_counter()
        made = populate(db, args.studies)
        print(f"{args.studies} studies indexed in {time.perf_counter() - started:.1f} s: {made}")
        archive = Archive(db, open_store(f"file://{work / 'storage'}", None, None))
        app = create_app(archive, TokenVerifier(secret=SECRET), ApiSettings())
        token = create_token(SECRET, "bench", [Role.ADMIN], 3600, ["*"])  # every facility
        client = TestClient(app, headers={"Authorization": f"Bearer {token}"})
        results: dict[str, Any] = {}
        for name, (params, query) in SCENARIOS.items():

            def index_only(query: WorklistQuery = query) -> None:
                with db.read() as conn:
                    worklist(conn, query)

            def http(params: dict[str, str] = params) -> None:
                response = client.get("/api/v1/worklist", params=params)
                assert response.status_code == 200, response.text

            with db.read() as conn:
                total = worklist(conn, query).total
            results[name] = {
                "params": params,
                "total": total,
                "index_query": timed(index_only, args.repetitions),
                "http": timed(http, args.repetitions),
            }
            print(f"{name:>24}: {json.dumps(results[name])}", flush=True)
        client.close()
        _write_results(args, made, results)
    finally:
        db.dispose()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _write_results(args: argparse.Namespace, made: dict[str, int], results: dict[str, Any]) -> None:
    result = {
        "benchmark": "worklist",
        "command": "python bench/worklist.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(sqlite=sqlite3.sqlite_version),
        "settings": {"studies": args.studies, "repetitions": args.repetitions},
        "index": made,
        "target": {"p50_ms": 50},
        "scenarios": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
