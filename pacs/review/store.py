"""Changing the review in the index: apply an action, record a signature.

Every action runs in one transaction that first moves the review from the version the client
saw to the next (``UPDATE review ... WHERE version = :seen``), then changes the findings and
appends its ``review_action`` row. A client that saw an older version changes nothing and is
told so (StaleVersion): two radiologists never overwrite each other, and nothing acknowledged
is lost. The first action creates the review (no row: the study is unread); two first actions
at once meet on the unique Study Instance UID, and the second is stale.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import Connection, select

from pacs.audit import AuditAction, AuditEvent, append_event
from pacs.changefeed import ChangeKind, append_change
from pacs.index import Database
from pacs.index.records import insert_for
from pacs.index.schema import review, review_action, review_finding
from pacs.ingest import Archive
from pacs.review.geometry import VolumeBounds
from pacs.review.model import (
    ActionKind,
    AddNodule,
    Confirm,
    Correct,
    Decision,
    Edit,
    NotReviewable,
    Origin,
    Reject,
    Review,
    ReviewedFinding,
    ReviewStatus,
    SetImpression,
    SetLungRads,
    SignedReport,
    StaleVersion,
    UnknownFinding,
)
from pacs.review.read import analysed_run, finding_of, load_review, signed_to_json
from pacs.review.stored import series_headers


def edit_review(
    archive: Archive, StudyInstanceUID: str, seen: int, actor: str, edit: Edit
) -> Review:
    """Check *edit* against the review the client saw, apply it, and return the new review.

    The checks that read blobs (a centre against the analysed volume) run before the write
    transaction, so it never waits on storage; the version is checked again inside it.

    Raises
    ------
    StaleVersion, NotReviewable, UnknownFinding
        As apply_edit; nothing changed.
    InvalidEdit
        A centre outside the analysed CT volume; nothing changed.
    """
    with archive.db.read() as conn:
        current = load_review(conn, StudyInstanceUID)
    if current.version != seen:
        raise StaleVersion.behind(current.version, seen)
    if current.run is None:
        raise NotReviewable(
            f"study {StudyInstanceUID} has no AI run that analysed a series: nothing to review"
        )
    if isinstance(edit, Confirm | Reject | Correct) and edit.tracking_uid not in {
        f.tracking_uid for f in current.findings
    }:
        raise UnknownFinding(f"no finding {edit.tracking_uid} in this review")
    if isinstance(edit, Correct | AddNodule) and edit.centre is not None:
        headers = series_headers(archive, current.run.SeriesInstanceUID)
        VolumeBounds.of(headers).check(edit.centre)
    apply_edit(archive.db, StudyInstanceUID, seen, actor, edit)
    with archive.db.read() as conn:
        return load_review(conn, StudyInstanceUID)


def apply_edit(db: Database, StudyInstanceUID: str, seen: int, actor: str, edit: Edit) -> None:
    """Apply one edit as *actor* to the review at version *seen*, in one transaction.

    Raises
    ------
    StaleVersion
        The review is not at version *seen*; nothing changed.
    NotReviewable
        No review yet, and no analysed AI run to start one from.
    UnknownFinding
        The edit names a tracking UID the review does not have; nothing changed.
    """
    now = datetime.now(UTC)
    with db.write() as conn:
        review_id, version = _next_version(conn, StudyInstanceUID, seen, now)
        tracking_uid, detail = _apply(conn, review_id, edit, now)
        _log(
            conn, StudyInstanceUID, review_id, version, now, actor, edit.kind, tracking_uid, detail
        )


def record_signature(db: Database, StudyInstanceUID: str, seen: int, signed: SignedReport) -> None:
    """Record a stored, signed SR: the review is final at the next version and revision, with
    its ``sign`` action and a ``report.final`` (first) or ``report.amended`` change, together.

    Raises
    ------
    StaleVersion
        The review moved on since *seen* (the caller takes the stored SR back).
    """
    with db.write() as conn:
        review_id, version = _next_version(conn, StudyInstanceUID, seen, signed.signed_at)
        updated = conn.execute(
            review.update()
            .where(review.c.id == review_id, review.c.revision == signed.revision - 1)
            .values(
                status=ReviewStatus.FINAL.value,
                revision=signed.revision,
                signed_sr_sop_instance_uid=signed.SOPInstanceUID,
                signed_by=signed.signed_by,
                signed_at=signed.signed_at,
                signed_report=signed_to_json(signed),
            )
        ).rowcount
        if updated != 1:  # pragma: no cover - the revision only moves with the version
            raise StaleVersion("the review was signed by someone else meanwhile")
        detail = {
            "revision": signed.revision,
            "SOPInstanceUID": signed.SOPInstanceUID,
            "lung_rads": signed.lung_rads,
            "nodules": [n.tracking_uid for n in signed.nodules],
        }
        _log(
            conn,
            StudyInstanceUID,
            review_id,
            version,
            signed.signed_at,
            signed.signed_by,
            ActionKind.SIGN,
            None,
            detail,
        )
        kind = ChangeKind.REPORT_FINAL if signed.revision == 1 else ChangeKind.REPORT_AMENDED
        append_change(
            conn,
            kind,
            StudyInstanceUID,
            now=signed.signed_at,
            SeriesInstanceUID=signed.SeriesInstanceUID,
            SOPInstanceUID=signed.SOPInstanceUID,
            detail={"revision": signed.revision, "signed_by": signed.signed_by},
        )


def _next_version(
    conn: Connection, StudyInstanceUID: str, seen: int, now: datetime
) -> tuple[int, int]:
    """Move the review from version *seen* to the next (creating it at 1 from version 0);
    returns (review id, new version). Any edit leaves a signed review ``in_review``: the next
    signature is an amendment."""
    row = conn.execute(
        select(review.c.id, review.c.version).where(review.c.study_instance_uid == StudyInstanceUID)
    ).first()
    if row is None:
        if seen != 0:
            raise StaleVersion(f"the review is at version 0 (unread), not {seen}: reload it")
        return _create(conn, StudyInstanceUID, now), 1
    moved = conn.execute(
        review.update()
        .where(review.c.id == row.id, review.c.version == seen)
        .values(version=seen + 1, status=ReviewStatus.IN_REVIEW.value, updated_at=now)
    ).rowcount
    if moved != 1:
        current = conn.execute(select(review.c.version).where(review.c.id == row.id)).scalar()
        raise StaleVersion.behind(current, seen)
    return int(row.id), seen + 1


def _create(conn: Connection, StudyInstanceUID: str, now: datetime) -> int:
    latest = analysed_run(conn, StudyInstanceUID)
    if latest is None:
        raise NotReviewable(
            f"study {StudyInstanceUID} has no AI run that analysed a series: nothing to review"
        )
    run, findings = latest
    created = conn.execute(
        insert_for(conn)(review)
        .values(
            study_instance_uid=StudyInstanceUID,
            status=ReviewStatus.IN_REVIEW.value,
            version=1,
            run_fk=run.id,
            series_instance_uid=run.SeriesInstanceUID,
            ai_sr_sop_instance_uid=run.sr_sop_instance_uid,
            impression="",
            revision=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing()
        .returning(review.c.id)
    ).first()
    if created is None:  # another radiologist's first action won
        raise StaleVersion("the review was started by someone else meanwhile: reload it")
    review_id = int(created[0])
    if findings:
        conn.execute(review_finding.insert(), [_row(review_id, f, now) for f in findings])
    return review_id


def _apply(
    conn: Connection, review_id: int, edit: Edit, now: datetime
) -> tuple[str | None, dict[str, Any]]:
    """Change the review's rows for *edit*; returns (tracking UID, detail) for the log."""
    match edit:
        case SetImpression(text=text):
            conn.execute(review.update().where(review.c.id == review_id).values(impression=text))
            return None, {"impression": text}
        case SetLungRads(category=category):
            conn.execute(review.update().where(review.c.id == review_id).values(lung_rads=category))
            return None, {"category": category}
        case AddNodule(centre=centre, diameter_mm=diameter):
            added = ReviewedFinding(
                str(generate_uid()),
                Origin.RADIOLOGIST,
                Decision.CONFIRMED,
                None,
                centre,
                diameter,
                None,
            )
            conn.execute(review_finding.insert().values(**_row(review_id, added, now)))
            return added.tracking_uid, {"centre": asdict(centre), "diameter_mm": diameter}
        case Confirm(tracking_uid=uid):
            _update_finding(conn, review_id, uid, now, decision=Decision.CONFIRMED, reason=None)
            return uid, {}
        case Reject(tracking_uid=uid, reason=reason):
            _update_finding(conn, review_id, uid, now, decision=Decision.REJECTED, reason=reason)
            return uid, {"reason": reason}
        case Correct(tracking_uid=uid, diameter_mm=diameter, centre=centre):
            values: dict[str, Any] = {}
            if diameter is not None:
                values["diameter_mm"] = diameter
            if centre is not None:
                values |= {"x": centre.x, "y": centre.y, "z": centre.z}
            before = _update_finding(conn, review_id, uid, now, **values)
            detail: dict[str, Any] = {
                "before": {"centre": asdict(before.centre), "diameter_mm": before.diameter_mm}
            }
            if diameter is not None:
                detail["diameter_mm"] = diameter
            if centre is not None:
                detail["centre"] = asdict(centre)
            return uid, detail
    raise TypeError(f"not a review edit: {edit!r}")  # pragma: no cover


def _update_finding(
    conn: Connection, review_id: int, tracking_uid: str, now: datetime, **values: Any
) -> ReviewedFinding:
    """Update one finding; returns it as it was. Raises UnknownFinding."""
    where = (review_finding.c.review_fk == review_id) & (
        review_finding.c.tracking_uid == tracking_uid
    )
    row = conn.execute(select(review_finding).where(where)).first()
    if row is None:
        raise UnknownFinding(f"no finding {tracking_uid} in this review")
    stored = {k: v.value if isinstance(v, Decision) else v for k, v in values.items()}
    conn.execute(review_finding.update().where(where).values(**stored, updated_at=now))
    return finding_of(row)


def _log(
    conn: Connection,
    StudyInstanceUID: str,
    review_id: int,
    version: int,
    now: datetime,
    actor: str,
    kind: ActionKind,
    tracking_uid: str | None,
    detail: dict[str, Any],
) -> None:
    conn.execute(
        review_action.insert().values(
            review_fk=review_id,
            version=version,
            at=now,
            actor=actor,
            action=kind.value,
            tracking_uid=tracking_uid,
            detail=json.dumps(detail),
        )
    )
    # The audit trail's copy, in the same transaction: who changed which patient's review.
    append_event(
        conn,
        AuditEvent(
            AuditAction.SIGN if kind is ActionKind.SIGN else AuditAction.REVIEW,
            at=now,
            subject=actor,
            StudyInstanceUID=StudyInstanceUID,
            detail={"action": kind.value, "version": version, "tracking_uid": tracking_uid},
        ),
    )


def _row(review_id: int, f: ReviewedFinding, now: datetime) -> dict[str, Any]:
    return {
        "review_fk": review_id,
        "tracking_uid": f.tracking_uid,
        "origin": f.origin.value,
        "decision": f.decision.value,
        "reason": f.reason,
        "x": f.centre.x,
        "y": f.centre.y,
        "z": f.centre.z,
        "diameter_mm": f.diameter_mm,
        "probability": f.probability,
        "updated_at": now,
    }
