"""Group commit: concurrent index writes share one transaction and one fsync.

SQLite has a single write lock and each commit waits for an fsync of the WAL. When several
associations store at once, their writes queue for that lock one by one. Here the first writer
to arrive leads: it takes every write waiting at that moment and runs them in one transaction,
each inside its own SAVEPOINT so that one failing write fails alone, then commits once. A lone
writer leads its own batch of one and waits for nobody.

Used for SQLite only: on PostgreSQL a batch would hold the row locks of several studies at
once, and two batches taking them in different orders could deadlock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from pacs.errors import IndexUnavailable
from pacs.index.database import Database

T = TypeVar("T")

MAX_BATCH = 32


class _Request(Generic[T]):
    def __init__(self, work: Callable[[Connection], T]) -> None:
        self.work = work
        self.result: T | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.wake = threading.Event()  # set when finished, or when promoted to leader


class GroupCommit:
    """Runs index writes in shared transactions (see module docstring)."""

    def __init__(self, db: Database, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[_Request[object]] = []
        self._leading = False

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run *work* in a committed transaction; its exception, or the commit's, is raised."""
        request: _Request[object] = _Request(work)
        with self._lock:
            self._pending.append(request)
            lead = not self._leading
            self._leading = True
        while not lead:
            request.wake.wait()
            request.wake.clear()
            if request.finished:
                break
            lead = True  # promoted: the previous leader left us the pending writes
        if not request.finished:
            self._lead(request)
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _lead(self, own: _Request[object]) -> None:
        with self._lock:
            self._pending.remove(own)
            batch = [own, *self._pending[: self.max_batch - 1]]
            del self._pending[: self.max_batch - 1]
        self._commit(batch)
        with self._lock:
            if self._pending:
                self._pending[0].wake.set()  # the next leader; we return to our peer now
            else:
                self._leading = False
        for request in batch:
            request.finished = True
            request.wake.set()

    def _commit(self, batch: list[_Request[object]]) -> None:
        try:
            with self.db.write() as conn:
                for request in batch:
                    try:
                        with conn.begin_nested():
                            request.result = request.work(conn)
                    except SQLAlchemyError as exc:
                        request.error = IndexUnavailable(f"index write failed: {exc}")
                    except Exception as exc:  # this write fails alone (e.g. a conflict)
                        request.error = exc
        except (IndexUnavailable, SQLAlchemyError) as exc:
            failure = exc if isinstance(exc, IndexUnavailable) else IndexUnavailable(str(exc))
            for request in batch:
                if request.error is None:
                    request.error, request.result = failure, None
        except BaseException as exc:
            for request in batch:
                if request.error is None:
                    request.error, request.result = exc, None
