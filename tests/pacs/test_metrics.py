"""pacs.metrics in one process: the index gauges read at scrape time (queue depth and age,
webhook backlog, the index down), the job and stability histograms, DIMSE status labels."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pacs.index import Database, upgrade
from pacs.jobs import Worker, claim_next_job, enqueue
from pacs.metrics import exposition, status_label
from pacs.stability import mark_stable
from tests.conftest import database_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = Database(database_url(request.param, tmp_path, request))
    upgrade(database)
    yield database
    database.dispose()


def scraped(db: Database | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = exposition(db)
    assert content_type.startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_queue_depth_and_age_by_kind_and_state(db: Database) -> None:
    created = datetime.now(UTC) - timedelta(minutes=5)
    with db.write() as conn:
        for study in ("1.2.1", "1.2.2", "1.2.3"):
            enqueue(conn, "infer", study, now=created)
    claim_next_job(db, "w", ["infer"], timedelta(seconds=30))
    found = scraped(db)
    assert found[("pacs_index_up", ())] == 1
    assert found[("pacs_jobs", (("kind", "infer"), ("status", "queued")))] == 2
    assert found[("pacs_jobs", (("kind", "infer"), ("status", "running")))] == 1
    assert found[("pacs_jobs", (("kind", "infer"), ("status", "failed")))] == 0
    age = found[("pacs_job_oldest_seconds", (("kind", "infer"), ("status", "queued")))]
    assert 300 <= age < 400
    assert found[("pacs_webhook_backlog", ())] == 0


def test_an_index_that_does_not_answer_is_reported_not_raised(tmp_path: Path) -> None:
    gone = Database(f"sqlite:///{tmp_path / 'index.db'}")  # no schema: every query fails
    found = scraped(gone)
    gone.dispose()
    assert found[("pacs_index_up", ())] == 0
    assert not any(name == "pacs_jobs" for name, _ in found)


def test_job_runs_and_stability_lag_are_observed(db: Database) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    runs = value("pacs_job_seconds_count", kind="probe", outcome="done")
    claims = value("pacs_job_claims_total", kind="probe", reclaim="false")
    lags = value("pacs_stability_lag_seconds_count")
    with db.write() as conn:
        enqueue(conn, "probe", None)
    assert Worker(db, {"probe": lambda job: "ok"}, "w").run_once() is not None
    assert value("pacs_job_seconds_count", kind="probe", outcome="done") == runs + 1
    assert value("pacs_job_claims_total", kind="probe", reclaim="false") == claims + 1
    mark_stable(db, timedelta(seconds=1))  # nothing stored: nothing observed
    assert value("pacs_stability_lag_seconds_count") == lags


def test_status_labels_are_dimse_hex() -> None:
    assert (status_label(0), status_label(0xA700), status_label(0x124)) == (
        "0x0000",
        "0xA700",
        "0x0124",
    )


def test_files_of_every_process_are_added_up_and_an_empty_one_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Multiprocess mode as /metrics reads it: two receivers' counter files add up; a file a
    process has only just created (empty) does not fail the scrape."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    name = "pacs_instances_received"
    labels = ("protocol", "status", "outcome")
    key = mmap_key(name, f"{name}_total", labels, ("dimse", "0x0000", "stored"), "help")
    for pid, count in ((101, 3.0), (102, 4.0)):
        files = MmapedDict(str(tmp_path / f"counter_{pid}.db"))
        files.write_value(key, count, 0.0)
        files.close()
    (tmp_path / "counter_103.db").touch()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    found = scraped(None)
    wanted = (("outcome", "stored"), ("protocol", "dimse"), ("status", "0x0000"))
    assert found[("pacs_instances_received_total", wanted)] == 7
