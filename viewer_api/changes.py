"""The change feed and webhook subscriptions: ``/api/v1/changes``, ``/api/v1/webhooks``.

Both are per facility: the feed shows the changes of the studies the caller's facilities see,
and an administrator sees, makes and removes only its facilities' subscriptions (a global
administrator: all, and subscriptions for every facility)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError

from pacs.changefeed import read_visible_changes
from pacs.secretbox import SecretBox
from pacs.settings import PacsSettings
from pacs.webhooks import (
    EVENTS,
    InvalidSubscription,
    Subscription,
    add_subscription,
    list_subscriptions,
    remove_subscription,
)
from viewer_api.auth import Admin, Principal, Reader, authenticated
from viewer_api.deps import ArchiveDep, ScopeDep
from viewer_api.problems import BadRequest, NotFound

router = APIRouter(prefix="/api/v1", tags=["Change feed and webhooks"])

# Sequence numbers and ids are SQL BIGINTs: anything larger is a 400 (a query) or a 404 (an id),
# never an overflow inside the database driver.
MAX_ID = 2**63 - 1


@router.get("/changes")
def changes(
    request: Request,
    archive: ArchiveDep,
    _: Reader,
    scope: ScopeDep,
    since: int = Query(
        default=0, ge=0, le=MAX_ID, description="Return changes after this sequence number."
    ),
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    """Changes after ``since`` in sequence order (instance stored/replaced/deleted, study stable,
    findings ready) of the studies the caller's facilities see (their own and those shared
    with them). Poll with ``since`` = the returned ``last``: every change comes exactly
    once, even on PostgreSQL where transactions commit out of sequence order. ``last`` moves
    past changes of other facilities too, so a page may hold fewer than ``limit`` changes
    (none, even) while more follow: read on until ``last`` stops moving."""
    settle = timedelta(seconds=request.app.state.change_settle)
    with archive.db.read() as conn:
        page = read_visible_changes(conn, scope, since, limit, settle)
    return {
        "changes": [
            {
                "seq": c.seq,
                "kind": c.kind,
                "created_at": c.created_at.isoformat(),
                "StudyInstanceUID": c.StudyInstanceUID,
                "SeriesInstanceUID": c.SeriesInstanceUID,
                "SOPInstanceUID": c.SOPInstanceUID,
                "detail": c.detail,
            }
            for c in page.changes
        ],
        "last": page.last,
    }


class NewWebhook(BaseModel):
    url: str = Field(max_length=2048, description="http(s) URL the events are POSTed to")
    events: list[str] = Field(max_length=len(EVENTS), description=f"any of {sorted(EVENTS)}")
    secret: str | None = Field(
        default=None, max_length=256, description="HMAC key; generated when absent"
    )
    facility: str | None = Field(
        default=None,
        max_length=64,
        description="the facility whose studies' changes are sent: required of an "
        "administrator of several facilities; from a global administrator, absent means "
        "every facility",
    )


async def _new_webhook(request: Request, _: Admin) -> NewWebhook:
    """The request body, read only once the caller is known to be an administrator (a body
    parameter would be read and parsed by FastAPI before any dependency runs)."""
    try:
        return NewWebhook.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"invalid webhook ({where}): {first['msg']}") from exc


def _public(sub: Subscription, with_secret: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": sub.id,
        "url": sub.url,
        "events": sub.events,
        "cursor": sub.cursor_seq,
        "facility": sub.facility,
    }
    if with_secret:
        body["secret"] = sub.secret
    return body


def _subscriber(principal: Principal, default_facility: str, asked: str | None) -> str | None:
    """The facility a new subscription belongs to: *asked* if the administrator speaks for
    it, else its only facility; a global administrator's without one is for every facility."""
    if principal.all_facilities:
        return asked
    scope = principal.scope(default_facility)
    if asked is not None:
        if not scope.includes(asked):
            raise BadRequest(f"this token does not speak for facility {asked!r}")
        return asked
    names = sorted(scope.facilities or ())
    if len(names) != 1:
        raise BadRequest("this token names several facilities: say which one in 'facility'")
    return names[0]


def _secret_box(request: Request) -> SecretBox:
    box: SecretBox | None = request.app.state.secret_box
    if box is None:  # an app assembled without one: the archive home's, made once
        settings = PacsSettings()
        box = request.app.state.secret_box = SecretBox.at(settings.home, settings.secret_key_file)
    return box


@router.get("/webhooks")
def webhooks(archive: ArchiveDep, _: Admin, scope: ScopeDep) -> list[dict[str, Any]]:
    """The webhook subscriptions of the caller's facilities (secrets are shown only when
    created)."""
    with archive.db.read() as conn:
        return [_public(s) for s in list_subscriptions(conn, scope)]


@router.post(
    "/webhooks",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": NewWebhook.model_json_schema()}},
        }
    },
)
def create_webhook(
    request: Request, archive: ArchiveDep, body: Annotated[NewWebhook, Depends(_new_webhook)]
) -> dict[str, Any]:
    """Subscribe a URL to events of one facility's studies (its own and those shared with
    it); the answer carries the signing secret. A URL the egress policy refuses (metadata,
    link-local or loopback addresses, the archive's own ports, credentials or whitespace in
    the URL, ...) is a 400 that says why."""
    facility = _subscriber(authenticated(request), archive.default_facility, body.facility)
    try:
        created = add_subscription(
            archive.db,
            body.url,
            body.events,
            body.secret,
            egress=request.app.state.egress,
            box=_secret_box(request),
            facility=facility,
        )
    except InvalidSubscription as exc:
        raise BadRequest(str(exc)) from exc
    return _public(created, with_secret=True)


@router.delete("/webhooks/{webhook_id}", status_code=204)
def delete_webhook(archive: ArchiveDep, webhook_id: int, _: Admin, scope: ScopeDep) -> Response:
    """Remove a subscription of the caller's facilities (another's is a 404)."""
    if not 0 < webhook_id <= MAX_ID or not remove_subscription(archive.db, scope, webhook_id):
        raise NotFound(f"no webhook {webhook_id}")
    return Response(status_code=204)
