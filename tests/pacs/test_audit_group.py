"""Audit events of concurrent callers committed in groups: complete, chained, failing as one."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import select, text

from pacs.audit import (
    AuditAction,
    AuditOutcome,
    EventFilter,
    GroupCommit,
    append_event,
    append_events,
    find_events,
    verify_chain,
)
from pacs.errors import AuditUnavailable
from pacs.index import Database, upgrade
from pacs.index.schema import audit_event
from tests.conftest import database_url
from tests.pacs.test_audit import DAY1, DAY2, event

FAIL_AUDIT = (
    "CREATE TRIGGER no_audit BEFORE INSERT ON audit_event BEGIN SELECT RAISE(ABORT, 'x'); END"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(tmp_path: Path, request: pytest.FixtureRequest) -> Database:
    built = Database(database_url(request.param, tmp_path, request))
    upgrade(built)
    request.addfinalizer(built.dispose)
    return built


def commits(db: Database) -> list[int]:
    """A list that grows by one with each transaction committed on *db*."""
    seen: list[int] = []
    sa_event.listen(db.engine, "commit", lambda _conn: seen.append(1))
    return seen


def test_a_group_is_chained_as_the_same_events_appended_one_by_one(tmp_path: Path) -> None:
    events = [event(DAY1, f"dr-{i}") for i in range(3)] + [event(DAY2), event(DAY2)]
    one_by_one, grouped = (Database(f"sqlite:///{tmp_path / name}") for name in ("a.db", "b.db"))
    for db in (one_by_one, grouped):
        upgrade(db)
        with db.write() as conn:
            append_event(conn, event(DAY1, "before"))
    for e in events:
        with one_by_one.write() as conn:
            append_event(conn, e)
    with grouped.write() as conn:
        append_events(conn, events)

    def rows(db: Database) -> list[tuple[object, ...]]:
        with db.read() as conn:
            assert verify_chain(conn).intact
            return [tuple(r) for r in conn.execute(select(audit_event).order_by(audit_event.c.id))]

    assert rows(grouped) == rows(one_by_one)  # same days, seqs, hashes: the chain is one line
    assert len(rows(grouped)) == 6


def test_concurrent_callers_are_all_recorded_in_shared_commits(db: Database) -> None:
    group = GroupCommit(db)
    committed = commits(db)
    callers = 64
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: group.record(event(datetime.now(UTC), f"c{i}")), range(callers)))
    with db.read() as conn:
        report = verify_chain(conn)
        subjects = sorted(e.event.subject or "" for e in find_events(conn, EventFilter()))
    assert report.intact and report.events == callers
    assert subjects == sorted(f"c{i}" for i in range(callers))
    assert len(committed) <= callers


def test_callers_queued_behind_a_writer_share_one_commit(db: Database) -> None:
    group = GroupCommit(db)
    committed = commits(db)
    callers = 8
    returned: list[int] = []

    def record(i: int) -> None:
        group.record(event(datetime.now(UTC), f"q{i}"))
        returned.append(i)

    with group._writer:  # a group being written: the callers queue behind it
        threads = [threading.Thread(target=record, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        while len(group._queue) < callers:
            threading.Event().wait(0.01)
        threading.Event().wait(0.2)
        assert (committed, returned) == ([], [])  # nobody returns before its commit
    for thread in threads:
        thread.join(timeout=30)
    assert len(committed) == 1 and sorted(returned) == list(range(callers))
    with db.read() as conn:
        assert verify_chain(conn).events == callers


def test_successful_reads_alone_are_committed_without_waiting_for_the_disk(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    durables: list[bool] = []
    write = db.write

    def spy(durable: bool = True) -> Any:
        durables.append(durable)
        return write(durable)

    monkeypatch.setattr(db, "write", spy)
    group = GroupCommit(db)
    now = datetime.now(UTC)
    group.record(event(now, "reader"))
    group.record(event(now, "querier", action=AuditAction.QUERY))
    group.record(event(now, "refused", outcome=AuditOutcome.MINOR_FAILURE))
    group.record(event(now, "signer", action=AuditAction.SIGN))
    group.record(event(now, "stranger", action=AuditAction.LOGIN_FAILURE))
    assert durables == [False, False, True, True, True]
    with db.read() as conn:
        assert verify_chain(conn).events == 5
    with db.write(durable=False) as conn:  # PostgreSQL: its WAL writer flushes the commit
        if not db.is_sqlite:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    with db.write() as conn:
        if not db.is_sqlite:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


def test_a_group_that_cannot_be_written_fails_every_caller(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade(db)
    group = GroupCommit(db)
    with db.write() as conn:
        conn.execute(text(FAIL_AUDIT))

    def record(i: int) -> str:
        try:
            group.record(event(datetime.now(UTC), f"f{i}"))
        except AuditUnavailable as exc:
            return str(exc)
        return "recorded"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(record, range(24)))
    assert all(o.startswith("audit event not written") for o in outcomes), outcomes
    with db.write() as conn:
        conn.execute(text("DROP TRIGGER no_audit"))
    group.record(event(datetime.now(UTC), "after"))  # the next group is written
    with db.read() as conn:
        assert [e.event.subject for e in find_events(conn, EventFilter())] == ["after"]
