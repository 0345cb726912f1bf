"""The SQL engine: SQLite (embedded default, WAL) or PostgreSQL, and write transactions."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError

from pacs.errors import IndexUnavailable
from pacs.files import create_private_file, make_private_dirs

log = logging.getLogger(__name__)

# A writer waits this long for SQLite's single write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# How often a writer waiting for another process's write transaction tries again, at first
# and at most (seconds): each try doubles the pause.
WRITER_FIRST_PAUSE = 0.00005
WRITER_LONGEST_PAUSE = 0.001
# SQLite connections one Database keeps open; more are opened when needed (and closed when
# returned), never waited for: a frame request's lookup on the API's event loop must not queue
# behind 40 worker threads and the receivers for a pool slot.
SQLITE_POOL_SIZE = 16
# PostgreSQL connections one Database keeps open, and may open beyond them under load
# (PACS_DB_POOL_SIZE, PACS_DB_MAX_OVERFLOW; the README's "Operating it" sizes them).
DEFAULT_POOL_SIZE = 5
DEFAULT_MAX_OVERFLOW = 5
# Seconds a thread waits for a pooled connection before the query fails (IndexUnavailable).
POOL_TIMEOUT = 30.0
# A write made with durable=False is on disk at most this long (seconds) after its commit.
DEFERRED_SYNC_S = 0.2


class Database:
    """One engine per process; write transactions take the write lock up front on SQLite."""

    def __init__(
        self,
        url: str,
        pool_size: int = DEFAULT_POOL_SIZE,
        max_overflow: int = DEFAULT_MAX_OVERFLOW,
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._sqlite_writer: WriterLock | threading.Lock = threading.Lock()
        self._wal: WalSync | None = None
        self._deferred: DeferredSync | None = None
        if self.is_sqlite:
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:":
                # Patient data: the file 0600 before SQLite makes it 0644 (its -wal and -shm
                # files take the database file's mode), in a 0700 directory.
                make_private_dirs(Path(path).parent)
                create_private_file(Path(path))
                self._sqlite_writer = WriterLock(Path(f"{path}-writer"))
                self._wal = WalSync(Path(f"{path}-wal"))
                self._deferred = DeferredSync(self._wal.sync, DEFERRED_SYNC_S)
            self.engine: Engine = create_engine(
                url,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                pool_size=SQLITE_POOL_SIZE,
                max_overflow=-1,  # never wait for a connection (the API reads on its event loop)
            )
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(
                url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=POOL_TIMEOUT,
                pool_pre_ping=True,
            )

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[Connection]:
        """A transaction that commits on exit; errors become IndexUnavailable.

        On SQLite the transaction starts with ``BEGIN IMMEDIATE`` so that concurrent writers
        queue for the lock instead of failing when a read lock cannot be upgraded, and it is
        on disk when this returns: its WAL frames are fsync'd after the write lock is let go
        (:class:`WalSync`).

        ``durable=False``: a transaction a power cut may take back for a moment after it
        returns (the audit events of reads: :mod:`pacs.audit.group`). It commits, and is seen,
        as any other, and is on disk within DEFERRED_SYNC_S: on SQLite a thread fsyncs the WAL
        then (:class:`DeferredSync`), on PostgreSQL it commits with ``synchronous_commit``
        off, which its WAL writer flushes within three ``wal_writer_delay`` (600 ms by
        default). A durable write's sync covers every write committed before it.
        """
        # SQLite has one write lock per database. Writers queue for it here (WriterLock),
        # instead of in SQLite's busy handler, which sleeps 1, 2, 5, 10... ms between tries.
        lock = self._sqlite_writer if self.is_sqlite else contextlib.nullcontext()
        if self._wal is not None:
            self._wal.check()
        try:
            with lock, self.engine.connect() as conn:
                conn = conn.execution_options(pacs_write=True)
                with conn.begin():
                    if not (durable or self.is_sqlite):
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    yield conn
        except SQLAlchemyError as exc:
            raise IndexUnavailable(f"index transaction failed: {exc}") from exc
        if durable:
            self.sync()
        elif self._deferred is not None:
            self._deferred.request()

    def sync(self) -> None:
        """Make every transaction committed so far survive a power cut (SQLite: fsync the
        WAL; PostgreSQL commits durably by itself)."""
        if self._wal is not None:
            self._wal.sync()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction; errors become IndexUnavailable."""
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except SQLAlchemyError as exc:
            raise IndexUnavailable(f"index query failed: {exc}") from exc

    def dispose(self) -> None:
        """Close the engine's connections, once what was written is on disk."""
        if self._deferred is not None:
            self._deferred.stop()
        self.engine.dispose()


class DeferredSync:
    """Runs *sync* (:meth:`WalSync.sync`) at most *delay* seconds after :meth:`request`, in a
    thread of its own, started with the first request (again in a forked child, and after
    :meth:`stop`); the requests made while one is pending share its sync."""

    def __init__(self, sync: Callable[[], None], delay: float) -> None:
        self._sync, self._delay = sync, delay
        self._changed = threading.Condition()
        self._pending = self._stopping = False
        self._thread: threading.Thread | None = None
        self._owner = -1  # the process the thread runs in

    def request(self) -> None:
        with self._changed:
            if self._thread is None or self._owner != os.getpid():
                self._stopping = False
                self._owner = os.getpid()
                self._thread = threading.Thread(target=self._run, name="wal-sync", daemon=True)
                self._thread.start()
            if not self._pending:  # a request while one is pending must not cut its wait
                self._pending = True
                self._changed.notify()

    def stop(self) -> None:
        """Sync what is pending, now, and end the thread."""
        with self._changed:
            thread = self._thread if self._owner == os.getpid() else None
            self._thread, self._stopping = None, True
            self._changed.notify()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not (self._pending or self._stopping):
                    self._changed.wait()
                deadline = time.monotonic() + self._delay
                while not self._stopping and (left := deadline - time.monotonic()) > 0:
                    self._changed.wait(left)  # stop() cuts it short
                pending, self._pending = self._pending, False
                stopping = self._stopping
            if pending:
                try:
                    self._sync()
                except IndexUnavailable as exc:  # every later write fails too (WalSync)
                    log.error("deferred sync of the index failed: %s", exc)
            if stopping:
                return


class WriterLock:
    """The right to write an SQLite index, among the threads of this process (a lock) and
    among processes (``flock`` on a file beside the database).

    Without it, receiver processes met in SQLite's busy handler, which sleeps 1, 2, 5, 10...
    ms between tries: with four associations over two receivers, a store waited ~9.5 ms on
    average for a lock that is held ~2 ms. Here the thread that waits for another process
    tries again after 50 us, then twice as long each time up to 1 ms, and gives up, as
    SQLite would, after its busy timeout (the transaction then fails: IndexUnavailable).
    Writers that do not take this lock (another program, sqlite3's shell) still meet ours in
    SQLite's own lock, as before.

    The file's descriptor is opened by each process for itself: a child made by fork shares
    its parent's open file description, and with it any lock held on it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads = threading.Lock()
        self._fd = -1
        self._pid = -1

    def __enter__(self) -> None:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        if not self._threads.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise IndexUnavailable("index busy: no write lock within the busy timeout")
        try:
            self._lock_file(deadline)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _lock_file(self, deadline: float) -> None:
        if self._pid != os.getpid():
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise IndexUnavailable(f"cannot open the index's write lock: {exc}") from exc
            self._pid = os.getpid()
        pause = WRITER_FIRST_PAUSE
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IndexUnavailable(
                        "index busy: another process held its write lock too long"
                    ) from None
            time.sleep(pause)
            pause = min(pause * 2, WRITER_LONGEST_PAUSE)


class WalSync:
    """Puts an SQLite index's committed transactions on disk, outside its write lock.

    The connections run with ``synchronous=NORMAL``: a commit appends its frames to the WAL
    and is visible at once, and SQLite fsyncs the WAL only before a checkpoint copies it into
    the database (which it then fsyncs too). ``Database.write`` fsyncs the WAL itself after
    the commit, once the write lock is let go, before it returns: so a transaction is on disk
    before anyone is told it is done, as with ``synchronous=FULL``, but the next writer no
    longer waits out that fsync, and writers that commit close together share one disk flush.
    (The one difference: for that fsync's duration, another connection can read rows that a
    power cut would still lose; nothing has been acknowledged for them yet.)

    One fsync covers every frame written to the file before it, the WAL header included. A
    WAL that is gone was checkpointed into the database, which SQLite fsync'd, and removed by
    the last connection to close: nothing is left to sync. One that was removed and made
    again is another file: the descriptor is opened again when the path names another inode.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = -1
        self._inode: tuple[int, int, int] = (-1, -1, -1)  # device, inode, opening process
        self._failed = ""

    def sync(self) -> None:
        """fdatasync the WAL. Once one has failed, every later call fails too: the kernel may
        have dropped the pages it could not write and report the next fdatasync clean, and
        the transactions committed since would be acknowledged over a hole in the log (as
        PostgreSQL, this process then writes nothing more until it is restarted)."""
        self.check()
        try:
            fd = self._current()
            if fd < 0:
                return
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._failed = str(exc)
            raise IndexUnavailable(f"the index's write-ahead log cannot be synced: {exc}") from exc

    def check(self) -> None:
        """Fail if a sync has failed (see :meth:`sync`)."""
        if self._failed:
            raise IndexUnavailable(
                f"the index's write-ahead log could not be synced earlier: "
                f"{self._failed}; restart the process"
            )

    def _current(self) -> int:
        """A descriptor of its own (a duplicate, for the caller to close) of the file at the
        path now, or -1 if there is none."""
        try:
            found = self.path.stat()
        except FileNotFoundError:
            return -1
        key = (found.st_dev, found.st_ino, os.getpid())
        with self._lock:
            if key != self._inode:
                try:
                    fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    return -1
                opened = os.fstat(fd)
                if self._fd >= 0 and self._inode[2] == os.getpid():
                    # Another thread syncs a duplicate of it, never it: safe to close.
                    os.close(self._fd)
                # (One inherited through fork is left open in the child: its number may
                # have been closed and given to another file since.)
                self._fd, self._inode = fd, (opened.st_dev, opened.st_ino, os.getpid())
            return os.dup(self._fd)


def as_utc(moment: datetime) -> datetime:
    """*moment* as an aware UTC datetime: SQLite hands back naive ones for the UTC values we
    store, PostgreSQL aware ones in the session's time zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event (below) issue BEGIN, not the sqlite3 module.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() not in ("wal", "memory"):  # WalSync syncs the WAL and nothing else
        cursor.close()
        raise IndexUnavailable(f"the SQLite index cannot use a write-ahead log (mode {mode})")
    # NORMAL: a commit is not fsync'd by SQLite; Database.write fsyncs the WAL after it,
    # outside the write lock, before anything is acknowledged (WalSync).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("pacs_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
