"""Background loops survive a PostgreSQL outage (issue 10 item 22): the real server is stopped
under a running job worker, stability sweeper and webhook dispatcher, then started again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from pacs.egress import EgressPolicy
from pacs.errors import IndexUnavailable
from pacs.index import Database
from pacs.ingest import Source
from pacs.jobs import Job, JobStatus, Worker, enqueue, get_job
from pacs.outage import Outage
from pacs.secretbox import SecretBox
from pacs.stability import Sweeper
from pacs.webhooks import Dispatcher, add_subscription
from tests.conftest import make_archive
from tests.dicom import derived, encode
from tests.pacs.test_webhooks import Receiver
from tests.servers import PostgresServer, wait_for

LOOPS = ("pacs.jobs", "pacs.stability", "pacs.webhooks")


class RestartablePostgres(PostgresServer):
    """A private cluster (the session's shared one must stay up) that can be stopped and
    started again (``start``, inherited) on the same port and data."""

    def _ctl(self, *args: str) -> None:
        self._run(*self.pg_ctl, *args)

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")


@pytest.fixture
def postgres_to_stop() -> Iterator[RestartablePostgres]:
    server = RestartablePostgres()
    yield server
    server.close()


def test_loops_wait_out_a_database_outage(
    postgres_to_stop: RestartablePostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = postgres_to_stop.new_database()
    archive = make_archive(url, f"file://{tmp_path / 'storage'}")
    receiver = Receiver("s3cret").start()
    loopback = EgressPolicy.parse(["127.0.0.1"])  # the receiver's address, allowed explicitly
    box = SecretBox(b"k" * 32)
    add_subscription(archive.db, receiver.url, ["study.stable"], "s3cret", egress=loopback, box=box)
    done: list[int] = []

    def handler(job: Job) -> str:
        done.append(job.id)
        return "ok"

    databases = [Database(url) for _ in range(3)]
    worker = Worker(databases[0], {"demo": handler}, "worker-1", lease=timedelta(seconds=30))
    stopping = threading.Event()
    worker_thread = threading.Thread(target=worker.run, args=(stopping.is_set, 0.1))
    sweeper = Sweeper(databases[1], timedelta(seconds=0.5), timedelta(seconds=0.1))
    dispatcher = Dispatcher(
        databases[2], interval=0.1, settle=timedelta(0), egress=loopback, box=box
    )
    worker_thread.start()
    sweeper.start()
    dispatcher.start()
    try:
        time.sleep(0.5)  # every loop runs a few good rounds
        postgres_to_stop.stop()
        time.sleep(3)  # ... and a few failed ones
        postgres_to_stop.start()
        with archive.db.write() as conn:
            job_id = enqueue(conn, "demo", None)
        stored = archive.store(encode(derived()), Source("IMPORT"))

        wait_for(lambda: job_id in done, 60, "the job queued after the outage to run")
        wait_for(lambda: receiver.received, 60, "study.stable delivered after the outage")
        assert worker_thread.is_alive()
        with archive.db.read() as conn:
            ran = get_job(conn, job_id)
        assert ran is not None and ran.status == JobStatus.DONE
        assert [e["event"] for e in receiver.received] == ["study.stable"]
        assert receiver.received[0]["StudyInstanceUID"] == stored.StudyInstanceUID
    finally:
        stopping.set()
        worker_thread.join(timeout=30)
        sweeper.stop()
        dispatcher.stop()
        receiver.stop()
        for db in (*databases, archive.db):
            db.dispose()

    # One line when the outage starts and one when it ends, per loop; no tracebacks.
    for name in LOOPS:
        lines = [r for r in caplog.records if r.name == name]
        started = [r for r in lines if "failing, retrying with back-off" in r.getMessage()]
        ended = [r for r in lines if "working again" in r.getMessage()]
        assert (len(started), len(ended)) == (1, 1), (name, [r.getMessage() for r in lines])
        assert not any(r.exc_info for r in lines), name


def test_back_off_survives_a_very_long_outage() -> None:
    """A day of failed rounds must not overflow the back-off (which would end the loop)."""
    outage = Outage("test loop", logging.getLogger("test"), interval=1.0, max_backoff=30.0)
    waits = [outage.failed(IndexUnavailable("down")) for _ in range(5000)]
    assert waits[:3] == [1.0, 2.0, 4.0]
    assert waits[-1] == 30.0
