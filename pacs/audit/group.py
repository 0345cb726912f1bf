"""Recording reads in groups: the events of concurrent requests in one write transaction.

A read's event is written, and committed, before its data goes out (:mod:`pacs.audit.record`);
one transaction per event makes every read wait for its own commit (an fsync on SQLite) and
for the commits queued before it. :class:`GroupCommit` lets them share commits instead, as
databases do with their logs: each caller queues its event and then takes the writer's lock;
the first to get it writes every event queued by then in one transaction (one read of the
chain's head, one insert, one commit: :func:`pacs.audit.store.append_events`) and tells each
caller how it went; a caller whose event went with another's commit returns as soon as it
gets the lock. Nothing changes for the caller: :meth:`GroupCommit.record` returns once its
event is committed, chained in the order the events were queued, and raises when it is not,
so the caller must not answer with the data.

No thread of its own: the caller's thread writes, so nothing is left running to stop, and the
write lock of SQLite (:meth:`pacs.index.Database.write`) and the chain's lock on PostgreSQL are
taken once per group. A group fails as one: every caller in it gets the error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pacs.audit.model import AuditEvent
from pacs.audit.store import append_events
from pacs.errors import AuditUnavailable, IndexUnavailable
from pacs.index import Database

# Events one transaction writes at most; callers queued beyond them wait for the next one.
MAX_GROUP = 512


@dataclass
class _Queued:
    event: AuditEvent
    error: IndexUnavailable | None = None
    done: threading.Event = field(default_factory=threading.Event)


class GroupCommit:
    """The audit events of concurrent callers, written in shared transactions (see module)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: list[_Queued] = []
        self._queue_lock = threading.Lock()  # held only to queue or take events
        self._writer = threading.Lock()  # held while a group is written

    def record(self, event: AuditEvent) -> None:
        """Append *event* to the audit trail; return once it is committed.

        Raises
        ------
        AuditUnavailable
            The event could not be written (nor could the others of its group).
        """
        queued = _Queued(event)
        with self._queue_lock:
            self._queue.append(queued)
        while not queued.done.is_set():
            with self._writer:
                if not queued.done.is_set():
                    self._write_group()
        if queued.error is not None:
            raise AuditUnavailable(f"audit event not written: {queued.error}") from queued.error

    def _write_group(self) -> None:
        """Write the events queued so far, at most MAX_GROUP (the writer's lock held)."""
        with self._queue_lock:
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
        error: IndexUnavailable | None = IndexUnavailable("the audit transaction was cut off")
        try:
            with self.db.write() as conn:
                append_events(conn, [queued.event for queued in group])
            error = None
        except IndexUnavailable as exc:
            error = exc
        finally:
            for queued in group:  # on any exception too: no caller waits forever
                queued.error = error
                queued.done.set()
