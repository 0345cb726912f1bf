"""Dependencies the routes share: the open archive, and a study that must exist."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select

from pacs.index import schema
from pacs.ingest import Archive
from pacs.uids import is_valid_uid
from viewer_api.problems import BadRequest, NotFound


def archive(request: Request) -> Archive:
    """The archive the app was assembled around (overridable in tests)."""
    found: Archive = request.app.state.archive
    return found


ArchiveDep = Annotated[Archive, Depends(archive)]


def existing_study(study: str, archive: ArchiveDep) -> str:
    """The ``{study}`` path parameter, a valid UID of a study in the index; else 400 or 404."""
    if not is_valid_uid(study):
        raise BadRequest(f"{study!r} is not a valid UID")
    with archive.db.read() as conn:
        known = conn.execute(
            select(schema.study.c.id).where(schema.study.c.study_instance_uid == study)
        ).first()
    if known is None:
        raise NotFound(f"no study {study}")
    return study


#: A route parameter for ``{study}`` that exists (use instead of a per-route check).
StudyDep = Annotated[str, Depends(existing_study)]
