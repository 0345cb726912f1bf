"""Shared fixtures: real PostgreSQL, a real S3 endpoint, archives on every backend pair."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.index import Database, upgrade
from pacs.ingest import Archive
from pacs.storage import open_store
from tests.servers import PostgresServer, S3Server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.stop()


def database_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.new_database()


def storage_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "filesystem":
        return f"file://{tmp_path / 'storage'}"
    s3: S3Server = request.getfixturevalue("s3")
    return s3.url()


def make_archive(database: str, storage: str) -> Archive:
    db = Database(database)
    upgrade(db)
    blobs = open_store(storage, S3Server.access_key, S3Server.secret_key)
    return Archive(db, blobs)


@pytest.fixture(
    params=[
        ("filesystem", "sqlite"),
        ("filesystem", "postgresql"),
        ("s3", "sqlite"),
        ("s3", "postgresql"),
    ],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    """An empty archive on each storage backend x index database."""
    storage_kind, database_kind = request.param
    built = make_archive(
        database_url(database_kind, tmp_path, request),
        storage_url(storage_kind, tmp_path, request),
    )
    yield built
    built.db.dispose()


@pytest.fixture
def embedded_archive(tmp_path: Path) -> Iterator[Archive]:
    """The embedded default: SQLite and filesystem."""
    built = make_archive(f"sqlite:///{tmp_path / 'index.db'}", f"file://{tmp_path / 'storage'}")
    yield built
    built.db.dispose()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after each test, so that an unclosed socket or file is reported (warnings are
    errors) by the test that leaked it, not by whichever test the collector happens to hit."""
    yield
    gc.collect()
