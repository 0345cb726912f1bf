"""Sharing a study with another facility: ``/api/v1/studies/{study}/shares``, ``/api/v1/shares``.

Administrators only, of a study their facilities see (their own, or one shared with them: a
grantee may pass a referral on). The grant shows the study on every read path of the other
facility's principals until its end date or until revoked (:mod:`pacs.sharing`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field, ValidationError

from pacs.sharing import parse_until, revoke_share, share_study, study_shares
from viewer_api.auth import Admin
from viewer_api.deps import ArchiveDep, ScopeDep, StudyDep
from viewer_api.problems import BadRequest, NotFound

router = APIRouter(prefix="/api/v1", tags=["Sharing"])
MAX_ID = 2**63 - 1  # a SQL BIGINT: a larger id is a 404, never a driver overflow


class NewShare(BaseModel):
    facility: str = Field(max_length=64, description="the facility to show the study to")
    until: str | None = Field(
        default=None,
        max_length=64,
        description="ISO 8601 date (through that day, UTC) or date-time; null: until revoked",
    )


async def _new_share(request: Request, _: Admin) -> NewShare:
    """The body, read once the caller is known to be an administrator."""
    try:
        return NewShare.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"invalid share ({where}): {first['msg']}") from exc


@router.post(
    "/studies/{study}/shares",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": NewShare.model_json_schema()}},
        }
    },
)
def create_share(
    archive: ArchiveDep,
    principal: Admin,
    scope: ScopeDep,
    study: StudyDep,
    body: Annotated[NewShare, Depends(_new_share)],
) -> dict[str, Any]:
    """Share the study with a facility; an unknown facility, the study's own, or an end in
    the past is a 400 that says why."""
    until = None if body.until is None else parse_until(body.until)
    with archive.db.write() as conn:
        try:
            share = share_study(conn, scope, study, body.facility, principal.subject, until)
        except LookupError as exc:  # gone since the check
            raise NotFound(f"no study {study}") from exc
    return share.as_json()


@router.get("/studies/{study}/shares")
def list_shares(
    archive: ArchiveDep, _: Admin, scope: ScopeDep, study: StudyDep
) -> list[dict[str, Any]]:
    """Every grant of the study, oldest first, revoked and expired ones included."""
    with archive.db.read() as conn:
        try:
            return [share.as_json() for share in study_shares(conn, scope, study)]
        except LookupError as exc:
            raise NotFound(f"no study {study}") from exc


@router.delete("/shares/{share_id}", status_code=204)
def delete_share(archive: ArchiveDep, principal: Admin, scope: ScopeDep, share_id: int) -> Response:
    """Revoke a grant at once (a grant of a study the caller does not see is a 404)."""
    if not 0 < share_id <= MAX_ID:
        raise NotFound(f"no sharing grant {share_id}")
    with archive.db.write() as conn:
        try:
            revoke_share(conn, scope, share_id, principal.subject)
        except LookupError as exc:
            raise NotFound(f"no sharing grant {share_id}") from exc
    return Response(status_code=204)
