"""The job queue (DESIGN.md, data flow 5): a table in the index, claimed under a lease.

A worker claims the oldest runnable job (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL;
SQLite serialises writers), holds a lease that a heartbeat extends, and reports done or failed.
A job whose lease expires (its worker was killed) is claimed again; attempts are bounded and a
job that keeps failing ends ``failed`` with its reason; failures are retried with exponential
back-off. A study re-triggered while its job runs gets a new job, and the running one ends
``superseded`` instead of racing it with a result.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, select

from pacs.errors import ArchiveError
from pacs.index import Database, as_utc
from pacs.index.schema import job
from pacs.metrics import metrics
from pacs.outage import Outage

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF = timedelta(seconds=10)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    StudyInstanceUID: str | None
    payload: dict[str, Any]
    status: JobStatus
    attempts: int
    max_attempts: int
    result_ref: str | None = None
    last_error: str | None = None
    #: The worker holding (or that last held) the lease, and when the lease ends.
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    created_at: datetime | None = None
    #: The model of the worker that last claimed it: "name version sha256:<digest>".
    model: str | None = None


def enqueue(
    conn: Connection,
    kind: str,
    StudyInstanceUID: str | None,
    payload: dict[str, Any] | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    now: datetime | None = None,
) -> int:
    """Queue a job in *conn*'s transaction; one already waiting for the same kind and study
    absorbs the new one (returns its id)."""
    now = now or datetime.now(UTC)
    waiting = conn.execute(
        select(job.c.id).where(
            job.c.kind == kind,
            job.c.study_instance_uid == StudyInstanceUID,
            job.c.status == JobStatus.QUEUED,
        )
    ).first()
    if waiting is not None:
        return int(waiting[0])
    return int(
        conn.execute(
            job.insert()
            .values(
                kind=kind,
                study_instance_uid=StudyInstanceUID,
                payload=json.dumps(payload or {}),
                status=JobStatus.QUEUED,
                attempts=0,
                max_attempts=max_attempts,
                run_after=now,
                created_at=now,
                updated_at=now,
            )
            .returning(job.c.id)
        ).scalar_one()
    )


def claim_next_job(
    db: Database,
    owner: str,
    kinds: list[str],
    lease: timedelta,
    now: datetime | None = None,
    model: str | None = None,
) -> Job | None:
    """Claim the oldest runnable job of *kinds* for *owner* (who runs *model*, recorded in the
    job's row); None when there is none. Each claim is logged, a re-claim (an expired lease)
    as such, with the previous owner."""
    now = now or datetime.now(UTC)
    while True:
        with db.write() as conn:
            query = (
                select(job)
                .where(
                    job.c.kind.in_(kinds),
                    or_(
                        and_(job.c.status == JobStatus.QUEUED, job.c.run_after <= now),
                        and_(job.c.status == JobStatus.RUNNING, job.c.lease_expires_at < now),
                    ),
                )
                .order_by(job.c.id)
                .limit(1)
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            row = conn.execute(query).first()
            if row is None:
                return None
            if row.status == JobStatus.RUNNING and row.attempts >= row.max_attempts:
                # Its worker died on every attempt: stop trying.
                _set(
                    conn,
                    row.id,
                    now,
                    status=JobStatus.FAILED,
                    lease_owner=None,
                    last_error=f"lease expired on all {row.attempts} attempts",
                )
                log.warning(
                    "job %d (%s) study %s failed: lease of %s expired on all %d attempts",
                    row.id,
                    row.kind,
                    row.study_instance_uid,
                    row.lease_owner,
                    row.attempts,
                )
                continue
            _set(
                conn,
                row.id,
                now,
                status=JobStatus.RUNNING,
                attempts=row.attempts + 1,
                lease_owner=owner,
                lease_expires_at=now + lease,
                model=model,
            )
        claimed = _job(
            row,
            status=JobStatus.RUNNING,
            attempts=row.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + lease,
            model=model,
        )
        reclaim = row.status == JobStatus.RUNNING
        log.info(
            "job %d (%s) study %s %s by %s (attempt %d/%d)%s",
            row.id,
            row.kind,
            row.study_instance_uid,
            "re-claimed" if reclaim else "claimed",
            owner,
            claimed.attempts,
            row.max_attempts,
            f", the lease of {row.lease_owner} having expired" if reclaim else "",
        )
        metrics().job_claims.labels(row.kind, "true" if reclaim else "false").inc()
        if claimed.created_at is not None:
            wait = (now - claimed.created_at).total_seconds()
            metrics().job_wait_seconds.labels(row.kind).observe(max(wait, 0.0))
        return claimed


def heartbeat(db: Database, job_id: int, owner: str, lease: timedelta) -> bool:
    """Extend the lease; False when the job is no longer this owner's."""
    now = datetime.now(UTC)
    with db.write() as conn:
        result = conn.execute(
            job.update()
            .where(
                job.c.id == job_id, job.c.lease_owner == owner, job.c.status == JobStatus.RUNNING
            )
            .values(lease_expires_at=now + lease, updated_at=now)
        )
    return bool(result.rowcount == 1)


def complete(db: Database, job_id: int, owner: str, result_ref: str | None) -> JobStatus | None:
    """Record success: ``done``, or ``superseded`` when a newer job of the same kind and study
    exists. None when the lease was lost (another worker owns the job now)."""
    now = datetime.now(UTC)
    with db.write() as conn:
        row = _owned(conn, job_id, owner)
        if row is None:
            return None
        newer = conn.execute(
            select(job.c.id).where(
                job.c.kind == row.kind,
                job.c.study_instance_uid == row.study_instance_uid,
                job.c.id > job_id,
                job.c.status != JobStatus.FAILED,
            )
        ).first()
        status = (
            JobStatus.SUPERSEDED if newer is not None and row.study_instance_uid else JobStatus.DONE
        )
        # The error of an earlier attempt no longer describes the job.
        _set(
            conn,
            job_id,
            now,
            status=status,
            result_ref=result_ref,
            lease_owner=None,
            last_error=None,
        )
    return status


def fail(
    db: Database, job_id: int, owner: str, error: str, backoff: timedelta = DEFAULT_BACKOFF
) -> JobStatus | None:
    """Record a failure: queued again after back-off, or ``failed`` when attempts are spent."""
    now = datetime.now(UTC)
    with db.write() as conn:
        row = _owned(conn, job_id, owner)
        if row is None:
            return None
        if row.attempts >= row.max_attempts:
            _set(conn, job_id, now, status=JobStatus.FAILED, last_error=error, lease_owner=None)
            return JobStatus.FAILED
        delay = backoff * 2 ** (row.attempts - 1)
        _set(
            conn,
            job_id,
            now,
            status=JobStatus.QUEUED,
            last_error=error,
            lease_owner=None,
            run_after=now + delay,
        )
    return JobStatus.QUEUED


def retry(db: Database, job_id: int) -> bool:
    """Queue a failed job again with fresh attempts (``pacs jobs retry``)."""
    now = datetime.now(UTC)
    with db.write() as conn:
        result = conn.execute(
            job.update()
            .where(job.c.id == job_id, job.c.status == JobStatus.FAILED)
            .values(status=JobStatus.QUEUED, attempts=0, run_after=now, updated_at=now)
        )
    return bool(result.rowcount == 1)


def list_jobs(conn: Connection, status: JobStatus | None = None, limit: int = 100) -> list[Job]:
    query = select(job).order_by(job.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(job.c.status == status)
    return [_job(row) for row in conn.execute(query)]


def get_job(conn: Connection, job_id: int) -> Job | None:
    row = conn.execute(select(job).where(job.c.id == job_id)).first()
    return None if row is None else _job(row)


class Worker:
    """Claims jobs of the kinds it has handlers for and runs them, heartbeating the lease.

    A handler takes the Job and returns a result reference (or raises: the job is retried).
    """

    def __init__(
        self,
        db: Database,
        handlers: dict[str, Callable[[Job], str | None]],
        owner: str,
        lease: timedelta = timedelta(seconds=60),
        backoff: timedelta = DEFAULT_BACKOFF,
        model: str | None = None,
    ) -> None:
        self.db, self.handlers, self.owner = db, handlers, owner
        self.lease, self.backoff, self.model = lease, backoff, model

    def run_once(self) -> Job | None:
        """Claim and run one job; the job as claimed, or None when there was nothing to do."""
        claimed = claim_next_job(
            self.db, self.owner, list(self.handlers), self.lease, model=self.model
        )
        if claimed is None:
            return None
        started = time.perf_counter()
        outcome: JobStatus | None = None
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(claimed.id, stop), daemon=True)
        beat.start()
        try:
            result = self.handlers[claimed.kind](claimed)
        except Exception as exc:
            log.warning("job %d (%s) failed: %s", claimed.id, claimed.kind, exc)
            error = f"{type(exc).__name__}: {exc}"
            outcome = fail(self.db, claimed.id, self.owner, error, self.backoff)
        else:
            outcome = complete(self.db, claimed.id, self.owner, result)
        finally:
            stop.set()
            beat.join()
            label = "lost" if outcome is None else outcome.value
            metrics().job_seconds.labels(claimed.kind, label).observe(time.perf_counter() - started)
        return claimed

    def run(self, stop: Callable[[], bool], poll: float = 1.0) -> None:
        """Run jobs until *stop()*; an index outage is waited out with back-off, not fatal."""
        outage = Outage(f"job worker {self.owner}", log, poll)
        while not stop():
            try:
                ran = self.run_once()
            except Exception as exc:  # the index may be down: the next round tries again
                _sleep(outage.failed(exc), stop, poll)
                continue
            outage.succeeded()
            if ran is None:
                time.sleep(poll)

    def _beat(self, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(self.lease.total_seconds() / 3):
            try:
                mine = heartbeat(self.db, job_id, self.owner, self.lease)
            except ArchiveError:  # an outage: the lease holds until it expires; beat again
                continue
            if not mine:
                log.warning("job %d: lease lost", job_id)
                return


def _sleep(seconds: float, stop: Callable[[], bool], step: float) -> None:
    """Sleep *seconds*, waking every *step* to see whether to stop."""
    deadline = time.monotonic() + seconds
    while not stop() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(step, left))


def _owned(conn: Connection, job_id: int, owner: str) -> Any:
    query = select(job).where(
        job.c.id == job_id, job.c.lease_owner == owner, job.c.status == JobStatus.RUNNING
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).first()


def _set(conn: Connection, job_id: int, now: datetime, **values: Any) -> None:
    conn.execute(job.update().where(job.c.id == job_id).values(updated_at=now, **values))


def _job(row: Any, **override: Any) -> Job:
    fields = {
        "id": row.id,
        "kind": row.kind,
        "StudyInstanceUID": row.study_instance_uid,
        "payload": json.loads(row.payload),
        "status": JobStatus(row.status),
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "result_ref": row.result_ref,
        "last_error": row.last_error,
        "lease_owner": row.lease_owner,
        "lease_expires_at": None if row.lease_expires_at is None else as_utc(row.lease_expires_at),
        "created_at": as_utc(row.created_at),
        "model": row.model,
    }
    return Job(**(fields | override))


def latest_job(conn: Connection, kind: str, StudyInstanceUID: str) -> Job | None:
    """The newest job of *kind* for the study, whatever its state."""
    row = conn.execute(
        select(job)
        .where(job.c.kind == kind, job.c.study_instance_uid == StudyInstanceUID)
        .order_by(job.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else _job(row)
