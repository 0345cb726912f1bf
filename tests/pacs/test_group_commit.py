"""Group commit of index writes: shared transactions, failures isolated, results routed back."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, select, text

from pacs.errors import IndexUnavailable, InstanceConflict
from pacs.index import Database, upgrade
from pacs.index.group_commit import GroupCommit
from pacs.index.schema import facility


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade(database)
    return database


def test_concurrent_writes_share_transactions_and_fail_alone(db: Database) -> None:
    commits = []
    event.listen(db.engine, "commit", lambda conn: commits.append(1))
    group = GroupCommit(db)
    slow = threading.Event()

    def write(i: int) -> int:
        def work(conn: Connection) -> int:
            if i == 0:
                slow.wait(1)  # the first leader is slow: the others queue up behind it
            if i == 7:
                raise InstanceConflict("refused on purpose")
            conn.execute(
                text("INSERT INTO facility (name, created_at) VALUES (:n, '2026-01-01')"),
                {"n": f"f{i}"},
            )
            return i * 10

        return group.run(work)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(write, i) for i in range(40)]
        slow.set()
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=30))
            except InstanceConflict:
                outcomes.append(-1)
    assert outcomes == [-1 if i == 7 else i * 10 for i in range(40)]
    with db.read() as conn:
        names = set(conn.execute(select(facility.c.name)).scalars())
    assert names == {f"f{i}" for i in range(40) if i != 7}
    assert len(commits) < 40  # writes were batched


def test_a_failed_commit_fails_every_write_of_its_batch(db: Database) -> None:
    group = GroupCommit(db)
    db.engine.dispose()
    (Path(db.url.split(":///")[1])).unlink()
    Path(db.url.split(":///")[1]).mkdir()  # the index file became a directory: nothing works
    with pytest.raises(IndexUnavailable):
        group.run(lambda conn: conn.execute(text("SELECT 1")).scalar_one())
