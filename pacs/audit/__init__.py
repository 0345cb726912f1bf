"""The audit trail: every access to and change of patient data, hash-chained.

Who, what, when, from where and with what outcome (:class:`AuditEvent`), appended in the
transaction of the change it records (:func:`append_event`) or, for reads, in transactions
concurrent readers share (:class:`GroupCommit`), proved intact by
:func:`verify_chain`, and read out as FHIR AuditEvent resources or DICOM audit messages.
"""

from pacs.audit.group import GroupCommit
from pacs.audit.model import AuditAction, AuditEvent, AuditOutcome, StoredEvent
from pacs.audit.record import record_event
from pacs.audit.store import (
    EventFilter,
    append_event,
    append_events,
    count_events,
    event_by_id,
    find_events,
    iter_events,
)
from pacs.audit.verify import BrokenLink, ChainReport, verify_chain

__all__ = [
    "AuditAction",
    "AuditEvent",
    "AuditOutcome",
    "BrokenLink",
    "ChainReport",
    "EventFilter",
    "GroupCommit",
    "StoredEvent",
    "append_event",
    "append_events",
    "count_events",
    "event_by_id",
    "find_events",
    "iter_events",
    "record_event",
    "verify_chain",
]
