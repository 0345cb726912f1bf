"""SQLite's write lock taken in our own queue (pacs.index.database.WriterLock): among the
threads of a process and among processes, with SQLite's busy timeout still the limit."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pacs.index.database as database
from pacs.errors import IndexUnavailable
from pacs.index import Database
from pacs.index.database import WriterLock

HELD = 0.5  # seconds one writer keeps its transaction open while another waits


def _db(path: Path) -> Database:
    db = Database(f"sqlite:///{path}")
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS row (writer TEXT, at REAL)")
    return db


def _write_rows(path: str, writer: str, count: int) -> None:
    db = _db(Path(path))
    for _ in range(count):
        with db.write() as conn:
            conn.exec_driver_sql("INSERT INTO row VALUES (?, ?)", (writer, time.time()))
    db.dispose()


def _enter(lock: WriterLock | str, go: Any, entered: Any) -> None:
    writer = lock if isinstance(lock, WriterLock) else WriterLock(Path(lock))
    go.wait(60)
    with writer:
        entered.value = time.time()


def _rows(db: Database) -> list[tuple[str, float]]:
    with db.read() as conn:
        return [(w, at) for w, at in conn.exec_driver_sql("SELECT writer, at FROM row")]


def test_writer_processes_take_turns_without_a_busy_error(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    db = _db(path)
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_write_rows, args=(str(path), f"w{n}", 150)) for n in range(3)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    assert [writer.exitcode for writer in writers] == [0, 0, 0]
    rows = _rows(db)
    assert sorted({w for w, _ in rows}) == ["w0", "w1", "w2"]
    assert len(rows) == 450
    assert (tmp_path / "index.db-writer").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_another_process_waits_for_the_lock(tmp_path: Path, start_method: str) -> None:
    lock = WriterLock(tmp_path / "index.db-writer")
    with lock:  # its file is open in this process before a fork
        pass
    context = multiprocessing.get_context(start_method)
    go, entered = context.Event(), context.Value("d", 0.0)
    # A forked child inherits the lock with this process's open file description: had it
    # flock'ed that one, it would "hold" the lock whenever this process does.
    inherited = lock if start_method == "fork" else str(lock.path)
    child = context.Process(target=_enter, args=(inherited, go, entered))
    child.start()
    try:
        with lock:
            go.set()
            time.sleep(HELD)
            released = time.time()
        child.join(60)
    finally:
        child.kill()
    assert child.exitcode == 0
    assert entered.value >= released


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    db = _db(tmp_path / "index.db")
    inside = 0
    most = 0
    lock = threading.Lock()

    def write() -> None:
        nonlocal inside, most
        for _ in range(30):
            with db.write() as conn:
                with lock:
                    inside += 1
                    most = max(most, inside)
                conn.exec_driver_sql("INSERT INTO row VALUES ('t', 0)")
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert most == 1
    assert len(_rows(db)) == 120


def test_a_writer_gives_up_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "index.db"
    db = _db(path)
    other = _db(path)  # another open file description: to flock, another process
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 300)
    with db.write() as conn:
        conn.exec_driver_sql("INSERT INTO row VALUES ('holder', 0)")
        began = time.monotonic()
        with pytest.raises(IndexUnavailable, match="write lock"), other.write() as late:
            late.exec_driver_sql("INSERT INTO row VALUES ('late', 0)")
        waited = time.monotonic() - began
    assert 0.3 <= waited < 5
    assert [w for w, _ in _rows(db)] == ["holder"]
    with other.write() as conn:  # free again once the holder has committed
        conn.exec_driver_sql("INSERT INTO row VALUES ('late', 0)")
    assert sorted(w for w, _ in _rows(db)) == ["holder", "late"]


def test_a_write_returns_once_its_wal_is_synced_and_the_lock_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "index.db"
    db = _db(path)
    with db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: ours syncs
    synced: list[tuple[int, bool]] = []
    real = database.os.fdatasync

    def fdatasync(fd: int) -> None:
        lock = db._sqlite_writer
        assert isinstance(lock, WriterLock)
        free = lock._threads.acquire(blocking=False)  # the next writer need not wait for it
        if free:
            lock._threads.release()
        synced.append((database.os.fstat(fd).st_ino, free))
        real(fd)

    monkeypatch.setattr(database.os, "fdatasync", fdatasync)
    with db.write() as conn:
        conn.exec_driver_sql("INSERT INTO row VALUES ('a', 0)")
        assert synced == []  # not before the commit
    wal = Path(f"{path}-wal")
    assert synced == [(wal.stat().st_ino, True)]

    with pytest.raises(IndexUnavailable), db.write() as conn:  # rolled back: nothing to sync
        conn.exec_driver_sql("INSERT INTO nowhere VALUES (1)")
    assert len(synced) == 1

    # The last connection closing checkpoints the WAL into the database and removes it: a
    # sync then has nothing to do. The next write makes another WAL, which is the one synced.
    db.dispose()
    assert not wal.exists()
    db.sync()
    assert len(synced) == 1
    with db.write() as conn:
        conn.exec_driver_sql("INSERT INTO row VALUES ('b', 0)")
    assert synced[-1] == (wal.stat().st_ino, True)
    assert sorted(writer for writer, _ in _rows(db)) == ["a", "b"]


def test_a_write_not_durable_returns_at_once_and_is_synced_shortly_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    delay = 1.0
    monkeypatch.setattr(database, "DEFERRED_SYNC_S", delay)
    path = tmp_path / "index.db"
    db = _db(path)
    synced: list[float] = []
    real = database.os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(time.monotonic())
        real(fd)

    monkeypatch.setattr(database.os, "fdatasync", fdatasync)
    began = time.monotonic()
    for writer in ("a", "b"):  # both within one delay: one sync covers them
        with db.write(durable=False) as conn:
            conn.exec_driver_sql("INSERT INTO row VALUES (?, 0)", (writer,))
    assert synced == []
    assert sorted(w for w, _ in _rows(db)) == ["a", "b"]  # seen before they are on disk
    deadline = began + 10
    while not synced and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(synced) == 1
    assert synced[0] - began >= delay  # never sooner: the thread waits out the delay
    time.sleep(delay + 0.2)
    assert len(synced) == 1  # nothing pending: no more syncs

    with db.write(durable=False) as conn:  # closing the index syncs what is pending, now
        conn.exec_driver_sql("INSERT INTO row VALUES ('c', 0)")
    closing = time.monotonic()
    db.dispose()
    assert len(synced) == 2 and synced[1] - closing < delay
    with db.write(durable=False) as conn:  # and a later write starts the thread again
        conn.exec_driver_sql("INSERT INTO row VALUES ('d', 0)")
    db.dispose()
    assert len(synced) == 3
    assert sorted(w for w, _ in _rows(db)) == ["a", "b", "c", "d"]


def test_after_a_failed_wal_sync_nothing_more_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed fdatasync may have lost pages the next one would not report: the write that
    met it fails (committed, durability unknown), and so does every later one."""
    db = _db(tmp_path / "index.db")
    real = database.os.fdatasync
    failures = [OSError(5, "Input/output error")]

    def fdatasync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    monkeypatch.setattr(database.os, "fdatasync", fdatasync)
    with pytest.raises(IndexUnavailable, match="cannot be synced"), db.write() as conn:
        conn.exec_driver_sql("INSERT INTO row VALUES ('a', 0)")
    with pytest.raises(IndexUnavailable, match="restart the process"), db.write() as conn:
        conn.exec_driver_sql("INSERT INTO row VALUES ('b', 0)")
    assert [writer for writer, _ in _rows(db)] == ["a"]  # committed, never acknowledged
    with pytest.raises(IndexUnavailable, match="restart the process"):
        db.sync()
