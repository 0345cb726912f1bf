"""Appending to the audit trail inside the caller's transaction, and reading it back.

Each row carries the SHA-256 of its own canonical form, which includes the hash of the row
before it (:func:`chain_hash`): changing, deleting or reordering a row breaks the chain from
that row on, and ``pacs audit verify`` names where. Rows are numbered per UTC day (``day``,
``seq``); a day's first row chains to the previous day's last (the first row of all to
:data:`GENESIS`), so the chain is one line through the days.

Two writers must never chain to the same row. SQLite serialises write transactions already
(``BEGIN IMMEDIATE``, :meth:`pacs.index.Database.write`); on PostgreSQL the append takes a
transaction-scoped advisory lock, held until the caller's transaction ends. Callers append
last in their transaction so the lock is held briefly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, false, func, or_, select, text

from pacs.audit.model import AuditAction, AuditEvent, AuditOutcome, StoredEvent
from pacs.index.database import as_utc
from pacs.index.schema import audit_event, facility, patient, study

#: The prev_hash of the first event ever written.
GENESIS = "0" * 64
# pg_advisory_xact_lock key of the chain's head (any fixed 64-bit number: ours is "AUDIT").
_CHAIN_LOCK = 0x4155444954
# The columns the hash covers, in this order (all but id and hash).
HASHED = (
    "day",
    "seq",
    "at",
    "action",
    "outcome",
    "outcome_reason",
    "subject",
    "roles",
    "facility",
    "ae_title",
    "token_id",
    "remote_address",
    "patient_id",
    "issuer_of_patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "detail",
    "prev_hash",
)


def append_event(conn: Connection, event: AuditEvent) -> StoredEvent:
    """Append *event* to the chain in the caller's (write) transaction.

    A study-level event without a patient gets the study's patient and facility from the
    index, so the trail is searchable by patient.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The write failed: the caller's transaction fails with it (nothing unaudited commits).
    """
    [(event, row)] = _chained(conn, [event])
    # Values as parameters, not .values(**row): the statement is then compiled once and cached.
    new_id = conn.execute(_INSERT, row)
    return StoredEvent(
        int(new_id.scalar_one()), row["day"], row["seq"], event, row["prev_hash"], row["hash"]
    )


def append_events(conn: Connection, events: list[AuditEvent]) -> None:
    """Append *events*, in this order, to the chain in the caller's (write) transaction: one
    read of the chain's head and one multi-row insert (a group commit, :mod:`pacs.audit.group`).
    Each event is completed and chained as :func:`append_event` does it.

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The write failed: the caller's transaction fails with it, none of *events* is written.
    """
    if events:
        conn.execute(_INSERT_MANY, [row for _, row in _chained(conn, events)])


_INSERT = audit_event.insert().returning(audit_event.c.id)
_INSERT_MANY = audit_event.insert()
_LAST = (
    select(audit_event.c.day, audit_event.c.seq, audit_event.c.hash)
    .order_by(audit_event.c.day.desc(), audit_event.c.seq.desc())
    .limit(1)
)


def _chained(conn: Connection, events: list[AuditEvent]) -> list[tuple[AuditEvent, dict[str, Any]]]:
    """*events* (completed with their study's patient) and their rows, chained to the head
    of the chain and to each other, under the chain's lock (PostgreSQL)."""
    patients: dict[str, _StudyPatient] = {}
    completed = []
    for event in events:
        if event.StudyInstanceUID and event.PatientID is None:
            event = _with_patient(conn, event, patients)
        completed.append(event)
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})
    last = conn.execute(_LAST).first()
    head = None if last is None else (str(last.day), int(last.seq), str(last.hash))
    chained = []
    for event in completed:
        at = event.at.astimezone(UTC)
        day = at.date().isoformat()
        if head is not None and head[0] > day:
            day = head[0]  # a clock behind the last writer's: stay on its day, never go back
        seq = head[1] + 1 if head is not None and head[0] == day else 1
        row = _row(event, at) | {
            "day": day,
            "seq": seq,
            "prev_hash": GENESIS if head is None else head[2],
        }
        row["hash"] = chain_hash(row)
        chained.append((event, row))
        head = (day, seq, row["hash"])
    return chained


def chain_hash(row: dict[str, Any]) -> str:
    """SHA-256 (hex) of a row's canonical form: its HASHED columns as a JSON array."""
    values = [_canonical(column, row[column]) for column in HASHED]
    canonical = json.dumps(values, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def chain_rows(conn: Connection) -> Iterator[Any]:
    """Every row in chain order (day, seq), streamed."""
    query = select(audit_event).order_by(audit_event.c.day, audit_event.c.seq)
    yield from conn.execution_options(yield_per=1000).execute(query)


@dataclass(frozen=True)
class EventFilter:
    """Which events to read: *since* <= at < *until*, of one of *patients* ((PatientID,
    IssuerOfPatientID) pairs, "" for no issuer; an empty list matches nothing), by *agent*
    (a token subject or a calling AE title)."""

    since: datetime | None = None
    until: datetime | None = None
    patients: list[tuple[str, str]] | None = None
    agent: str | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        c = audit_event.c
        if self.since is not None:
            query = query.where(c.at >= self.since.astimezone(UTC))
        if self.until is not None:
            query = query.where(c.at < self.until.astimezone(UTC))
        if self.patients is not None:
            query = query.where(
                or_(
                    false(),
                    *(
                        and_(c.patient_id == pid, func.coalesce(c.issuer_of_patient_id, "") == iss)
                        for pid, iss in self.patients
                    ),
                )
            )
        if self.agent is not None:
            query = query.where(or_(c.subject == self.agent, c.ae_title == self.agent))
        return query


def find_events(
    conn: Connection, where: EventFilter, limit: int | None = None, offset: int = 0
) -> list[StoredEvent]:
    """The events *where* selects, in chain order, one page."""
    query = where.apply(select(audit_event)).order_by(audit_event.c.day, audit_event.c.seq)
    if limit is not None:
        query = query.limit(limit)
    return [stored_from_row(row) for row in conn.execute(query.offset(offset))]


def iter_events(conn: Connection, where: EventFilter) -> Iterator[StoredEvent]:
    """The events *where* selects, in chain order, streamed (an export of any size)."""
    query = where.apply(select(audit_event)).order_by(audit_event.c.day, audit_event.c.seq)
    for row in conn.execution_options(yield_per=1000).execute(query):
        yield stored_from_row(row)


def count_events(conn: Connection, where: EventFilter) -> int:
    query = where.apply(select(func.count()).select_from(audit_event))
    return int(conn.execute(query).scalar_one())


def event_by_id(conn: Connection, event_id: int) -> StoredEvent | None:
    row = conn.execute(select(audit_event).where(audit_event.c.id == event_id)).first()
    return None if row is None else stored_from_row(row)


def stored_from_row(row: Any) -> StoredEvent:
    event = AuditEvent(
        action=AuditAction(row.action),
        outcome=AuditOutcome(row.outcome),
        at=as_utc(row.at),
        subject=row.subject,
        roles=tuple(row.roles.split()),
        facility=row.facility,
        ae_title=row.ae_title,
        token_id=row.token_id,
        remote_address=row.remote_address,
        PatientID=row.patient_id,
        IssuerOfPatientID=row.issuer_of_patient_id,
        StudyInstanceUID=row.study_instance_uid,
        SeriesInstanceUID=row.series_instance_uid,
        SOPInstanceUID=row.sop_instance_uid,
        outcome_reason=row.outcome_reason,
        detail=json.loads(row.detail),
    )
    return StoredEvent(int(row.id), row.day, int(row.seq), event, row.prev_hash, row.hash)


def _row(event: AuditEvent, at: datetime) -> dict[str, Any]:
    return {
        "at": at,
        "action": event.action.value,
        "outcome": event.outcome.value,
        "outcome_reason": event.outcome_reason,
        "subject": event.subject,
        "roles": " ".join(event.roles),
        "facility": event.facility,
        "ae_title": event.ae_title,
        "token_id": event.token_id,
        "remote_address": event.remote_address,
        "patient_id": event.PatientID,
        "issuer_of_patient_id": event.IssuerOfPatientID,
        "study_instance_uid": event.StudyInstanceUID,
        "series_instance_uid": event.SeriesInstanceUID,
        "sop_instance_uid": event.SOPInstanceUID,
        "detail": json.dumps(event.detail, sort_keys=True, separators=(",", ":")),
    }


def _canonical(column: str, value: Any) -> Any:
    if column == "at":
        # Microseconds survive both backends; SQLite hands back naive UTC.
        return as_utc(value).isoformat(timespec="microseconds")
    return value


# Built once: it runs for every group of read events (building it cost more than running it).
_STUDY_PATIENT = (
    select(patient.c.patient_id, patient.c.issuer_of_patient_id, facility.c.name)
    .join(study, study.c.patient_fk == patient.c.id)
    .join(facility, facility.c.id == patient.c.facility_id)
    .where(study.c.study_instance_uid == bindparam("study_uid"))
)
# A study's (PatientID, IssuerOfPatientID, facility), or None: not in the index.
_StudyPatient = tuple[str, str | None, str] | None


def _with_patient(
    conn: Connection, event: AuditEvent, known: dict[str, _StudyPatient]
) -> AuditEvent:
    """*event* with its study's patient and facility; *known*: the studies this transaction
    has looked up already (a batch of reads is mostly of one study), added to here."""
    uid = str(event.StudyInstanceUID)
    if uid not in known:
        found = conn.execute(_STUDY_PATIENT, {"study_uid": uid}).first()
        known[uid] = None if found is None else (found[0], found[1] or None, found[2])
    patient_of = known[uid]
    if patient_of is None:
        return event
    patient_id, issuer, facility_name = patient_of
    return replace(
        event,
        PatientID=patient_id,
        IssuerOfPatientID=issuer,
        facility=event.facility or facility_name,
    )
