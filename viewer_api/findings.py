"""AI findings of a study: ``GET /api/v1/studies/{study}/findings``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pacs.ingest import Archive
from pacs.results import NODULE_DETECTION, findings_document
from pacs.uids import is_valid_uid
from viewer_api.auth import Reader
from viewer_api.problems import BadRequest, NotFound

router = APIRouter(prefix="/api/v1", tags=["AI findings"])


@router.get("/studies/{study}/findings")
def study_findings(request: Request, study: str, _: Reader) -> dict[str, Any]:
    """The study's lung-nodule findings (centres in patient LPS mm) and its job status."""
    if not is_valid_uid(study):
        raise BadRequest(f"{study!r} is not a valid UID")
    archive: Archive = request.app.state.archive
    with archive.db.read() as conn:
        document = findings_document(conn, study, NODULE_DETECTION)
    if document is None:
        raise NotFound(f"no study {study}")
    return document
