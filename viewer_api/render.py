"""Rendered images and thumbnails (PS3.18 8.3.5.1.3, 10.4.1.1.3-4), for WADO-RS and WADO-URI.

One frame is decoded (viewer_api.frames), its stored values mapped to modality values
(Rescale Slope/Intercept, from the frame's functional groups where the instance has them),
a VOI window applied (the request's, the frame's, the instance's, or the frame's own range),
and the result encoded as JPEG, PNG or GIF.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut

from pacs.ingest import Archive
from pacs.search import Level
from viewer_api import frames
from viewer_api.auth import Reader
from viewer_api.dicomjson import accept_ranges
from viewer_api.frames import INSTANCE, decoded_frame, frame_count, instance_dataset
from viewer_api.parameters import integer
from viewer_api.problems import BadRequest, NotAcceptable, NotFound
from viewer_api.wado import stored_instances, uid_path

router = APIRouter(prefix="/dicom-web", tags=["WADO-RS rendered"])
router.include_router(frames.router)

THUMBNAIL_SIZE = (128, 128)
DEFAULT_QUALITY = 90
MAX_SIZE = 4096  # the largest rendered width or height, in pixels
RENDERED_MEDIA = ("image/jpeg", "image/png", "image/gif")
# Which functional group macro (PS3.3 C.7.6.16.2) holds each attribute in enhanced objects.
_GROUPS = {
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
    "WindowCenter": "FrameVOILUTSequence",
    "WindowWidth": "FrameVOILUTSequence",
}


@router.get(INSTANCE + "/rendered")
def render_instance(
    request: Request, study: str, series: str, instance: str, _: Reader
) -> Response:
    ds, _syntax = instance_dataset(request, study, series, instance)
    return _rendered(request, ds, 1, viewport=None)


@router.get(INSTANCE + "/frames/{frame}/rendered")
def render_frame(
    request: Request, study: str, series: str, instance: str, frame: str, _: Reader
) -> Response:
    ds, _syntax = instance_dataset(request, study, series, instance)
    numbers = frames.frame_numbers(frame, frame_count(ds))
    if len(numbers) != 1:
        raise BadRequest("a rendered frame is one frame number")
    return _rendered(request, ds, numbers[0], viewport=None)


@router.get(INSTANCE + "/thumbnail")
def instance_thumbnail(
    request: Request, study: str, series: str, instance: str, _: Reader
) -> Response:
    ds, _syntax = instance_dataset(request, study, series, instance)
    return _rendered(request, ds, 1, viewport=THUMBNAIL_SIZE, media=_thumbnail_media_type(request))


@router.get("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(request: Request, study: str, series: str, _: Reader) -> Response:
    return _representative(request, Level.SERIES, uid_path(study, series))


@router.get("/studies/{study}/thumbnail")
def study_thumbnail(request: Request, study: str, _: Reader) -> Response:
    return _representative(request, Level.STUDY, {"StudyInstanceUID": study})


def render(
    ds: Dataset,
    number: int,
    window: tuple[float, float] | None = None,
    size: tuple[int | None, int | None] = (None, None),
) -> Image.Image:
    """Frame *number* (1-based) of *ds* as an 8-bit image, scaled to fit *size* (width, height;
    None: not constrained) with its aspect ratio kept.

    Parameters
    ----------
    ds : Dataset
        An instance with pixel data.
    number : int
        The frame.
    window : (center, width), optional
        The VOI window in modality values; by default the frame's or the instance's first
        window, else the frame's range of values.
    size : (width, height)
        The box to fit the image in.

    Raises
    ------
    NotAcceptable
        The frame cannot be decoded.
    """
    pixels = decoded_frame(ds, number)
    image = _to_image(ds, number, pixels, window)
    width, height = size
    if width or height:
        scale = min(
            (width or MAX_SIZE) / image.width,
            (height or MAX_SIZE) / image.height,
        )
        shape = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(shape, Image.Resampling.LANCZOS)
    return image


def encode(image: Image.Image, media: str, quality: int = DEFAULT_QUALITY) -> bytes:
    """*image* as *media* (one of RENDERED_MEDIA); *quality* applies to JPEG."""
    out = BytesIO()
    if media == "image/png":
        image.save(out, format="PNG")
    elif media == "image/gif":
        image.save(out, format="GIF")
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def parse_quality(value: str | None, name: str = "quality") -> int:
    """A JPEG quality 1-100 from a query parameter (the default when absent)."""
    return DEFAULT_QUALITY if value is None else integer(name, value, 1, 100)


def parse_window(center: str, width: str) -> tuple[float, float]:
    """A VOI window from its center and width as given (width positive)."""
    try:
        window = float(center), float(width)
    except ValueError as exc:
        raise BadRequest("window center and width must be numbers") from exc
    if not all(np.isfinite(window)):
        raise BadRequest("window center and width must be finite numbers")
    if window[1] <= 0:
        raise BadRequest("window width must be positive")
    return window


def _representative(request: Request, level: Level, uids: dict[str, str]) -> Response:
    """The thumbnail of the middle image of a series or study (the first series with pixels)."""
    archive: Archive = request.app.state.archive
    found = stored_instances(request, level, uids)
    for stored in found[len(found) // 2 :] + found[: len(found) // 2]:
        ds = dcmread(BytesIO(archive.blobs.get(stored.blob_key)))
        if "PixelData" in ds:
            number = frame_count(ds) // 2 + 1
            media = _thumbnail_media_type(request)
            return _rendered(request, ds, number, viewport=THUMBNAIL_SIZE, media=media)
    raise NotFound("nothing with pixel data to make a thumbnail of")


def _rendered(
    request: Request,
    ds: Dataset,
    number: int,
    viewport: tuple[int, int] | None,
    media: str | None = None,
) -> Response:
    """A WADO-RS rendered response: query parameters window, viewport and quality; *media*
    when the caller chose it, else the one the Accept header asks for."""
    params = request.query_params
    media = media or _rendered_media_type(request.headers.get("accept"))
    window = None
    if params.get("window"):
        parts = params["window"].split(",")
        if len(parts) < 2:
            raise BadRequest("window must be center,width[,function]")
        window = parse_window(parts[0], parts[1])
    if "viewport" in params:
        viewport = _viewport(params["viewport"])
    quality = parse_quality(params.get("quality"))
    size = viewport or (None, None)
    return Response(encode(render(ds, number, window, size), media, quality), media_type=media)


def _to_image(
    ds: Dataset, number: int, pixels: Any, window: tuple[float, float] | None
) -> Image.Image:
    """Rescale to modality values (e.g. HU), apply the VOI window, invert MONOCHROME1."""
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2")
    if photometric == "PALETTE COLOR" and pixels.ndim == 2:
        pixels = apply_color_lut(pixels, ds)
        return _rgb(pixels, 8 * pixels.dtype.itemsize)
    if pixels.ndim == 3:  # colour: RGB as decoded
        return _rgb(pixels, int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8))
    slope = _frame_value(ds, number, "RescaleSlope", 1.0) or 1.0
    values = pixels.astype(np.float64) * slope + _frame_value(ds, number, "RescaleIntercept", 0.0)
    center, width = window or _window(ds, number, values)
    low = center - width / 2
    scaled = np.clip((values - low) / max(width, 1e-6), 0.0, 1.0) * 255.0
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def _rgb(pixels: Any, bits: int) -> Image.Image:
    if bits > 8:  # more than 8 bits a sample: keep the most significant 8
        pixels = pixels.astype(np.float64) * (255.0 / (2.0**bits - 1))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def _window(ds: Dataset, number: int, values: Any) -> tuple[float, float]:
    """The first window of the frame or instance (PS3.3 C.11.2); else the frame's range."""
    center = _frame_value(ds, number, "WindowCenter", None)
    width = _frame_value(ds, number, "WindowWidth", None)
    if center is not None and width is not None and width > 0:
        return center, width
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0)


def _frame_value(ds: Dataset, number: int, keyword: str, default: float | None) -> Any:
    """An attribute of frame *number*: from its per-frame functional group, the shared group,
    then the top level (PS3.3 C.7.6.16). The first value of a multi-valued one."""
    sources: list[Dataset] = []
    for groups, index in (
        (ds.get("PerFrameFunctionalGroupsSequence"), number - 1),
        (ds.get("SharedFunctionalGroupsSequence"), 0),
    ):
        if groups and index < len(groups):
            macro = groups[index].get(_GROUPS[keyword])
            if macro:
                sources.append(macro[0])
    sources.append(ds)
    for source in sources:
        value = source.get(keyword)
        if isinstance(value, (list, tuple, MultiValue)):
            value = value[0] if len(value) else None
        if value not in (None, ""):
            try:
                return float(value)
            except (TypeError, ValueError):
                continue  # an unreadable value: the next source, or the default
    return default


def _viewport(value: str) -> tuple[int, int]:
    sizes = value.split(",")
    if len(sizes) < 2:
        raise BadRequest("viewport must be width,height")
    return integer("viewport width", sizes[0], 1, MAX_SIZE), integer(
        "viewport height", sizes[1], 1, MAX_SIZE
    )


def _thumbnail_media_type(request: Request) -> str:
    """A thumbnail's media type: the rendered type the Accept header names, also as the type
    of a multipart/related range; else JPEG, never a 406. A thumbnail is the server's choice of
    representative image (PS3.18 thumbnail resources, Supplement 203), and viewers ask for it
    in odd ways: OHIF's bulk-data path sends ``multipart/related; type="image/jpeg"``, and
    ``<img>`` elements send ``image/avif,image/webp,...`` or nothing at all."""
    for media, named in accept_ranges(request.headers.get("accept")):
        kind = named.get("type", "").lower() if media == "multipart/related" else media
        if kind in RENDERED_MEDIA:
            return kind
    return "image/jpeg"


def _rendered_media_type(accept: str | None) -> str:
    for media, _named in accept_ranges(accept):
        if media in ("image/jpeg", "image/*", "*/*"):
            return "image/jpeg"
        if media in RENDERED_MEDIA:
            return media
    raise NotAcceptable("rendered images come as image/jpeg, image/png or image/gif")
