"""Dependencies the routes share: the open archive, the caller's facility scope, and a study
that must exist in that scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from pacs.facilities import Scope, visible_study
from pacs.ingest import Archive
from pacs.uids import is_valid_uid
from viewer_api.auth import authenticated
from viewer_api.problems import BadRequest, NotFound


def archive(request: Request) -> Archive:
    """The archive the app was assembled around (overridable in tests)."""
    found: Archive = request.app.state.archive
    return found


ArchiveDep = Annotated[Archive, Depends(archive)]


def scope(request: Request) -> Scope:
    """The facilities whose studies the caller may see, from its verified token (Unauthorized
    without one): every read of the index filters by it."""
    return authenticated(request).scope(request.app.state.archive.default_facility)


ScopeDep = Annotated[Scope, Depends(scope)]


def existing_study(study: str, archive: ArchiveDep, request: Request) -> str:
    """The ``{study}`` path parameter, a valid UID of a study the caller sees; else 400, or 404
    (also for a study of another facility: existence does not leak)."""
    if not is_valid_uid(study):
        raise BadRequest(f"{study!r} is not a valid UID")
    with archive.db.read() as conn:
        known = visible_study(conn, scope(request), study)
    if known is None:
        raise NotFound(f"no study {study}")
    return study


#: A route parameter for ``{study}`` that exists (use instead of a per-route check).
StudyDep = Annotated[str, Depends(existing_study)]
