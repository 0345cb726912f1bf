"""STOW-RS (PS3.18 10.5): store instances over HTTP through the one ingest path."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs.errors import (
    IndexUnavailable,
    InvalidInstance,
    SOPClassMismatch,
    StorageUnavailable,
    StudyMismatch,
)
from pacs.ingest import Archive, Source
from pacs.part10 import locate
from pacs.uids import is_valid_uid
from viewer_api.auth import Writer
from viewer_api.dicomjson import MEDIA_TYPE, base_url, media_type
from viewer_api.problems import BadRequest, PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicom-web", tags=["STOW-RS"])

# PS3.18 Table 10.5.3-2 failure reasons (the PS3.4 B.2.3 C-STORE codes).
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


@router.post("/studies")
async def store_instances(request: Request, principal: Writer) -> JSONResponse:
    return await _store(request, principal.subject, None)


@router.post("/studies/{study}")
async def store_study_instances(request: Request, study: str, principal: Writer) -> JSONResponse:
    if not is_valid_uid(study):
        raise BadRequest(f"{study!r} is not a valid UID")
    return await _store(request, principal.subject, study)


async def _store(request: Request, subject: str, study: str | None) -> JSONResponse:
    boundary = _boundary(request.headers.get("content-type", ""))
    limit: int = request.app.state.max_stow_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request of {declared} bytes; at most {limit} are accepted")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request larger than {limit} bytes")
    parts = split_multipart(bytes(body), boundary)
    if not parts:
        raise BadRequest("the multipart body has no parts")

    archive: Archive = request.app.state.archive
    host = request.client.host if request.client else None
    source = Source("STOW", calling_ae=None, remote_host=host)
    base = base_url(request)
    stored, failed = Sequence(), Sequence()
    for content_type, data in parts:
        item = Dataset()
        if media_type(content_type)[0] not in ("application/dicom", ""):
            item.FailureReason = CANNOT_UNDERSTAND
            failed.append(item)
            continue
        try:
            result = archive.store(data, source, expected_study=study)
        except (SOPClassMismatch, StudyMismatch) as exc:
            _failed(item, exc, DATA_SET_DOES_NOT_MATCH, data, subject)
            failed.append(item)
            continue
        except InvalidInstance as exc:
            _failed(item, exc, CANNOT_UNDERSTAND, data, subject)
            failed.append(item)
            continue
        except (StorageUnavailable, IndexUnavailable) as exc:
            _failed(item, exc, OUT_OF_RESOURCES, data, subject)
            failed.append(item)
            continue
        item.ReferencedSOPClassUID = result.SOPClassUID
        item.ReferencedSOPInstanceUID = result.SOPInstanceUID
        item.RetrieveURL = (
            f"{base}/studies/{result.StudyInstanceUID}/series/{result.SeriesInstanceUID}"
            f"/instances/{result.SOPInstanceUID}"
        )
        stored.append(item)

    response = Dataset()
    if study is not None:
        response.RetrieveURL = f"{base}/studies/{study}"
    response.ReferencedSOPSequence = stored
    response.FailedSOPSequence = failed
    # PS3.18 10.5.3: 200 all stored, 202 some failed, 409 none stored.
    code = 200 if not failed else 202 if stored else 409
    return JSONResponse(response.to_json_dict(), status_code=code, media_type=MEDIA_TYPE)


def _failed(item: Dataset, exc: Exception, reason: int, data: bytes, subject: str) -> None:
    """Fill a FailedSOPSequence item, with the UIDs when the data set yields them."""
    log.warning("STOW-RS part from %s refused (0x%04X): %s", subject, reason, exc)
    item.FailureReason = reason
    uids = _uids_of(data)
    if uids is not None:
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = uids


def _uids_of(data: bytes) -> tuple[str, str] | None:
    try:
        ds = locate(data).read_dataset()
        return str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except Exception:  # the part is too broken to name itself
        return None


def _boundary(content_type: str) -> str:
    media, named = media_type(content_type)
    if media != "multipart/related":
        raise UnsupportedMediaType(
            f'STOW-RS takes multipart/related; type="application/dicom", not {content_type!r}'
        )
    if named.get("type", "application/dicom").lower() != "application/dicom":
        raise UnsupportedMediaType(f"parts of type {named['type']!r} are not accepted")
    if not named.get("boundary"):
        raise BadRequest("multipart/related without a boundary")
    return named["boundary"]


def split_multipart(body: bytes, boundary: str) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart body (RFC 2046 5.1)."""
    delimiter = b"--" + boundary.encode()
    if body.startswith(delimiter):
        start = len(delimiter)
    else:  # a preamble, or the CRLF some clients put before the first delimiter
        found = body.find(b"\r\n" + delimiter)
        if found < 0:
            raise BadRequest("the body does not contain the boundary")
        start = found + 2 + len(delimiter)
    sections = body[start:].split(b"\r\n" + delimiter)
    parts: list[tuple[str, bytes]] = []
    for section in sections:
        if section.startswith(b"--"):
            break  # the close delimiter
        header_block, separator, content = section.partition(b"\r\n\r\n")
        if not separator:
            raise BadRequest("a part has no header/body separator")
        headers: dict[str, Any] = {}
        for line in header_block.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip():
                headers[name.strip().lower()] = value.strip()
        parts.append((headers.get("content-type", ""), content))
    return parts
