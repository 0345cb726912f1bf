"""The audit trail: the hash chain, tamper detection, same-transaction writes, renderings."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from sqlalchemy import select, text

from pacs.audit import (
    AuditAction,
    AuditEvent,
    AuditOutcome,
    EventFilter,
    append_event,
    find_events,
    verify_chain,
)
from pacs.audit.dicom_xml import audit_message_xml
from pacs.audit.fhir import audit_event_resource
from pacs.audit.store import GENESIS
from pacs.errors import IndexUnavailable
from pacs.facilities import Scope
from pacs.index import Database, counts, upgrade
from pacs.index.schema import audit_event
from pacs.ingest import Archive, Source
from pacs.sharing import revoke_share, share_study
from pacs.storage import open_store
from tests.conftest import database_url
from tests.dicom import CT_SMALL, derived, encode

DAY1 = datetime(2026, 12, 1, 23, 59, 0, 123456, tzinfo=UTC)
DAY2 = DAY1 + timedelta(minutes=2)
STUDY = "1.2.826.0.1.3680043.8.498.1"


def event(at: datetime, subject: str = "dr-a", **changes: object) -> AuditEvent:
    fields: dict[str, object] = {
        "action": AuditAction.RETRIEVE,
        "at": at,
        "subject": subject,
        "roles": ("radiologist",),
        "token_id": "jti-1",
        "remote_address": "192.0.2.1",
        "PatientID": "P1",
        "StudyInstanceUID": STUDY,
        "detail": {"route": "/dicom-web/studies/{study}"},
    }
    return AuditEvent(**(fields | changes))  # type: ignore[arg-type]


def write(db: Database, *events: AuditEvent) -> None:
    for e in events:
        with db.write() as conn:
            append_event(conn, e)


def broken(db: Database) -> str:
    with db.read() as conn:
        report = verify_chain(conn)
    assert report.broken is not None
    return str(report.broken)


def sql(db: Database, statement: str, **values: object) -> None:
    with db.write() as conn:
        conn.execute(text(statement), values)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    built = Database(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade(built)
    # Five events over two UTC days: ids 1-3 on day 1, 4-5 on day 2.
    write(built, *(event(DAY1, f"dr-{i}") for i in range(3)), event(DAY2), event(DAY2))
    return built


def test_chain_is_numbered_per_day_and_linked_across_days(db: Database) -> None:
    with db.read() as conn:
        stored = find_events(conn, EventFilter())
        report = verify_chain(conn)
    assert [(e.partition, e.seq) for e in stored] == [
        ("2026-12-01", 1),
        ("2026-12-01", 2),
        ("2026-12-01", 3),
        ("2026-12-02", 1),
        ("2026-12-02", 2),
    ]
    assert stored[0].prev_hash == GENESIS
    assert [e.prev_hash for e in stored[1:]] == [e.hash for e in stored[:-1]]
    assert report.intact and report.events == 5 and report.head == stored[-1].hash
    assert stored[0].event == event(DAY1, "dr-0")  # read back exactly as written


def test_an_altered_row_is_named(db: Database) -> None:
    sql(db, "UPDATE audit_event SET subject = 'someone-else' WHERE id = 2")
    assert broken(db) == (
        "day 2026-12-01 seq 2 (id 2): hash does not match the event's content: "
        "the event was altered"
    )


def test_an_altered_row_with_a_recomputed_hash_breaks_the_next_link(db: Database) -> None:
    from pacs.audit.store import HASHED, chain_hash

    with db.write() as conn:
        row = conn.execute(select(audit_event).where(audit_event.c.id == 2)).mappings().one()
        forged = dict(row) | {"subject": "someone-else"}
        conn.execute(
            text("UPDATE audit_event SET subject = :s, hash = :h WHERE id = 2"),
            {"s": "someone-else", "h": chain_hash({k: forged[k] for k in HASHED})},
        )
    assert broken(db).startswith("day 2026-12-01 seq 3 (id 3): prev_hash is not")


@pytest.mark.parametrize(
    ("deleted", "named"),
    [
        (2, "day 2026-12-01 seq 3 (id 3): seq 3 where 2 was expected"),  # inside a day
        (3, "day 2026-12-02 seq 1 (id 4): prev_hash is not"),  # a day's last
        (4, "day 2026-12-02 seq 2 (id 5): seq 2 where 1 was expected"),  # a day's first
    ],
)
def test_a_deleted_row_is_detected(db: Database, deleted: int, named: str) -> None:
    sql(db, "DELETE FROM audit_event WHERE id = :id", id=deleted)
    assert broken(db).startswith(named)


def test_reordered_rows_are_detected(db: Database) -> None:
    sql(db, "UPDATE audit_event SET seq = seq + 10 WHERE id = 1")
    sql(db, "UPDATE audit_event SET seq = 1 WHERE id = 2")
    sql(db, "UPDATE audit_event SET seq = 2 WHERE id = 1")
    assert broken(db).startswith("day 2026-12-01 seq 1 (id 2): prev_hash is not")


def test_a_clock_behind_stays_on_the_latest_day(db: Database) -> None:
    write(db, event(DAY1 - timedelta(hours=1)))
    with db.read() as conn:
        last = find_events(conn, EventFilter())[-1]
        assert (last.partition, last.seq) == ("2026-12-02", 3)
        assert verify_chain(conn).intact


def test_concurrent_writers_never_fork_the_chain_on_postgresql(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pg = Database(database_url("postgresql", tmp_path, request))
    upgrade(pg)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: write(pg, event(datetime.now(UTC), f"w{i}")), range(80)))
    with pg.read() as conn:
        report = verify_chain(conn)
    pg.dispose()
    assert report.intact and report.events == 80


def test_each_stored_instance_is_audited_in_its_transaction(embedded_archive: Archive) -> None:
    source = Source("STOW", remote_host="192.0.2.9", subject="modality-1", token_id="jti-9")
    data = CT_SMALL.read_bytes()
    embedded_archive.store(data, source)
    embedded_archive.store(data, source)  # the same bytes again: nothing changed, no event
    with embedded_archive.db.read() as conn:
        [stored] = find_events(conn, EventFilter())
    ds = pydicom.dcmread(CT_SMALL)
    e = stored.event
    assert (e.action, e.outcome, e.subject, e.token_id) == (
        AuditAction.STORE,
        AuditOutcome.SUCCESS,
        "modality-1",
        "jti-9",
    )
    assert (e.remote_address, e.facility, e.detail) == (
        "192.0.2.9",
        "default",
        {"protocol": "STOW", "outcome": "stored"},
    )
    assert (e.PatientID, e.StudyInstanceUID, e.SeriesInstanceUID, e.SOPInstanceUID) == (
        ds.PatientID,
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )


def test_a_senders_further_stores_of_a_series_are_covered_and_summed_up(tmp_path: Path) -> None:
    """With a store window, a sender's first new instance of a series is audited in its own
    transaction, its next ones are counted and written as one summary when the archive closes;
    another sender, a duplicate and a signed report each still get their own event."""
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade(db)
    archive = Archive(db, open_store(f"file://{tmp_path / 'storage'}"), store_audit_window=60)
    ct1, ct2 = Source("DIMSE", calling_ae="CT1"), Source("DIMSE", calling_ae="CT2")
    first, *more = [encode(derived()) for _ in range(4)]
    archive.store(first, ct1)
    for data in more:
        archive.store(data, ct1)
    archive.store(encode(derived()), ct2)
    archive.store(first, ct1)  # the same bytes again: no event, as without a window
    archive.store(encode(derived()), Source("REVIEW", subject="dr-a"))
    with db.read() as conn:
        before = [r.event for r in find_events(conn, EventFilter())]
    assert [(e.ae_title, e.detail["protocol"]) for e in before] == [
        ("CT1", "DIMSE"),
        ("CT2", "DIMSE"),
        (None, "REVIEW"),
    ]
    archive.close()
    with db.read() as conn:
        after = [r.event for r in find_events(conn, EventFilter())]
        assert counts(conn).instances == 6
    [summary] = after[3:]
    assert (summary.action, summary.ae_title, summary.SOPInstanceUID) == (
        AuditAction.STORE,
        "CT1",
        None,
    )
    assert summary.detail["requests"] == summary.detail["instances"] == 3
    assert sorted(summary.detail["sop_instance_uids"]) == sorted(
        pydicom.dcmread(BytesIO(data)).SOPInstanceUID for data in more
    )
    assert summary.detail["covered_by_event_at"] == before[0].at.isoformat()
    db.dispose()

    # Without a window (0), every new instance is its own event.
    db = Database(f"sqlite:///{tmp_path / 'index2.db'}")
    upgrade(db)
    plain = Archive(db, open_store(f"file://{tmp_path / 'storage2'}"))
    for _ in range(3):
        plain.store(encode(derived()), ct1)
    plain.close()
    with db.read() as conn:
        assert len(find_events(conn, EventFilter())) == 3
    db.dispose()


def test_a_store_whose_audit_event_fails_stores_nothing(embedded_archive: Archive) -> None:
    db = embedded_archive.db
    sql(
        db,
        "CREATE TRIGGER no_audit BEFORE INSERT ON audit_event BEGIN SELECT RAISE(ABORT, 'x'); END",
    )
    with pytest.raises(IndexUnavailable):
        embedded_archive.store(encode(derived()), Source("DIMSE", calling_ae="CT1"))
    sql(db, "DROP TRIGGER no_audit")
    with db.read() as conn:
        assert counts(conn).instances == 0
        assert find_events(conn, EventFilter()) == []


def test_a_store_whose_index_write_fails_leaves_no_audit_event(embedded_archive: Archive) -> None:
    db = embedded_archive.db
    sql(db, "CREATE TRIGGER no_rows BEFORE INSERT ON instance BEGIN SELECT RAISE(ABORT, 'x'); END")
    with pytest.raises(IndexUnavailable):
        embedded_archive.store(encode(derived()), Source("DIMSE", calling_ae="CT1"))
    with db.read() as conn:
        assert find_events(conn, EventFilter()) == []


def test_filters_by_patient_agent_and_time(db: Database) -> None:
    write(db, event(DAY2, "dr-x", PatientID="P2", IssuerOfPatientID="HOSP"))
    write(db, AuditEvent(AuditAction.QUERY, at=DAY2, ae_title="VIEWER"))
    with db.read() as conn:
        by_patient = find_events(conn, EventFilter(patients=[("P2", "HOSP")]))
        assert [e.event.subject for e in by_patient] == ["dr-x"]
        assert find_events(conn, EventFilter(patients=[("P2", "")])) == []
        assert [e.event.ae_title for e in find_events(conn, EventFilter(agent="VIEWER"))] == [
            "VIEWER"
        ]
        assert len(find_events(conn, EventFilter(since=DAY2))) == 4
        assert len(find_events(conn, EventFilter(until=DAY2))) == 3


@pytest.mark.parametrize("action", list(AuditAction))
def test_every_action_is_a_valid_fhir_audit_event(db: Database, action: AuditAction) -> None:
    outcome = AuditOutcome.MINOR_FAILURE if action is AuditAction.LOGIN_FAILURE else "0"
    write(
        db,
        event(
            DAY2,
            action=action,
            outcome=outcome,
            outcome_reason="HTTP 401",
            ae_title="VIEWER",
            SeriesInstanceUID="1.2.3",
            facility="north",
        ),
    )
    with db.read() as conn:
        stored = find_events(conn, EventFilter())[-1]
    resource = audit_event_resource(stored, "PACS-AI")
    parsed = FhirAuditEvent.model_validate(resource)  # R4 (R4B's AuditEvent is R4's)
    assert parsed.recorded is not None and parsed.outcome == outcome
    agent = resource["agent"][0]
    assert agent["requestor"] is True and agent["network"]["address"] == "192.0.2.1"
    assert resource["entity"][0]["what"]["identifier"]["value"] == "P1"
    assert resource["entity"][1]["what"]["identifier"]["value"] == f"urn:oid:{STUDY}"
    assert resource["subtype"][-1]["code"] == action.value


def test_dicom_audit_message_has_the_ps3_15_elements(db: Database) -> None:
    with db.read() as conn:
        stored = find_events(conn, EventFilter())[0]
    line = audit_message_xml(stored, "PACS-AI")
    assert "\n" not in line
    message = ET.fromstring(line)  # noqa: S314 - our own output, parsed as a SIEM would
    assert message.tag == "AuditMessage"
    identification = message.find("EventIdentification")
    assert identification is not None
    assert identification.attrib == {
        "EventActionCode": "R",
        "EventDateTime": "2026-12-01T23:59:00.123456+00:00",
        "EventOutcomeIndicator": "0",
    }
    event_id = identification.find("EventID")
    assert event_id is not None and event_id.attrib["csd-code"] == "110104"
    requestor, archive = message.findall("ActiveParticipant")
    assert requestor.attrib["UserID"] == "dr-0" and requestor.attrib["UserIsRequestor"] == "true"
    assert requestor.attrib["NetworkAccessPointID"] == "192.0.2.1"
    assert archive.attrib == {"UserID": "PACS-AI", "UserIsRequestor": "false"}
    assert message.find("AuditSourceIdentification") is not None
    objects = message.findall("ParticipantObjectIdentification")
    assert [
        (o.attrib["ParticipantObjectTypeCode"], o.attrib["ParticipantObjectID"]) for o in objects
    ][:2] == [("1", "P1"), ("2", STUDY)]
    query = objects[2].find("ParticipantObjectQuery")
    assert query is not None and json.loads(base64.b64decode(query.text or "")) == {
        "route": "/dicom-web/studies/{study}"
    }


def test_sharing_is_audited_in_the_grant_transaction(embedded_archive: Archive) -> None:
    stored = embedded_archive.store(CT_SMALL.read_bytes(), Source("DIMSE", calling_ae="CT1"))
    embedded_archive.facility_id("north")
    with embedded_archive.db.write() as conn:
        grant = share_study(
            conn, Scope.everything(), stored.StudyInstanceUID, "north", granted_by="admin-1"
        )
    with embedded_archive.db.write() as conn:
        revoke_share(conn, Scope.everything(), grant.id, revoked_by="admin-2")
    with embedded_archive.db.read() as conn:
        shares = [e.event for e in find_events(conn, EventFilter(agent="admin-1"))]
        shares += [e.event for e in find_events(conn, EventFilter(agent="admin-2"))]
    assert [(e.action, e.detail["grant"], e.detail["to"]) for e in shares] == [
        (AuditAction.SHARE, "granted", "north"),
        (AuditAction.SHARE, "revoked", "north"),
    ]
    patient_id = pydicom.dcmread(CT_SMALL).PatientID
    assert {(e.StudyInstanceUID, e.PatientID, e.facility) for e in shares} == {
        (stored.StudyInstanceUID, patient_id, "default")
    }
