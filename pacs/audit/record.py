"""Recording a read: an audit event in a transaction of its own, before the data goes out."""

from __future__ import annotations

from pacs.audit.model import AuditEvent, StoredEvent
from pacs.audit.store import append_event
from pacs.errors import AuditUnavailable, IndexUnavailable
from pacs.index import Database


def record_event(db: Database, event: AuditEvent) -> StoredEvent:
    """Append *event* in its own write transaction (reads: nothing else changes).

    Raises
    ------
    AuditUnavailable
        The event could not be written: the caller must not answer with the data.
    """
    try:
        with db.write() as conn:
            return append_event(conn, event)
    except IndexUnavailable as exc:
        raise AuditUnavailable(f"audit event not written: {exc}") from exc
