"""WADO-RS frames, rendered images and thumbnails (PS3.18 8.3.5, 10.4.1.1.3-4)."""

from __future__ import annotations

import uuid
from io import BytesIO
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.multival import MultiValue

from pacs.ingest import Archive
from pacs.search import Level
from viewer_api.auth import Reader
from viewer_api.dicomjson import media_type
from viewer_api.problems import BadRequest, NotAcceptable, NotFound
from viewer_api.wado import UNCOMPRESSED, multipart_parts, stored_instances, uid_path

router = APIRouter(prefix="/dicom-web", tags=["WADO-RS rendered"])

INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"
THUMBNAIL_SIZE = (128, 128)
DEFAULT_QUALITY = 90


@router.get(INSTANCE + "/frames/{frames}")
def retrieve_frames(
    request: Request, study: str, series: str, instance: str, frames: str, _: Reader
) -> StreamingResponse:
    """Frames as native (uncompressed, little endian) octet streams, or as stored when the
    Accept header names the stored transfer syntax or ``*``."""
    ds, syntax = _dataset(request, study, series, instance)
    numbers = _frame_numbers(frames, _frame_count(ds))
    accept = request.headers.get("accept", "*/*")
    as_stored = syntax not in UNCOMPRESSED and ("transfer-syntax=*" in accept or syntax in accept)
    if as_stored:
        fragments = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData)]
        bodies = [
            (f"application/octet-stream; transfer-syntax={syntax}", fragments[n - 1])
            for n in numbers
        ]
    else:
        pixels = _pixels(ds)
        bodies = [
            (
                "application/octet-stream",
                np.ascontiguousarray(pixels[n - 1])
                .astype(pixels.dtype.newbyteorder("<"))
                .tobytes(),
            )
            for n in numbers
        ]
    boundary = uuid.uuid4().hex
    media = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    return StreamingResponse(multipart_parts(boundary, bodies), media_type=media)


@router.get(INSTANCE + "/rendered")
def render_instance(
    request: Request, study: str, series: str, instance: str, _: Reader
) -> Response:
    ds, _syntax = _dataset(request, study, series, instance)
    return _render(request, ds, 1, viewport=None)


@router.get(INSTANCE + "/frames/{frame}/rendered")
def render_frame(
    request: Request, study: str, series: str, instance: str, frame: str, _: Reader
) -> Response:
    ds, _syntax = _dataset(request, study, series, instance)
    [number] = _frame_numbers(frame, _frame_count(ds))
    return _render(request, ds, number, viewport=None)


@router.get(INSTANCE + "/thumbnail")
def instance_thumbnail(
    request: Request, study: str, series: str, instance: str, _: Reader
) -> Response:
    ds, _syntax = _dataset(request, study, series, instance)
    return _render(request, ds, 1, viewport=THUMBNAIL_SIZE)


@router.get("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(request: Request, study: str, series: str, _: Reader) -> Response:
    return _representative(request, Level.SERIES, uid_path(study, series))


@router.get("/studies/{study}/thumbnail")
def study_thumbnail(request: Request, study: str, _: Reader) -> Response:
    return _representative(request, Level.STUDY, {"StudyInstanceUID": study})


def _representative(request: Request, level: Level, uids: dict[str, str]) -> Response:
    """The thumbnail of the middle image of a series or study (the first series with pixels)."""
    archive: Archive = request.app.state.archive
    found = stored_instances(request, level, uids)
    for stored in found[len(found) // 2 :] + found[: len(found) // 2]:
        ds = dcmread(BytesIO(archive.blobs.get(stored.blob_key)))
        if "PixelData" in ds:
            return _render(request, ds, 1, viewport=THUMBNAIL_SIZE)
    raise NotFound("nothing with pixel data to make a thumbnail of")


def _dataset(request: Request, study: str, series: str, instance: str) -> tuple[Dataset, str]:
    [stored] = stored_instances(request, Level.IMAGE, uid_path(study, series, instance))
    archive: Archive = request.app.state.archive
    ds = dcmread(BytesIO(archive.blobs.get(stored.blob_key)))
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data")
    return ds, stored.TransferSyntaxUID


def _frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _frame_numbers(frames: str, count: int) -> list[int]:
    try:
        numbers = [int(part) for part in frames.split(",")]
    except ValueError as exc:
        raise BadRequest(f"frame list {frames!r} is not comma-separated numbers") from exc
    for number in numbers:
        if not 1 <= number <= count:
            raise NotFound(f"frame {number} does not exist (the instance has {count})")
    return numbers


def _pixels(ds: Dataset) -> Any:
    """Decoded pixels as (frames, rows, columns[, samples])."""
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # no decoder for this transfer syntax (e.g. progressive JPEG)
        raise NotAcceptable(
            f"pixel data in {ds.file_meta.TransferSyntaxUID} cannot be decoded here: {exc}"
        ) from exc
    frames = _frame_count(ds)
    if frames == 1:
        pixels = pixels[np.newaxis, ...]
    return pixels


def _render(
    request: Request, ds: Dataset, frame: int, viewport: tuple[int, int] | None
) -> Response:
    params = request.query_params
    media = _rendered_media_type(request.headers.get("accept", "*/*"))
    pixels = _pixels(ds)[frame - 1]
    image = _to_image(ds, pixels, params.get("window"))
    if "viewport" in params:
        viewport = _viewport(params["viewport"])
    if viewport is not None:
        image.thumbnail(viewport)
    quality = _quality(params.get("quality"))
    out = BytesIO()
    if media == "image/png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=quality)
    return Response(out.getvalue(), media_type=media)


def _to_image(ds: Dataset, pixels: Any, window: str | None) -> Image.Image:
    """Rescale to modality values (e.g. HU), apply the VOI window, invert MONOCHROME1."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3:  # colour: already RGB as decoded
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    values = pixels.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(
        ds.get("RescaleIntercept", 0) or 0
    )
    center, width = _window(ds, values, window)
    low = center - width / 2
    scaled = np.clip((values - low) / max(width, 1e-6), 0.0, 1.0) * 255.0
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def _window(ds: Dataset, values: Any, window: str | None) -> tuple[float, float]:
    if window:
        parts = window.split(",")
        try:
            center, width = float(parts[0]), float(parts[1])
        except (IndexError, ValueError) as exc:
            raise BadRequest("window must be center,width[,function]") from exc
        if width <= 0:
            raise BadRequest("window width must be positive")
        return center, width
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return _first_number(ds.WindowCenter), max(_first_number(ds.WindowWidth), 1.0)
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0)


def _first_number(value: Any) -> float:
    """The first of a multi-valued DS (several windows may be given; the first is the default)."""
    if isinstance(value, (list, tuple, MultiValue)):
        return float(value[0])
    return float(value)


def _viewport(value: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in value.split(",")[:2])
    except ValueError as exc:
        raise BadRequest("viewport must be width,height") from exc
    if not (0 < width <= 4096 and 0 < height <= 4096):
        raise BadRequest("viewport sizes must be between 1 and 4096")
    return width, height


def _quality(value: str | None) -> int:
    if value is None:
        return DEFAULT_QUALITY
    try:
        quality = int(value)
    except ValueError as exc:
        raise BadRequest("quality must be an integer 1-100") from exc
    if not 1 <= quality <= 100:
        raise BadRequest("quality must be an integer 1-100")
    return quality


def _rendered_media_type(accept: str) -> str:
    for media_range in accept.split(","):
        media, _ = media_type(media_range)
        if media in ("image/jpeg", "image/*", "*/*"):
            return "image/jpeg"
        if media == "image/png":
            return "image/png"
    raise NotAcceptable(f"rendered images come as image/jpeg or image/png, not {accept}")
