"""WADO-RS (PS3.18 10.4): instances as stored, their metadata and bulk data."""

from __future__ import annotations

import gzip
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom import dcmread
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs.ingest import Archive
from pacs.metadata import SeriesMetadata, instance_json, series_metadata_of
from pacs.search import Level, Query, StoredInstance, matching_instances, search
from pacs.uids import is_valid_uid
from viewer_api.auth import Reader
from viewer_api.dicomjson import MEDIA_TYPE, base_url, media_type
from viewer_api.problems import BadRequest, NotAcceptable, NotFound

router = APIRouter(prefix="/dicom-web", tags=["WADO-RS"])

UNCOMPRESSED = frozenset(
    (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian))
)


@router.get("/studies/{study}")
def retrieve_study(request: Request, study: str, _: Reader) -> StreamingResponse:
    return _retrieve(request, Level.STUDY, {"StudyInstanceUID": study})


@router.get("/studies/{study}/series/{series}")
def retrieve_series(request: Request, study: str, series: str, _: Reader) -> StreamingResponse:
    return _retrieve(request, Level.SERIES, uid_path(study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}")
def retrieve_instance(
    request: Request, study: str, series: str, instance: str, _: Reader
) -> StreamingResponse:
    return _retrieve(request, Level.IMAGE, uid_path(study, series, instance))


@router.get("/studies/{study}/metadata")
def study_metadata(request: Request, study: str, _: Reader) -> Response:
    """Metadata of every instance of a study, from the per-series cache."""
    archive: Archive = request.app.state.archive
    stored_instances(
        request, Level.STUDY, {"StudyInstanceUID": study}
    )  # validates, 404 when unknown
    with archive.db.read() as conn:
        series_uids = list(
            dict.fromkeys(
                str(row["SeriesInstanceUID"])
                for row in search(conn, Query(Level.SERIES, {"StudyInstanceUID": study}, ()))
            )
        )
    parts = [_series_metadata(request, study, uid) for uid in series_uids]
    etag = hashlib.sha256("".join(p.etag for p in parts).encode()).hexdigest()
    if _not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": f'"{etag}"'})
    documents = [document for part in parts for document in part.json()]
    body = json.dumps(documents, separators=(",", ":")).encode()
    return _json_response(request, etag, body, gzip.compress(body, compresslevel=6))


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(request: Request, study: str, series: str, _: Reader) -> Response:
    """Metadata of a series: built once per version of the series, then served from cache."""
    stored_instances(request, Level.SERIES, uid_path(study, series))  # validates, 404 when unknown
    cached = _series_metadata(request, study, series)
    if _not_modified(request, cached.etag):
        return Response(status_code=304, headers={"ETag": f'"{cached.etag}"'})
    return _json_response(request, cached.etag, None, cached.body_gzip)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
def instance_metadata(
    request: Request, study: str, series: str, instance: str, _: Reader
) -> JSONResponse:
    [stored] = stored_instances(request, Level.IMAGE, uid_path(study, series, instance))
    archive: Archive = request.app.state.archive
    document = instance_json(archive.blobs.get(stored.blob_key), _bulk_url(request))
    return JSONResponse([document], media_type=MEDIA_TYPE)


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}")
def bulk_data(
    request: Request, study: str, series: str, instance: str, tag: str, _: Reader
) -> StreamingResponse:
    """A top-level binary value of an instance, as its metadata's BulkDataURI names it."""
    [stored] = stored_instances(request, Level.IMAGE, uid_path(study, series, instance))
    try:
        element_tag = int(tag, 16)
    except ValueError as exc:
        raise BadRequest(f"{tag!r} is not a tag") from exc
    archive: Archive = request.app.state.archive
    ds = dcmread(BytesIO(archive.blobs.get(stored.blob_key)))
    if element_tag not in ds:
        raise NotFound(f"the instance has no element {tag}")
    value = ds[element_tag].value
    if not isinstance(value, bytes):
        raise NotFound(f"element {tag} is not bulk data")
    boundary = uuid.uuid4().hex
    parts = multipart_parts(boundary, [("application/octet-stream", value)])
    media = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    return StreamingResponse(parts, media_type=media)


def _retrieve(request: Request, level: Level, uids: dict[str, str]) -> StreamingResponse:
    wanted = _requested_transfer_syntax(request.headers.get("accept", "*/*"))
    found = stored_instances(request, level, uids)
    for stored in found:
        if not _deliverable(stored.TransferSyntaxUID, wanted):
            raise NotAcceptable(
                f"{stored.SOPInstanceUID} is stored as {stored.TransferSyntaxUID}; transcoding "
                f"it to {wanted} is not supported: ask for transfer-syntax=*"
            )
    archive: Archive = request.app.state.archive
    boundary = uuid.uuid4().hex

    def bodies() -> Iterator[tuple[str, bytes]]:
        for stored in found:  # one instance in memory at a time
            data = archive.blobs.get(stored.blob_key)
            syntax = stored.TransferSyntaxUID
            if wanted not in (None, "*", syntax):
                data, syntax = _transcode(data, wanted), wanted  # uncompressed to uncompressed
            yield f"application/dicom; transfer-syntax={syntax}", data

    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(multipart_parts(boundary, bodies()), media_type=media)


def _bulk_url(request: Request) -> Callable[[str, str, str, int], str]:
    base = base_url(request)

    def url(study: str, series: str, instance: str, tag: int) -> str:
        return f"{base}/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag:08X}"

    return url


def _series_metadata(request: Request, study: str, series: str) -> SeriesMetadata:
    archive: Archive = request.app.state.archive
    cached = series_metadata_of(archive, study, series, base_url(request), _bulk_url(request))
    if cached is None:
        raise NotFound(f"no series {series} in study {study}")
    return cached


def _not_modified(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match", "")
    return any(
        tag.strip().strip('"').removeprefix("W/").strip('"') == etag for tag in wanted.split(",")
    )


def _json_response(request: Request, etag: str, body: bytes | None, body_gzip: bytes) -> Response:
    headers = {"ETag": f'"{etag}"', "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(body_gzip, media_type=MEDIA_TYPE, headers=headers)
    return Response(body or gzip.decompress(body_gzip), media_type=MEDIA_TYPE, headers=headers)


def stored_instances(request: Request, level: Level, uids: dict[str, str]) -> list[StoredInstance]:
    for value in uids.values():
        if not is_valid_uid(value):
            raise BadRequest(f"{value!r} is not a valid UID")
    archive: Archive = request.app.state.archive
    with archive.db.read() as conn:
        found = matching_instances(conn, Query(level, uids, ()))
    if not found:
        raise NotFound(f"no {level.value.lower()} {'/'.join(uids.values())} in this archive")
    return found


def _requested_transfer_syntax(accept: str) -> str | None:
    """The transfer-syntax asked for: None (not said), "*" (as stored) or a UID.

    Raises NotAcceptable unless the Accept header admits multipart/related application/dicom.
    """
    for media_range in accept.split(","):
        media, named = media_type(media_range)
        if media in ("*/*", "multipart/*") or (
            media == "multipart/related"
            and named.get("type", "application/dicom") == "application/dicom"
        ):
            return named.get("transfer-syntax")
    raise NotAcceptable(
        f'instances come as multipart/related; type="application/dicom", not {accept}'
    )


def _deliverable(stored: str, wanted: str | None) -> bool:
    return wanted in (None, "*", stored) or (stored in UNCOMPRESSED and wanted in UNCOMPRESSED)


def _transcode(data: bytes, transfer_syntax: str) -> bytes:
    """Re-encode an uncompressed instance in another uncompressed transfer syntax."""
    ds = dcmread(BytesIO(data))
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def multipart_parts(boundary: str, bodies: Any) -> Iterator[bytes]:
    for content_type, body in bodies:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        yield body
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def uid_path(study: str, series: str, instance: str | None = None) -> dict[str, str]:
    uids = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    if instance is not None:
        uids["SOPInstanceUID"] = instance
    return uids
