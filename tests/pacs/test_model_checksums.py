"""The weights checksum each model name and version runs with, recorded in the index: the
first worker records it, the same bytes pass anywhere, other bytes are refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.index import Database, upgrade
from pacs.model_checksums import ModelMismatch, check_model, describe
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
