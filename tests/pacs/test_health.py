"""Liveness and readiness of a running ``pacs serve`` on PostgreSQL and S3: ``/healthz`` says
the process answers, ``/readyz`` whether the index and the storage do, with the reason (503)
while one is down, and 200 again once it is back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from minio import Minio
from sqlalchemy import create_engine, text

from tests.servers import PacsServer, PostgresServer, S3Server, wait_for


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PacsServer, Any, Any]]:
    """A server on its own PostgreSQL and S3 endpoint (stopped here, so not the shared ones)."""
    postgres, s3 = PostgresServer(), S3Server()
    home: Path = tmp_path_factory.mktemp("health") / "home"
    server = PacsServer(
        home,
        {
            "PACS_DATABASE_URL": postgres.new_database(),
            "PACS_STORAGE_URL": s3.url(),
            "PACS_S3_ACCESS_KEY": s3.access_key,
            "PACS_S3_SECRET_KEY": s3.secret_key,
        },
    )
    try:
        server.pacs("db", "upgrade")
        server.start()
        yield server, postgres, s3
    finally:
        server.stop()
        s3.stop()
        postgres.close()


def ready(server: PacsServer) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=30)


def test_ready_when_index_and_storage_answer(site: tuple[PacsServer, Any, Any]) -> None:
    server, _, _ = site
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    answer = ready(server)
    assert answer.status_code == 200 and answer.json() == {"status": "ready"}


def test_not_ready_while_postgresql_is_down(site: tuple[PacsServer, Any, Any]) -> None:
    server, postgres, _ = site
    postgres.stop()
    try:
        answer = ready(server)
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "unavailable",
            "failures": {"index": "index unreachable"},
        }
        # Alive all the same: an orchestrator must not restart it for the database's outage.
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        postgres.start()
    wait_for(lambda: ready(server).status_code == 200, 20, "readyz after PostgreSQL restarted")


def test_not_ready_while_s3_is_down(site: tuple[PacsServer, Any, Any]) -> None:
    server, _, s3 = site
    bucket = server.env["PACS_STORAGE_URL"].split("?")[0].removeprefix("s3://")
    s3.stop()
    try:
        answer = ready(server)
        assert answer.status_code == 503
        failures = answer.json()["failures"]
        assert list(failures) == ["storage"]
        assert failures["storage"] in ("storage unreachable", "storage did not answer within 3 s")
    finally:
        s3.start()
    # moto keeps its buckets in memory: the restarted endpoint lost ours (MinIO would not).
    assert ready(server).json()["failures"] == {"storage": "storage unreachable"}
    Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False).make_bucket(bucket)
    wait_for(lambda: ready(server).status_code == 200, 20, "readyz after S3 restarted")


def test_not_ready_when_the_schema_is_behind(site: tuple[PacsServer, Any, Any]) -> None:
    server, _, _ = site
    engine = create_engine(server.env["PACS_DATABASE_URL"])
    try:
        with engine.begin() as conn:
            head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        answer = ready(server)
        assert answer.status_code == 503
        reason = answer.json()["failures"]["index"]
        assert reason.startswith("index schema is at 0001") and "pacs db upgrade" in reason
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
        assert ready(server).status_code == 200
    finally:
        engine.dispose()
