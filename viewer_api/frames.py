"""Frames of a stored instance: the frame list, one frame at a time, WADO-RS frames.

PS3.18 8.3.5.1 (frame-list), 8.7.3.5 (bulk data media types): frames asked for as
``application/octet-stream`` without a ``transfer-syntax`` parameter come uncompressed in
Explicit VR Little Endian byte order; ``transfer-syntax=*`` gives them as stored. Frames are
decoded one at a time while the response streams, so decoded pixels stay at one frame (the
instance itself is read whole, as stored).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
)
from starlette.concurrency import run_in_threadpool

from pacs.ingest import Archive
from pacs.search import Level, StoredInstance
from viewer_api.auth import Reader
from viewer_api.dicomjson import accept_ranges
from viewer_api.frame_layout import LAYOUT_TAGS, native_frames, native_layout
from viewer_api.problems import ApiProblem, BadRequest, NotAcceptable, NotFound
from viewer_api.transcode import target_syntax
from viewer_api.wado import (
    INLINE_BYTES,
    local_files,
    multipart_parts,
    stored_instances,
    uid_path,
)

logger = logging.getLogger(__name__)
router = APIRouter(tags=["WADO-RS frames"])

INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"
OCTET_STREAM = "application/octet-stream"
# PS3.18 Table 8.7.3-5: compressed frames in their own media type, as stored.
COMPRESSED_MEDIA = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    ),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
}


@router.get(INSTANCE + "/frames/{frames}")
async def retrieve_frames(
    request: Request, study: str, series: str, instance: str, frames: str, _: Reader
) -> Response:
    """Frames as multipart/related parts, each labelled with its transfer syntax.

    Uncompressed frames sent as stored (or little endian from little endian) are cut out of
    the stored file at their offsets, with the data set read up to the pixel data only.

    With the index in SQLite and the blobs in files on a local disk, an instance of at most
    INLINE_BYTES whose frames are cut out is answered on the event loop: a lookup and a read
    from the page cache (~0.2 ms; a cold read from disk blocks the loop as long, as nginx's
    file reads do). Handing each request to a worker thread and back cost more CPU than the
    rest of it, a third of a viewer's frame requests' time. Everything else (PostgreSQL, S3, a
    larger instance, frames to decode or swap) is answered from a worker thread.
    """
    uids = uid_path(study, series, instance)
    archive: Archive = request.app.state.archive
    files = local_files(archive)
    if files is None or not archive.db.is_sqlite:
        return await run_in_threadpool(_frames_response, request, uids, frames)
    [found] = stored_instances(request, Level.IMAGE, uids)
    blob = files.get_at_most(found.blob_key, INLINE_BYTES)
    cut = None if blob is None else _cut_out_response(request, found, blob, frames)
    if cut is not None:
        return cut
    return await run_in_threadpool(_frames_response, request, uids, frames, found, blob)


def _frames_response(
    request: Request,
    uids: dict[str, str],
    frames: str,
    found: StoredInstance | None = None,
    blob: bytes | None = None,
) -> Response:
    """The frames response, frames decoded where they must be (a worker thread's part)."""
    if found is None:
        [found] = stored_instances(request, Level.IMAGE, uids)
    if blob is None:
        archive: Archive = request.app.state.archive
        blob = archive.blobs.get(found.blob_key)
    ds, pixels = _header_and_pixels(blob)
    return _response(request, found, blob, frames, ds, pixels)


def _cut_out_response(
    request: Request, found: StoredInstance, blob: bytes, frames: str
) -> Response | None:
    """The frames response when its frames are cut out of *blob* as they lie (native little
    endian pixel data found by walking element headers, :func:`native_frames`); None
    otherwise."""
    native = native_frames(blob)
    if native is None:
        return None
    numbers = frame_numbers(frames, native.frames)
    media, syntax = _negotiate(request.headers.get("accept"), found.TransferSyntaxUID)
    label = f"{media}; transfer-syntax={_label(syntax)}"
    cut = ((label, native.cut(blob, number)) for number in numbers)
    return _multipart(media, cut, len(numbers))


def _response(
    request: Request,
    found: StoredInstance,
    blob: bytes,
    frames: str,
    ds: Dataset,
    pixels: memoryview | None,
) -> Response:
    """The multipart response of the *frames* asked for; *ds* and *pixels* as
    :func:`_header_and_pixels` has them."""
    stored = found.TransferSyntaxUID
    if pixels is None and "PixelData" not in ds:
        raise NotFound("the instance has no pixel data")
    numbers = frame_numbers(frames, frame_count(ds))
    media, syntax = _negotiate(request.headers.get("accept"), stored)
    if pixels is not None and not _cut_out(ds, pixels):
        ds, pixels = dcmread(BytesIO(blob)), None  # decoded or swapped: the whole data set
    parts = (
        (
            f"{media}; transfer-syntax={_label(syntax)}",
            frame_bytes(ds, number, stored, syntax, pixels),
        )
        for number in numbers
    )
    return _multipart(media, parts, len(numbers))


def _multipart(media: str, parts: Iterator[tuple[str, bytes | memoryview]], count: int) -> Response:
    """*parts* (Content-Type, body; *count* of them) as a multipart/related response: one body
    for one part (a viewer's usual request: no streaming hand-overs), streamed for more."""
    first = next(parts)  # decoded before the status line: a frame we cannot decode is a 406
    boundary = uuid.uuid4().hex
    content_type = f'multipart/related; type="{media}"; boundary={boundary}'
    if count == 1:
        body = b"".join(multipart_parts(boundary, [first]))
        return Response(body, media_type=content_type)

    def bodies() -> Iterator[tuple[str, bytes | memoryview]]:
        yield first
        yield from parts

    return StreamingResponse(multipart_parts(boundary, bodies()), media_type=content_type)


def instance_dataset(
    request: Request, study: str, series: str, instance: str
) -> tuple[Dataset, str]:
    """The stored instance with pixel data, and its stored transfer syntax (404 otherwise)."""
    [stored] = stored_instances(request, Level.IMAGE, uid_path(study, series, instance))
    archive: Archive = request.app.state.archive
    ds = dcmread(BytesIO(archive.blobs.get(stored.blob_key)))
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data")
    return ds, stored.TransferSyntaxUID


def frame_count(ds: Dataset) -> int:
    """Number of Frames (0028,0008); 1 when absent or not a number."""
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


_FRAME_NUMBER = re.compile(r"[1-9][0-9]{0,8}")


def frame_numbers(frames: str, count: int) -> list[int]:
    """The 1-based frame numbers of a frame-list (PS3.18 8.3.5.1.1).

    At most *count* numbers (the instance's frame count), none repeated: a list that names a
    frame twice is a 400, so that a short URL cannot ask for thousands of decoded frames.
    """
    if frames.count(",") >= count:
        raise BadRequest(f"the frame list names more frames than the instance has ({count})")
    parts = frames.split(",")
    if not all(_FRAME_NUMBER.fullmatch(part) for part in parts):  # int() takes " 1", "1_0"
        raise BadRequest(f"frame list {frames[:64]!r} is not comma-separated numbers from 1")
    numbers = [int(part) for part in parts]
    if len(set(numbers)) != len(numbers):
        raise BadRequest("the frame list names a frame more than once")
    for number in numbers:
        if number > count:
            raise NotFound(f"frame {number} does not exist (the instance has {count})")
    return numbers


def decoded_frame(ds: Dataset, number: int) -> Any:
    """Frame *number* (1-based) decoded alone: (rows, columns[, samples]) in native order.

    Image Pixel attributes a header lacks are given their usual values (see _pixel_defaults),
    so that what the header allows is decoded. Raises NotAcceptable when it cannot be.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
    try:
        return pixel_array(ds, index=number - 1, **_pixel_defaults(ds))
    except Exception as exc:  # pydicom and its decoder plugins raise many kinds
        logger.warning("frame %d (%s) not decoded: %r", number, syntax, exc)
        raise NotAcceptable(f"frame {number} of pixel data in {syntax} cannot be decoded") from exc


def frame_bytes(
    ds: Dataset, number: int, stored: str, syntax: str, pixels: memoryview | None = None
) -> bytes | memoryview:
    """The bytes of frame *number* in *syntax* (as stored, or native little endian); cut from
    *pixels*, the stored native Pixel Data value, where :func:`_cut_out` allows it (a view of
    them then: the multipart body is the only copy)."""
    if pixels is not None:
        length = _frame_length(ds)
        assert length is not None  # _cut_out checked
        return pixels[(number - 1) * length : number * length]
    if syntax == stored and UID(stored).is_encapsulated:
        return get_frame(ds.PixelData, number - 1, number_of_frames=frame_count(ds))
    if syntax == stored or (stored not in _BIG_ENDIAN and not UID(stored).is_encapsulated):
        stored_bytes = _native_slice(ds, number)  # the bytes as stored, byte order kept
        if stored_bytes is not None:
            return stored_bytes
    decoded = decoded_frame(ds, number)
    if int(ds.get("BitsAllocated") or 8) == 1:
        return pack_bits(decoded)
    order = ">" if syntax in _BIG_ENDIAN else "<"
    return bytes(np.ascontiguousarray(decoded, dtype=decoded.dtype.newbyteorder(order)).tobytes())


_BIG_ENDIAN = frozenset((str(ExplicitVRBigEndian),))


def _negotiate(accept: str | None, stored: str) -> tuple[str, str]:
    """The part media type and transfer syntax of the frames, from the Accept header."""
    refusals: list[ApiProblem] = []
    for media, named in accept_ranges(accept):
        kind = named.get("type", OCTET_STREAM).lower() if media == "multipart/related" else None
        if media in ("*/*", "multipart/*") or kind in (OCTET_STREAM, "*/*"):
            try:
                return OCTET_STREAM, target_syntax(stored, named.get("transfer-syntax"))
            except NotAcceptable as exc:
                refusals.append(exc)
        elif kind in COMPRESSED_MEDIA:
            wanted = named.get("transfer-syntax", stored)
            if stored in COMPRESSED_MEDIA[kind] and wanted in (stored, "*"):
                return kind, stored
            refusals.append(NotAcceptable(f"frames are stored as {stored}, not as {kind}"))
    if refusals:
        raise refusals[0]
    raise NotAcceptable(
        f'frames come as multipart/related; type="{OCTET_STREAM}", not {(accept or "")[:200]}'
    )


def _label(syntax: str) -> str:
    # Deflate compresses a whole data set, never a frame: the frame bytes are little endian.
    return str(ExplicitVRLittleEndian) if syntax == DeflatedExplicitVRLittleEndian else syntax


def _native_slice(ds: Dataset, number: int) -> bytes | None:
    """Frame *number* of uncompressed pixel data, cut out without decoding (None: bit-packed)."""
    length = _frame_length(ds)
    if length is None:
        return None
    data = ds.PixelData[(number - 1) * length : number * length]
    return bytes(data) if len(data) == length else None


def _frame_length(ds: Dataset) -> int | None:
    """Bytes of one frame of uncompressed pixel data (None: bit-packed, or no size known)."""
    bits = int(ds.get("BitsAllocated") or 0)
    if bits % 8 or not bits or ds.get("Rows") in (None, "") or ds.get("Columns") in (None, ""):
        return None
    samples = _samples_per_pixel(ds)
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2  # two chroma samples shared by each pair of pixels (PS3.3 C.7.6.3.1.2)
    return int(ds.Rows) * int(ds.Columns) * samples * bits // 8


def _samples_per_pixel(ds: Dataset) -> int:
    """Samples per Pixel; when the header lacks it, what the Photometric Interpretation implies
    (one for monochrome and palette colour or none said, else three), as decoding assumes."""
    if ds.get("SamplesPerPixel"):
        return int(ds.SamplesPerPixel)
    photometric = ds.get("PhotometricInterpretation") or None
    return 1 if photometric in (None, "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR") else 3


# Pixel Data (7FE0,0010) as it starts in a little endian data set.
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def _header_and_pixels(blob: bytes) -> tuple[Dataset, memoryview | None]:
    """The stored instance's frame layout (LAYOUT_TAGS, read up to its Pixel Data), and that
    element's value as it lies in *blob* (PS3.5 7.1: found by offset, not copied); the whole
    data set and None where the value is not native little endian bytes of a defined length
    (encapsulated, deflated, big endian, absent)."""
    layout = native_layout(blob)
    if layout is not None:  # the usual case, found without parsing the header
        layout_ds, start, length = layout
        return layout_ds, memoryview(blob)[start : start + length]
    fp = BytesIO(blob)
    # Only what cutting frames needs is decoded (the rest is skipped, not parsed into a Dataset).
    ds = dcmread(fp, stop_before_pixels=True, specific_tags=sorted(LAYOUT_TAGS))
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    at = fp.tell()  # dcmread stops at the start of the pixel data element
    if (
        not syntax.is_transfer_syntax
        or syntax.is_encapsulated
        or syntax.is_deflated
        or not syntax.is_little_endian
        or blob[at : at + 4] != _PIXEL_DATA_TAG
    ):
        return dcmread(BytesIO(blob)), None
    if syntax.is_implicit_VR:
        start, length = at + 8, int.from_bytes(blob[at + 4 : at + 8], "little")
    else:  # tag, VR (OB or OW), 2 reserved bytes, 4-byte length (PS3.5 7.1.2)
        start, length = at + 12, int.from_bytes(blob[at + 8 : at + 12], "little")
    if length == 0xFFFFFFFF or start + length > len(blob):
        return dcmread(BytesIO(blob)), None
    return ds, memoryview(blob)[start : start + length]


def _cut_out(ds: Dataset, pixels: memoryview) -> bool:
    """Whether frames go as they lie in *pixels*, native little endian data (as
    :func:`frame_bytes` sends such data in any syntax asked for): byte-aligned, and every
    frame there in full."""
    length = _frame_length(ds)
    return length is not None and len(pixels) >= frame_count(ds) * length


def _pixel_defaults(ds: Dataset) -> dict[str, Any]:
    """Values for Image Pixel attributes the header lacks (PS3.3 C.7.6.3), for decoding.

    Pixel Representation defaults to unsigned, Bits Stored to Bits Allocated, Samples per
    Pixel to what the Photometric Interpretation implies, which is itself MONOCHROME2 or RGB.
    """

    def missing(keyword: str) -> bool:
        return ds.get(keyword) in (None, "")

    photometric = None if missing("PhotometricInterpretation") else ds.PhotometricInterpretation
    samples = _samples_per_pixel(ds)
    defaults: dict[str, Any] = {}
    if missing("SamplesPerPixel"):
        defaults["samples_per_pixel"] = samples
    if photometric is None:
        defaults["photometric_interpretation"] = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1 and missing("PlanarConfiguration"):
        defaults["planar_configuration"] = 0
    if missing("PixelRepresentation"):
        defaults["pixel_representation"] = 0
    bits = None if missing("BitsAllocated") else int(ds.BitsAllocated)
    if bits is None and not missing("Rows") and not missing("Columns"):
        per_frame = int(ds.Rows) * int(ds.Columns) * samples * frame_count(ds)
        bits = 8 * (len(ds.PixelData) // max(per_frame, 1))  # uncompressed data only
        defaults["bits_allocated"] = bits
    if missing("BitsStored") and bits:
        defaults["bits_stored"] = bits
    return defaults
