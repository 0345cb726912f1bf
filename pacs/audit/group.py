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

A group of successful reads only (DEFERRABLE) is committed without waiting for the disk
(``Database.write(durable=False)``): it is chained and seen at once, and on disk within
``DEFERRED_SYNC_S`` (0.2 s; PostgreSQL: its WAL writer's 0.6 s), so a power cut in that moment
can take back the record of reads answered just before it, as an audit trail sent over syslog
loses what is in flight (IHE ATNA's ITI-20, over UDP: RFC 5426; and a frame read inside an open
window is only counted in memory: :mod:`pacs.audit.covering`). The fsync cost ~0.5 ms of every
audited read. Anything else in a group (a failure, a refused request, a login failure, a
change) makes it durable before any caller returns.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pacs.audit.model import AuditAction, AuditEvent, AuditOutcome
from pacs.audit.store import append_events
from pacs.errors import AuditUnavailable, IndexUnavailable
from pacs.index import Database

# Events one transaction writes at most; callers queued beyond them wait for the next one.
MAX_GROUP = 512
#: Successful events of these actions are on disk shortly after their commit (see module).
DEFERRABLE = frozenset({AuditAction.QUERY, AuditAction.RETRIEVE})


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
            events = [queued.event for queued in group]
            with self.db.write(durable=not all(map(deferrable, events))) as conn:
                append_events(conn, events)
            error = None
        except IndexUnavailable as exc:
            error = exc
        finally:
            for queued in group:  # on any exception too: no caller waits forever
                queued.error = error
                queued.done.set()


def deferrable(event: AuditEvent) -> bool:
    """May *event* reach the disk shortly after its commit (see module)?"""
    return event.action in DEFERRABLE and event.outcome is AuditOutcome.SUCCESS
