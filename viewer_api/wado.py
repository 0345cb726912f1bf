"""WADO-RS (PS3.18 10.4): instances as stored, their metadata and bulk data."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from io import BytesIO
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom import dcmread
from starlette.concurrency import run_in_threadpool

from pacs.errors import StorageUnavailable
from pacs.ingest import Archive
from pacs.metadata import SeriesMetadata, bulk_data_url, instance_json, series_metadata_of
from pacs.search import (
    Level,
    Query,
    StoredInstance,
    find_instance,
    matching_instances,
    search,
)
from pacs.storage import FilesystemStore
from pacs.uids import is_valid_uid
from viewer_api.auth import Reader
from viewer_api.compressed import CompressedBodies, accepts_gzip
from viewer_api.deps import scope
from viewer_api.dicomjson import MEDIA_TYPE, accept_ranges, accepts_json, base_url
from viewer_api.problems import BadRequest, NotAcceptable, NotFound
from viewer_api.transcode import target_syntax, transcode

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicom-web", tags=["WADO-RS"])
# Bytes of a multipart response gathered before they are handed to the server (see
# multipart_parts): large enough that per-write costs vanish, small enough to stay streamed.
CHUNK = 4 * 2**20
# Largest blob read on the event loop (frames cut out of it, or sent as stored): read whole,
# ~0.1 ms per MB from the page cache. A 512x512 CT slice is ~0.5 MB.
INLINE_BYTES = 4 * 2**20


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
    """Metadata of every instance of a study, from the per-series cache.

    A study the caller's scope does not see is a 404 before any ETag is compared: a cached
    response's ETag never answers 304 across facilities."""
    _require_json(request)
    archive: Archive = request.app.state.archive
    stored_instances(request, Level.STUDY, {"StudyInstanceUID": study})  # 404 when unknown
    with archive.db.read() as conn:
        series_uids = list(
            dict.fromkeys(
                str(row["SeriesInstanceUID"])
                for row in search(
                    conn,
                    Query(Level.SERIES, {"StudyInstanceUID": study}, (), scope=scope(request)),
                )
            )
        )
    parts = [_series_metadata(request, study, uid) for uid in series_uids]
    etag = hashlib.sha256("".join(p.etag for p in parts).encode()).hexdigest()
    if _not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": f'"{etag}"'})
    base = base_url(request)
    documents = [document for part in parts for document in part.json(base)]
    return _json_response(request, etag, json.dumps(documents, separators=(",", ":")).encode())


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(request: Request, study: str, series: str, _: Reader) -> Response:
    """Metadata of a series: built once per version of the series, then served from cache
    (scoped like every read: 404 for a series of another facility's study, even on a 304)."""
    _require_json(request)
    _check_uids(study, series)
    cached = _series_metadata(request, study, series)  # 404 when unknown or not in scope
    if _not_modified(request, cached.etag):
        return Response(status_code=304, headers={"ETag": f'"{cached.etag}"'})
    headers = {"ETag": f'"{cached.etag}"', "Vary": "Accept-Encoding"}
    base = base_url(request)
    if accepts_gzip(request.headers.get("accept-encoding")):
        bodies: CompressedBodies = request.app.state.metadata_gzip
        headers["Content-Encoding"] = "gzip"
        return Response(bodies.get(cached, base), media_type=MEDIA_TYPE, headers=headers)
    return Response(cached.body(base), media_type=MEDIA_TYPE, headers=headers)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
def instance_metadata(
    request: Request, study: str, series: str, instance: str, _: Reader
) -> JSONResponse:
    _require_json(request)
    [stored] = stored_instances(request, Level.IMAGE, uid_path(study, series, instance))
    archive: Archive = request.app.state.archive
    document = instance_json(archive.blobs.get(stored.blob_key), bulk_data_url(base_url(request)))
    return JSONResponse([document], media_type=MEDIA_TYPE)


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}")
def bulk_data(
    request: Request, study: str, series: str, instance: str, tag: str, _: Reader
) -> StreamingResponse:
    """A top-level binary value of an instance, as its metadata's BulkDataURI names it."""
    [stored] = stored_instances(request, Level.IMAGE, uid_path(study, series, instance))
    try:
        element_tag = int(tag, 16) if len(tag) == 8 else -1
    except ValueError:
        element_tag = -1
    if element_tag < 0:
        raise BadRequest(f"{tag!r} is not a tag (8 hexadecimal digits)")
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
    """Instances as multipart/related application/dicom, each in the transfer syntax asked for.

    Everything that can fail is decided before the first byte (PS3.18 8.7.3.5): an unknown
    UID (404), a syntax we cannot produce (406), a missing blob or an undecodable first
    instance (503/406). Instances are then read and re-encoded one at a time. When every
    instance goes as stored, the blobs' sizes give the response a Content-Length, and their
    bytes are sent as read, without chunk framing.
    """
    wanted = _requested_transfer_syntax(request.headers.get("accept"))
    found = stored_instances(request, level, uids)
    targets = [target_syntax(stored.TransferSyntaxUID, wanted) for stored in found]
    archive: Archive = request.app.state.archive
    sizes = archive.blobs.sizes([stored.blob_key for stored in found])  # S3: a HEAD each
    missing = [
        stored.SOPInstanceUID for stored, size in zip(found, sizes, strict=True) if size is None
    ]
    if missing:
        raise StorageUnavailable(f"blobs of {len(missing)} instances are missing: {missing[:3]}")
    first = transcode(archive.blobs.get(found[0].blob_key), found[0].TransferSyntaxUID, targets[0])
    boundary = uuid.uuid4().hex
    types = [f"application/dicom; transfer-syntax={target}" for target in targets]

    def bodies() -> Iterator[tuple[str, bytes]]:
        yield types[0], first
        for stored, target, content_type in zip(found[1:], targets[1:], types[1:], strict=True):
            try:
                data = archive.blobs.get(stored.blob_key)  # one instance in memory at a time
                body = transcode(data, stored.TransferSyntaxUID, target)
            except Exception:
                # Past the first byte no status can change: the connection is dropped without
                # the closing boundary, so the client sees an incomplete response, not a short one.
                log.exception("WADO-RS stream of %s broken off", stored.SOPInstanceUID)
                raise
            yield content_type, body

    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    headers = {}
    if all(t == s.TransferSyntaxUID for t, s in zip(targets, found, strict=True)):
        # A blob whose length changed since (it cannot: blobs are written once) would make
        # the server break the connection off, as for any failure once streaming started.
        length = multipart_length(boundary, types, [len(first), *(s or 0 for s in sizes[1:])])
        headers["Content-Length"] = str(length)
    files = local_files(archive)
    if headers and files is not None:  # as stored, from files on a local disk
        pieces = _local_parts(files, boundary, types, first, found[1:])
        return StreamingResponse(pieces, media_type=media, headers=headers)
    return StreamingResponse(multipart_parts(boundary, bodies()), media_type=media, headers=headers)


def local_files(archive: Archive) -> FilesystemStore | None:
    """The archive's blob store when its blobs are files on a local disk (FilesystemStore.local:
    not NFS, SMB, FUSE...), which the event loop may read; None otherwise."""
    blobs = archive.blobs
    return blobs if isinstance(blobs, FilesystemStore) and blobs.local else None


async def _local_parts(
    blobs: FilesystemStore,
    boundary: str,
    types: list[str],
    first: bytes,
    rest: list[StoredInstance],
) -> AsyncIterator[bytes]:
    """The multipart body of instances sent as stored from local files, written by the event
    loop: each blob as read (one copy fewer than gathering chunks: the page cache, then the
    socket), its part headers and delimiters in the small pieces between. A blob of at most
    INLINE_BYTES is read on the loop (~0.1 ms per MB from the page cache), a larger one in a
    worker thread. A sync iterator would cost a thread hand-over per piece."""
    yield _part_head(boundary, types[0])
    yield first
    for stored, content_type in zip(rest, types[1:], strict=True):
        yield b"\r\n" + _part_head(boundary, content_type)
        try:
            blob = blobs.get_at_most(stored.blob_key, INLINE_BYTES)
            if blob is None:
                blob = await run_in_threadpool(blobs.get, stored.blob_key)
        except Exception:
            # Past the first byte no status can change: the connection is dropped without the
            # closing boundary, so the client sees an incomplete response, not a short one.
            log.exception("WADO-RS stream of %s broken off", stored.SOPInstanceUID)
            raise
        yield blob
    yield b"\r\n" + _closing(boundary)


def _series_metadata(request: Request, study: str, series: str) -> SeriesMetadata:
    archive: Archive = request.app.state.archive
    cached = series_metadata_of(archive, scope(request), study, series)
    if cached is None:
        raise NotFound(f"no series {series} in study {study}")
    return cached


def _require_json(request: Request) -> None:
    accept = request.headers.get("accept")
    if not accepts_json(accept):
        raise NotAcceptable(f"metadata comes as {MEDIA_TYPE}, not {accept}")


def _not_modified(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match", "")
    return any(
        tag.strip().strip('"').removeprefix("W/").strip('"') == etag for tag in wanted.split(",")
    )


def _json_response(request: Request, etag: str, body: bytes) -> Response:
    headers = {"ETag": f'"{etag}"', "Vary": "Accept-Encoding"}
    if accepts_gzip(request.headers.get("accept-encoding")):
        headers["Content-Encoding"] = "gzip"
        return Response(
            gzip.compress(body, compresslevel=1), media_type=MEDIA_TYPE, headers=headers
        )
    return Response(body, media_type=MEDIA_TYPE, headers=headers)


def stored_instances(request: Request, level: Level, uids: dict[str, str]) -> list[StoredInstance]:
    """The stored instances at or under *uids* in the caller's scope (an instance: one row, by
    its SOP Instance UID within the path's study and series); BadRequest for a malformed UID,
    NotFound for none."""
    _check_uids(*uids.values())
    archive: Archive = request.app.state.archive
    with archive.db.read() as conn:
        if level is Level.IMAGE:
            one = find_instance(conn, scope(request), **uids)
            found = [] if one is None else [one]
        else:
            found = matching_instances(conn, Query(level, uids, (), scope=scope(request)))
    if not found:
        raise NotFound(f"no {level.value.lower()} {'/'.join(uids.values())} in this archive")
    return found


def _check_uids(*values: str) -> None:
    for value in values:
        if not is_valid_uid(value):
            raise BadRequest(f"{value!r} is not a valid UID")


def _requested_transfer_syntax(accept: str | None) -> str | None:
    """The transfer-syntax asked for: None (not said), "*" (as stored) or a UID.

    The most preferred media range that admits multipart/related application/dicom decides.
    Raises NotAcceptable when none does.
    """
    for media, named in accept_ranges(accept):
        if media in ("*/*", "multipart/*") or (
            media == "multipart/related"
            and named.get("type", "application/dicom").lower() == "application/dicom"
        ):
            return named.get("transfer-syntax") or None
    raise NotAcceptable(
        f'instances come as multipart/related; type="application/dicom", not {accept}'
    )


def multipart_parts(boundary: str, bodies: Any) -> Iterator[bytes]:
    """The multipart/related body of (content type, bytes) parts, in chunks of about CHUNK bytes.

    A response streamed in many small pieces costs a hand-over between threads and a socket
    write per piece: part headers, bodies and delimiters are sent together, a chunk at a time.
    """
    pending: list[bytes] = []
    size = 0
    for content_type, body in bodies:
        pending += (_part_head(boundary, content_type), body, b"\r\n")
        size += len(body)
        if size >= CHUNK:
            yield b"".join(pending)
            pending, size = [], 0
    pending.append(_closing(boundary))
    yield b"".join(pending)


def _part_head(boundary: str, content_type: str) -> bytes:
    """A part's delimiter and headers, up to its body (PS3.18 8.7.1, RFC 2387)."""
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()


def _closing(boundary: str) -> bytes:
    """The close delimiter after the last part."""
    return f"--{boundary}--\r\n".encode()


def multipart_length(boundary: str, content_types: list[str], sizes: list[int]) -> int:
    """The length of what multipart_parts sends for parts of these types and sizes."""
    delimiters = sum(len(_part_head(boundary, t)) + 2 for t in content_types)  # + CRLF after
    return delimiters + sum(sizes) + len(_closing(boundary))


def uid_path(study: str, series: str, instance: str | None = None) -> dict[str, str]:
    uids = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    if instance is not None:
        uids["SOPInstanceUID"] = instance
    return uids
