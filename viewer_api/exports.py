"""De-identified export over HTTP: ``POST /api/v1/exports``, administrators only.

The body names the studies (``studies``: UIDs, and/or ``query``: the matching keys of one
study-level search, as QIDO-RS takes them), searched within the caller's facilities. The
answer is a streamed ``application/zip`` laid out as ``pacs export`` lays out its folder,
``<new StudyInstanceUID>/<new SeriesInstanceUID>/<new SOPInstanceUID>.dcm``, and ends with
``manifest.json``: the counts, and the instances refused and studies skipped with their
reasons. The manifest names them by their de-identified UIDs only, so that it can travel with
the files (the caller knows what it asked for).

The project key is the server's (``PACS_EXPORT_KEY_FILE``): a client never sends one, and
without it the route is a 409. Every study is audited (``export``, with the token's subject,
id and the client's address) before the response starts, as the CLI audits before writing;
the work per study is :mod:`pacs.deid.export`'s, shared with ``pacs export``. Once streaming
has started an unreadable blob can only cut the zip short: the client sees a broken archive,
never a whole-looking partial one.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pacs.deid import Deidentifier, InvalidProjectKey, Options
from pacs.deid.export import (
    ExportReport,
    Requester,
    deidentified,
    record_export,
    select_studies,
    study_instances,
)
from pacs.ingest import Archive
from pacs.search import StoredInstance
from pacs.uids import is_valid_uid
from viewer_api.audit import client_address
from viewer_api.auth import Admin, Principal
from viewer_api.deps import ArchiveDep, ScopeDep
from viewer_api.problems import BadRequest, Conflict, NotFound, ServiceUnavailable

router = APIRouter(prefix="/api/v1", tags=["Export"])
MAX_STUDIES = 1000  # UIDs in one request body


class NewExport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    studies: list[str] = Field(
        default_factory=list, max_length=MAX_STUDIES, description="StudyInstanceUIDs"
    )
    query: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="matching keys of a study-level search, e.g. {'PatientID': 'P*'}",
    )
    modified_dates: bool = False
    clean_descriptors: bool = False
    force_burned_in: bool = False


async def _new_export(request: Request, _: Admin) -> NewExport:
    """The body, read once the caller is known to be an administrator."""
    try:
        body = NewExport.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"invalid export ({where}): {first['msg']}") from exc
    if not body.studies and not body.query:
        raise BadRequest("name the studies: 'studies' and/or 'query'")
    return body


@router.post(
    "/exports",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": NewExport.model_json_schema()}},
        }
    },
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def create_export(
    request: Request,
    archive: ArchiveDep,
    principal: Admin,
    scope: ScopeDep,
    body: Annotated[NewExport, Depends(_new_export)],
) -> StreamingResponse:
    """The studies, de-identified (PS3.15 Annex E), as a zip; 404 when none is found in the
    caller's facilities, 409 when the server has no project key."""
    deidentifier = _deidentifier(
        request.app.state.export_key_file,
        Options(modified_dates=body.modified_dates, clean_descriptors=body.clean_descriptors),
    )
    report = ExportReport()
    requester = _requester(request, principal)
    planned: list[tuple[str, list[StoredInstance]]] = []
    for uid in select_studies(archive, body.studies, body.query, scope):
        found = study_instances(archive, uid, scope, report)
        if found:
            planned.append((uid, found))
    if not planned:
        raise NotFound("no study matched in the caller's facilities: nothing to export")
    for uid, found in planned:  # every study audited before the first byte goes out
        record_export(archive, uid, len(found), "download", requester)
    stream = _zipped(archive, planned, deidentifier, report, force=body.force_burned_in)
    return StreamingResponse(
        stream,
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="export.zip"'},
    )


def _deidentifier(key_file: Path | None, options: Options) -> Deidentifier:
    if key_file is None:
        raise Conflict(
            "the server has no project key configured (PACS_EXPORT_KEY_FILE): "
            "de-identified export is off"
        )
    try:
        return Deidentifier(key_file.read_bytes(), options)
    except (OSError, InvalidProjectKey) as exc:  # the detail stays in the server's log
        raise ServiceUnavailable("the server's project key cannot be used; see its log") from exc


def _requester(request: Request, principal: Principal) -> Requester:
    facility = "*" if principal.all_facilities else ",".join(sorted(principal.facilities)) or None
    return Requester(
        subject=principal.subject,
        roles=tuple(sorted(role.value for role in principal.roles)),
        facility=facility,
        token_id=principal.token_id,
        remote_address=client_address(request.scope),
    )


class _Chunks(io.RawIOBase):
    """An unseekable sink that hands on what the zip writer wrote so far."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def _zipped(
    archive: Archive,
    planned: Sequence[tuple[str, list[StoredInstance]]],
    deidentifier: Deidentifier,
    report: ExportReport,
    *,
    force: bool,
) -> Iterator[bytes]:
    """The zip, one instance at a time (each entry written whole, then handed on)."""
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zipped:
        for uid, found in planned:
            written = 0
            for ds in deidentified(archive, found, deidentifier, report, force=force):
                part10 = io.BytesIO()
                ds.save_as(part10, enforce_file_format=True)
                name = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
                zipped.writestr(name, part10.getvalue())
                written += 1
                yield sink.take()
            if written:
                report.studies.append(deidentifier.uids.replace(uid))
                report.instances += written
        zipped.writestr("manifest.json", json.dumps(_manifest(report, deidentifier), indent=2))
    yield sink.take()


def _manifest(report: ExportReport, deidentifier: Deidentifier) -> dict[str, object]:
    """The summary, naming studies and instances by their de-identified UIDs only."""
    return {
        "studies": len(report.studies),
        "instances": report.instances,
        "exported": report.studies,
        "refused": {deidentifier.uids.replace(k): v for k, v in report.refused.items()},
        "skipped": {
            deidentifier.uids.replace(k) if is_valid_uid(k) else "(not a UID)": v
            for k, v in report.skipped.items()
        },
    }
