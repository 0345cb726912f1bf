"""The job queue on SQLite and PostgreSQL: leases, retries, supersession, killed workers."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pacs.index import Database, upgrade
from pacs.jobs import (
    Job,
    JobStatus,
    Worker,
    claim_next_job,
    complete,
    enqueue,
    fail,
    get_job,
    retry,
)
from tests.conftest import database_url

LEASE = timedelta(seconds=30)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = Database(database_url(request.param, tmp_path, request))
    upgrade(database)
    yield database
    database.dispose()


def queue(db: Database, kind: str = "test", study: str | None = "1.2.3", **options: object) -> int:
    with db.write() as conn:
        return enqueue(conn, kind, study, **options)  # type: ignore[arg-type]


def status(db: Database, job_id: int) -> Job:
    with db.read() as conn:
        found = get_job(conn, job_id)
    assert found is not None
    return found


def test_claim_complete_and_coalescing(db: Database) -> None:
    first = queue(db, payload={"series": "1.2.3.4"})
    assert queue(db) == first  # a job already waiting absorbs the trigger
    claimed = claim_next_job(db, "w1", ["test"], LEASE)
    assert claimed is not None
    assert (claimed.id, claimed.attempts, claimed.payload) == (first, 1, {"series": "1.2.3.4"})
    assert claim_next_job(db, "w2", ["test"], LEASE) is None  # leased
    assert complete(db, first, "w1", "sr:1.2.3.9") is JobStatus.DONE
    assert status(db, first).result_ref == "sr:1.2.3.9"


def test_failures_back_off_then_end_failed_with_the_reason(db: Database) -> None:
    job_id = queue(db, max_attempts=2)
    backoff = timedelta(seconds=60)
    claim_next_job(db, "w", ["test"], LEASE)
    assert fail(db, job_id, "w", "boom 1", backoff) is JobStatus.QUEUED
    assert claim_next_job(db, "w", ["test"], LEASE) is None  # backing off
    later = datetime.now(UTC) + backoff + timedelta(seconds=1)
    assert claim_next_job(db, "w", ["test"], LEASE, now=later) is not None
    assert fail(db, job_id, "w", "boom 2", backoff) is JobStatus.FAILED
    failed = status(db, job_id)
    assert (failed.status, failed.last_error, failed.attempts) == (JobStatus.FAILED, "boom 2", 2)
    assert retry(db, job_id)
    assert status(db, job_id).status is JobStatus.QUEUED


def test_expired_lease_is_claimed_again_and_the_old_owner_loses(db: Database) -> None:
    job_id = queue(db)
    claim_next_job(db, "dead", ["test"], timedelta(seconds=1))
    later = datetime.now(UTC) + timedelta(seconds=2)
    again = claim_next_job(db, "alive", ["test"], LEASE, now=later)
    assert again is not None
    assert again.attempts == 2
    assert complete(db, job_id, "dead", "late result") is None  # its lease is gone
    assert complete(db, job_id, "alive", "result") is JobStatus.DONE
    assert status(db, job_id).result_ref == "result"


def test_a_job_that_succeeds_on_retry_keeps_no_error(db: Database) -> None:
    job_id = queue(db)
    claim_next_job(db, "w", ["test"], LEASE)
    fail(db, job_id, "w", "boom", timedelta(0))
    assert status(db, job_id).last_error == "boom"
    claimed = claim_next_job(db, "w2", ["test"], LEASE, model="m 1 sha256:ab")
    assert claimed is not None and claimed.lease_owner == "w2"
    running = status(db, job_id)
    assert (running.lease_owner, running.model) == ("w2", "m 1 sha256:ab")
    assert running.lease_expires_at is not None
    assert running.lease_expires_at > datetime.now(UTC) + LEASE - timedelta(seconds=5)
    assert complete(db, job_id, "w2", "result") is JobStatus.DONE
    done = status(db, job_id)
    assert (done.status, done.last_error, done.lease_owner) == (JobStatus.DONE, None, None)
    assert done.model == "m 1 sha256:ab"  # which model produced the result stays


def test_claims_and_reclaims_are_logged(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    job_id = queue(db, study="1.2.3.77")
    with caplog.at_level("INFO", logger="pacs.jobs"):
        claim_next_job(db, "dead-worker", ["test"], timedelta(seconds=1))
        later = datetime.now(UTC) + timedelta(seconds=2)
        claim_next_job(db, "live-worker", ["test"], LEASE, now=later)
    lines = [r.getMessage() for r in caplog.records if r.name == "pacs.jobs"]
    assert lines[0].startswith(f"job {job_id} (test) study 1.2.3.77 claimed by dead-worker")
    assert lines[1].startswith(f"job {job_id} (test) study 1.2.3.77 re-claimed by live-worker")
    assert "the lease of dead-worker having expired" in lines[1]


def test_a_job_whose_worker_always_dies_ends_failed(db: Database) -> None:
    job_id = queue(db, max_attempts=2)
    t = datetime.now(UTC)
    for i in range(2):
        assert claim_next_job(db, f"w{i}", ["test"], timedelta(seconds=1), now=t) is not None
        t += timedelta(seconds=2)
    assert claim_next_job(db, "w3", ["test"], LEASE, now=t) is None
    failed = status(db, job_id)
    assert failed.status is JobStatus.FAILED
    assert "lease expired" in str(failed.last_error)


def test_retriggered_study_supersedes_the_running_job(db: Database) -> None:
    running = queue(db)
    claim_next_job(db, "w", ["test"], LEASE)
    newer = queue(db)  # the study changed while its job ran
    assert newer != running
    assert complete(db, running, "w", "stale result") is JobStatus.SUPERSEDED
    assert status(db, newer).status is JobStatus.QUEUED


def test_concurrent_workers_claim_each_job_once(db: Database) -> None:
    ids = {queue(db, study=f"1.2.{i}") for i in range(20)}

    def drain(owner: str) -> list[int]:
        mine = []
        while (claimed := claim_next_job(db, owner, ["test"], LEASE)) is not None:
            mine.append(claimed.id)
        return mine

    with ThreadPoolExecutor(4) as pool:
        claims = [job_id for result in pool.map(drain, ["a", "b", "c", "d"]) for job_id in result]
    assert sorted(claims) == sorted(ids)


def test_heartbeat_keeps_a_long_job_its_own(db: Database) -> None:
    job_id = queue(db)
    lease = timedelta(seconds=0.6)
    seen: list[Job | None] = []

    def slow(job: Job) -> str:
        time.sleep(1.5)  # longer than the lease: only heartbeats keep it
        seen.append(claim_next_job(db, "intruder", ["test"], lease))
        return "ok"

    assert Worker(db, {"test": slow}, "w", lease=lease).run_once() is not None
    assert seen == [None]
    assert status(db, job_id).status is JobStatus.DONE


WORKER = """
import sys, time
from datetime import timedelta
from pacs.index import Database
from pacs.jobs import Worker
db = Database(sys.argv[1])
def hang(job):
    print("claimed", job.id, flush=True)
    time.sleep(600)
Worker(db, {"test": hang}, "doomed", lease=timedelta(seconds=1)).run_once()
"""


def test_killed_worker_loses_nothing(db: Database) -> None:
    job_id = queue(db)
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, db.url], stdout=subprocess.PIPE, text=True
    )
    assert worker.stdout is not None
    assert worker.stdout.readline().split() == ["claimed", str(job_id)]
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    worker.stdout.close()
    done: list[int] = []
    survivor = Worker(db, {"test": lambda job: done.append(job.id) or "ok"}, "survivor")
    deadline = time.monotonic() + 10
    while not done and time.monotonic() < deadline:
        survivor.run_once()
        time.sleep(0.2)
    assert done == [job_id]  # once, after the dead worker's lease expired
    finished = status(db, job_id)
    assert (finished.status, finished.attempts) == (JobStatus.DONE, 2)
