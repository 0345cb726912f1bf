"""STOW-RS (PS3.18 10.5): store instances over HTTP through the one ingest path.

Instances are stored for the facility the token speaks for (``?facility=NAME`` chooses one
when it speaks for several); an instance of a study of another facility is refused
(FailureReason 0x0124, Refused: Not Authorized) and nothing of it is stored.
"""

from __future__ import annotations

import logging
import mmap
import tempfile
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs.errors import (
    ForeignStudy,
    IndexUnavailable,
    InvalidInstance,
    ReplaceRefused,
    SOPClassMismatch,
    StorageUnavailable,
    StudyMismatch,
)
from pacs.ingest import Archive, Source
from pacs.metrics import record_instance
from pacs.part10 import locate
from pacs.uids import is_valid_uid
from viewer_api.auth import Principal, Role, Writer
from viewer_api.dicomjson import MEDIA_TYPE, base_url, media_type
from viewer_api.problems import BadRequest, PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicom-web", tags=["STOW-RS"])

# PS3.18 Table 10.5.3-2 failure reasons (the PS3.4 B.2.3 C-STORE codes).
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
# PS3.18 I.2.2 allows other codes "to address the semantics of other issues": PS3.7 C.5.5
# Refused: Not Authorized, for new bytes of a stored instance or other patient identity of a
# stored patient or study sent with a token that may not replace (only admin tokens may), and
# for an instance of another facility's study.
NOT_AUTHORIZED = 0x0124
# Which refusal gets which FailureReason: the first entry an exception is an instance of.
_REFUSALS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int], ...] = (
    ((ForeignStudy, ReplaceRefused), NOT_AUTHORIZED),  # InvalidInstances too: before it
    ((SOPClassMismatch, StudyMismatch), DATA_SET_DOES_NOT_MATCH),
    (InvalidInstance, CANNOT_UNDERSTAND),
    ((StorageUnavailable, IndexUnavailable), OUT_OF_RESOURCES),
)
# Longest header block of one part: a Content-Type and a few more lines.
MAX_PART_HEADER_BYTES = 16 * 1024
# Refusal reasons sent back in Warning headers: this many, each at most this long.
MAX_WARNINGS = 8
MAX_WARNING_TEXT = 200


@router.post("/studies")
async def store_instances(request: Request, principal: Writer) -> JSONResponse:
    return await _store(request, principal, None)


@router.post("/studies/{study}")
async def store_study_instances(request: Request, study: str, principal: Writer) -> JSONResponse:
    if not is_valid_uid(study):
        raise BadRequest(f"{study!r} is not a valid UID")
    return await _store(request, principal, study)


def writing_facility(request: Request, principal: Principal) -> str | None:
    """The facility the request's instances are stored for: ``?facility=NAME`` when given
    (once, and one the token speaks for), else the token's only facility (BadRequest).

    None for a global admin that names none: each instance joins its study's facility, a new
    study the archive's default facility (an administrator re-sending a study of any facility).
    """
    asked = request.query_params.getlist("facility")
    if len(asked) > 1:
        raise BadRequest("name one facility (?facility=NAME), not several")
    if principal.all_facilities and not asked:
        return None
    archive: Archive = request.app.state.archive
    return principal.facility_for_writing(archive.default_facility, next(iter(asked), None))


async def _store(request: Request, principal: Principal, study: str | None) -> JSONResponse:
    """Spool the body to a temporary file as it arrives (never all in memory), then split and
    store it in a worker thread: the event loop keeps serving other requests meanwhile."""
    facility = writing_facility(request, principal)
    boundary = _boundary(request.headers.get("content-type", ""))
    limit: int = request.app.state.max_stow_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request of {declared} bytes; at most {limit} are accepted")
    with tempfile.TemporaryFile(prefix="stow-") as spool:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"request larger than {limit} bytes")
            await run_in_threadpool(spool.write, chunk)
        if received == 0:
            raise BadRequest("the request has no body")
        host = request.client.host if request.client else None
        context = _StowContext(
            archive=request.app.state.archive,
            source=Source(
                "STOW",
                calling_ae=None,
                remote_host=host,
                facility=facility,
                may_replace=Role.ADMIN in principal.roles,
                subject=principal.subject,
                token_id=principal.token_id,
            ),
            base=base_url(request),
            subject=principal.subject,
            study=study,
        )
        spool.flush()
        with mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) as body:
            response, code, reasons = await run_in_threadpool(_store_parts, body, boundary, context)
    headers = {"Warning": ", ".join(map(_warning, reasons))} if reasons else None
    return JSONResponse(
        response.to_json_dict(), status_code=code, media_type=MEDIA_TYPE, headers=headers
    )


def _warning(reason: str) -> str:
    """A Warning header value (RFC 7234 5.5, PS3.18 8.10.3) with a refusal's reason."""
    text = reason.encode("ascii", "replace").decode().replace('"', "'")
    return f'299 pacs "{" ".join(text.split())[:MAX_WARNING_TEXT]}"'


@dataclass(frozen=True)
class _StowContext:
    archive: Archive
    source: Source
    base: str
    subject: str
    study: str | None


def _store_parts(
    body: mmap.mmap, boundary: str, context: _StowContext
) -> tuple[Dataset, int, list[str]]:
    """Store each part through the one ingest path; the PS3.18 10.5.3 response and status,
    and the distinct reasons of the refusals (for Warning headers)."""
    parts = split_multipart(body, boundary)
    if not parts:
        raise BadRequest("the multipart body has no parts")
    stored, failed = Sequence(), Sequence()
    reasons: dict[str, None] = {}
    studies: set[str] = set()
    for content_type, start, end in parts:
        item = Dataset()
        if media_type(content_type)[0] not in ("application/dicom", ""):
            item.FailureReason = CANNOT_UNDERSTAND
            record_instance("stow", CANNOT_UNDERSTAND)
            failed.append(item)
            continue
        data = body[start:end]  # one part in memory at a time
        try:
            result = context.archive.store(data, context.source, expected_study=context.study)
        except (InvalidInstance, StorageUnavailable, IndexUnavailable) as exc:
            _failed(item, exc, _failure_reason(exc), data, context.subject)
            record_instance("stow", _failure_reason(exc))
            reasons[_public_reason(exc)] = None
            failed.append(item)
            continue
        record_instance("stow", 0)
        item.ReferencedSOPClassUID = result.SOPClassUID
        item.ReferencedSOPInstanceUID = result.SOPInstanceUID
        item.RetrieveURL = (
            f"{context.base}/studies/{result.StudyInstanceUID}"
            f"/series/{result.SeriesInstanceUID}/instances/{result.SOPInstanceUID}"
        )
        stored.append(item)
        studies.add(result.StudyInstanceUID)

    response = Dataset()
    # PS3.18 10.5.3.1: the study's Retrieve URL, when the stored instances are of one study.
    study = context.study or (next(iter(studies)) if len(studies) == 1 else None)
    if study is not None:
        response.RetrieveURL = f"{context.base}/studies/{study}"
    response.ReferencedSOPSequence = stored
    if failed:  # present only when something failed (PS3.18 Table 10.5.3-2)
        response.FailedSOPSequence = failed
    # PS3.18 10.5.3: 200 all stored, 202 some failed, 409 none stored.
    code = 200 if not failed else 202 if stored else 409
    return response, code, list(reasons)[:MAX_WARNINGS]


def _public_reason(exc: Exception) -> str:
    """What a Warning header may say of a refusal: the fault found in the sender's own data,
    never an internal error's detail (that stays in the log)."""
    if isinstance(exc, InvalidInstance):
        return str(exc)
    return "the archive cannot store instances now; try again later"


def _failure_reason(exc: Exception) -> int:
    """The FailureReason of a refused instance (the first entry of _REFUSALS it is one of)."""
    return next(reason for kinds, reason in _REFUSALS if isinstance(exc, kinds))


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


def split_multipart(body: bytes | mmap.mmap, boundary: str) -> list[tuple[str, int, int]]:
    """(Content-Type, start, end) of each part of a multipart body (RFC 2046 5.1): offsets into
    *body*, so that the parts need not be copied out all at once."""
    delimiter = b"--" + boundary.encode()
    if body[: len(delimiter)] == delimiter:
        at = len(delimiter)
    else:  # a preamble, or the CRLF some clients put before the first delimiter
        found = body.find(b"\r\n" + delimiter)
        if found < 0:
            raise BadRequest("the body does not contain the boundary")
        at = found + 2 + len(delimiter)
    separator = b"\r\n" + delimiter
    parts: list[tuple[str, int, int]] = []
    while body[at : at + 2] != b"--":  # not yet the close delimiter
        # The part's headers end within its first MAX_PART_HEADER_BYTES (a part without a
        # header/body separator must not swallow the next part's headers).
        headers_end = body.find(b"\r\n\r\n", at, at + MAX_PART_HEADER_BYTES)
        next_delimiter = body.find(separator, at)
        if headers_end < 0 or 0 <= next_delimiter < headers_end:
            raise BadRequest("a part has no header/body separator")
        next_delimiter = body.find(separator, headers_end + 4)
        if next_delimiter < 0:
            raise BadRequest("the multipart body is not closed by its boundary")
        content_type = ""
        for line in bytes(body[at:headers_end]).split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-type":
                content_type = value.strip()
        parts.append((content_type, headers_end + 4, next_delimiter))
        at = next_delimiter + len(separator)
    return parts
