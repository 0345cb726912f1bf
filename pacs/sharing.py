"""Sharing a study with another facility (a referral): per study, until a date or revoked.

A grant makes the study visible to principals of the grantee facility on every read path
(:meth:`pacs.facilities.Scope.study_condition` reads the grants); revoking or expiry ends it
at once. Grants are never deleted: a revoked one keeps who revoked it and when. Each grant
and revocation is a ``share`` audit event in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, Select, select, update

from pacs.audit import AuditAction, AuditEvent, append_event
from pacs.errors import InvalidFacility
from pacs.facilities import Scope, check_name, study_facility, visible_study
from pacs.index.database import as_utc
from pacs.index.schema import facility, study, study_share


@dataclass(frozen=True)
class Share:
    """A sharing grant: the study, the facility it is shown to, by whom, until when."""

    id: int
    StudyInstanceUID: str
    facility: str
    granted_by: str
    granted_at: datetime
    until: datetime | None
    revoked_by: str | None
    revoked_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        """The grant as the CLI prints it and the API answers it."""
        return {
            "id": self.id,
            "StudyInstanceUID": self.StudyInstanceUID,
            "facility": self.facility,
            "granted_by": self.granted_by,
            "granted_at": self.granted_at.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "revoked_by": self.revoked_by,
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.until is None or as_utc(self.until) > now)


def share_study(
    conn: Connection,
    scope: Scope,
    StudyInstanceUID: str,
    to: str,
    granted_by: str,
    until: datetime | None = None,
) -> Share:
    """Share a study *scope* sees with facility *to*.

    Raises
    ------
    LookupError
        No such study in *scope* (the caller answers "not found").
    InvalidFacility
        *to* is not a registered facility, is the study's own, or *until* is past.
    """
    study_pk = visible_study(conn, scope, StudyInstanceUID)
    if study_pk is None:
        raise LookupError(f"no study {StudyInstanceUID}")
    check_name(to)
    facility_id = conn.execute(
        select(facility.c.id).where(facility.c.name == to)
    ).scalar_one_or_none()
    if facility_id is None:
        raise InvalidFacility(f"no facility {to!r} (pacs facility add)")
    if study_facility(conn, StudyInstanceUID) == to:
        raise InvalidFacility(f"the study already belongs to facility {to}")
    now = datetime.now(UTC)
    if until is not None and as_utc(until) <= now:
        raise InvalidFacility(f"until {until.isoformat()} is not in the future")
    new_id = conn.execute(
        study_share.insert()
        .values(
            study_fk=study_pk,
            facility_id=facility_id,
            granted_by=granted_by,
            granted_at=now,
            until=until,
        )
        .returning(study_share.c.id)
    ).scalar_one()
    granted = _one(conn, int(new_id))
    _audit(conn, granted, granted_by, "granted", now)
    return granted


def parse_until(text: str) -> datetime:
    """The end of a grant from ISO 8601 *text*: a date-time (UTC when it names no offset), or
    a date, which means through that day (until the next midnight, UTC).

    Raises
    ------
    InvalidFacility
        *text* is neither.
    """
    try:
        if len(text) == len("YYYY-MM-DD"):
            return datetime.combine(date.fromisoformat(text), time(), UTC) + timedelta(days=1)
        return as_utc(datetime.fromisoformat(text))
    except ValueError as exc:
        raise InvalidFacility(f"until {text[:40]!r} is not an ISO 8601 date or date-time") from exc


def revoke_share(conn: Connection, scope: Scope, share_id: int, revoked_by: str) -> Share:
    """Revoke grant *share_id* of a study *scope* sees (LookupError: no such grant)."""
    found = _one_or_none(conn, share_id)
    if found is None or visible_study(conn, scope, found.StudyInstanceUID) is None:
        raise LookupError(f"no sharing grant {share_id}")
    if found.revoked_at is None:
        now = datetime.now(UTC)
        conn.execute(
            update(study_share)
            .where(study_share.c.id == share_id)
            .values(revoked_by=revoked_by, revoked_at=now)
        )
        _audit(conn, found, revoked_by, "revoked", now)
    return _one(conn, share_id)


def _audit(conn: Connection, grant: Share, actor: str, what: str, now: datetime) -> None:
    detail: dict[str, Any] = {"share": grant.id, "to": grant.facility, "grant": what}
    if grant.until is not None:
        detail["until"] = grant.until.isoformat()
    append_event(
        conn,
        AuditEvent(
            AuditAction.SHARE,
            at=now,
            subject=actor,
            StudyInstanceUID=grant.StudyInstanceUID,
            detail=detail,
        ),
    )


def study_shares(conn: Connection, scope: Scope, StudyInstanceUID: str) -> list[Share]:
    """Every grant of a study *scope* sees, oldest first (LookupError: no such study)."""
    study_pk = visible_study(conn, scope, StudyInstanceUID)
    if study_pk is None:
        raise LookupError(f"no study {StudyInstanceUID}")
    return [
        _share(row) for row in conn.execute(_select().where(study_share.c.study_fk == study_pk))
    ]


def _select() -> Select[Any]:
    return (
        select(
            study_share.c.id,
            study.c.study_instance_uid,
            facility.c.name,
            study_share.c.granted_by,
            study_share.c.granted_at,
            study_share.c.until,
            study_share.c.revoked_by,
            study_share.c.revoked_at,
        )
        .join(study, study.c.id == study_share.c.study_fk)
        .join(facility, facility.c.id == study_share.c.facility_id)
        .order_by(study_share.c.id)
    )


def _one_or_none(conn: Connection, share_id: int) -> Share | None:
    row = conn.execute(_select().where(study_share.c.id == share_id)).first()
    return None if row is None else _share(row)


def _one(conn: Connection, share_id: int) -> Share:
    found = _one_or_none(conn, share_id)
    assert found is not None
    return found


def _share(row: Any) -> Share:
    share_id, uid, name, by, at, until, revoked_by, revoked_at = row
    return Share(
        int(share_id),
        uid,
        name,
        by,
        as_utc(at),
        None if until is None else as_utc(until),
        revoked_by,
        None if revoked_at is None else as_utc(revoked_at),
    )
