"""The weights checksum each model name and version runs with, recorded in the index: the
first worker records it, the same bytes pass anywhere, other bytes are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.index import Database, upgrade
from pacs.jobs import JobStatus, enqueue, get_job
from pacs.model_checksums import ModelMismatch, check_model, describe
from pacs.results import NODULE_DETECTION
from tests.conftest import database_url

A, B = "a" * 64, "b" * 64


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = Database(database_url(request.param, tmp_path, request))
    upgrade(database)
    yield database
    database.dispose()


def test_the_first_worker_records_and_others_must_match(db: Database) -> None:
    first = check_model(db, "demo", "1.0.0", A, "gpu-1:10")
    assert (first.sha256, first.recorded_by) == (A, "gpu-1:10")
    again = check_model(db, "demo", "1.0.0", A, "gpu-2:20")  # same bytes, another host
    assert again.recorded_by == "gpu-1:10"
    with pytest.raises(ModelMismatch, match=f"sha256 {B}, but the index records {A}"):
        check_model(db, "demo", "1.0.0", B, "gpu-3:30")
    assert check_model(db, "demo", "1.0.1", B, "gpu-3:30").sha256 == B  # a new version


def test_a_job_row_names_model_version_and_digest() -> None:
    assert describe("demo", "1.0.0", A) == f"demo 1.0.0 sha256:{A}"


def test_a_worker_with_other_weights_refuses_to_start(tmp_path: Path) -> None:
    """`pacs worker` of a host whose demo model weights differ from those the index records
    for that name and version: it says so and exits 2, having claimed nothing."""
    from models.registry import BUILTIN, Registry

    spec = Registry([BUILTIN]).get("demo-nodule-centernet").spec
    env = {**os.environ, "PACS_HOME": str(tmp_path / "home"), "PACS_DEVICE": "cpu"}
    command = [sys.executable, "-m", "pacs.cli"]
    subprocess.run([*command, "db", "upgrade"], env=env, check=True, capture_output=True)
    db = Database(f"sqlite:///{tmp_path / 'home' / 'index.db'}")
    check_model(db, spec.name, spec.version, A, "other-host:1")
    with db.write() as conn:
        job_id = enqueue(conn, NODULE_DETECTION, "1.2.3")
    refused = subprocess.run(
        [*command, "worker", "--concurrency", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2, refused.stderr
    assert f"this host's weights have sha256 {spec.sha256}" in " ".join(refused.stderr.split())
    with db.read() as conn:
        waiting = get_job(conn, job_id)
    db.dispose()
    assert waiting is not None and waiting.status is JobStatus.QUEUED and waiting.attempts == 0
