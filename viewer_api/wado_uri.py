"""WADO-URI (PS3.18 chapter 9): ``GET /wado?requestType=WADO&studyUID=...&objectUID=...``.

The links EMRs and older viewers hold. Served by the same code as WADO-RS: the instance as
stored or transcoded (viewer_api.transcode), or one frame rendered (viewer_api.render), with
the same bearer-token authentication.
"""

from __future__ import annotations

from io import BytesIO

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydicom import dcmread
from starlette.datastructures import QueryParams

from pacs.ingest import Archive
from pacs.search import Level
from pacs.uids import is_valid_uid
from viewer_api import render
from viewer_api.auth import Reader
from viewer_api.dicomjson import accept_ranges
from viewer_api.frames import frame_count
from viewer_api.parameters import integer
from viewer_api.problems import BadRequest, NotAcceptable
from viewer_api.transcode import target_syntax, transcode
from viewer_api.wado import stored_instances, uid_path

router = APIRouter(tags=["WADO-URI"])

DICOM = "application/dicom"
# Parameters that only make sense for a rendered image (PS3.18 9.1.2.x: not with DICOM);
# the unsupported ones (NOT_IMPLEMENTED) are refused before these are looked at.
RENDERING = ("rows", "columns", "windowCenter", "windowWidth", "frameNumber", "imageQuality")
# Parameters of the standard this archive does not implement: refused, never ignored.
NOT_IMPLEMENTED = ("anonymize", "annotation", "region", "presentationUID", "presentationSeriesUID")


@router.get("/wado")
def wado(request: Request, _: Reader) -> Response:
    """One instance, as ``application/dicom`` or rendered as ``image/jpeg``, ``png`` or ``gif``.

    Errors: a missing or invalid parameter is a 400 naming it, an unknown object a 404, a
    content type we cannot produce a 406.
    """
    params = request.query_params
    if params.get("requestType") != "WADO":
        raise BadRequest("requestType must be WADO")
    uids = {}
    for name, keyword in (
        ("studyUID", "StudyInstanceUID"),
        ("seriesUID", "SeriesInstanceUID"),
        ("objectUID", "SOPInstanceUID"),
    ):
        value = params.get(name)
        if not value or not is_valid_uid(value):
            raise BadRequest(f"{name} must be a UID")
        uids[keyword] = value
    for name in NOT_IMPLEMENTED:
        if name in params:
            raise BadRequest(f"{name} is not supported by this archive")
    media = _content_type(params.get("contentType"))
    if media == DICOM:
        return _dicom(request, uids, params.get("transferSyntax"))
    if "transferSyntax" in params:
        raise BadRequest("transferSyntax applies to contentType=application/dicom only")
    return _rendered(request, uids, media)


def _dicom(request: Request, uids: dict[str, str], wanted: str | None) -> Response:
    """The instance in Explicit VR Little Endian, or the transferSyntax asked for."""
    for name in RENDERING:
        if name in request.query_params:
            raise BadRequest(f"{name} does not apply to contentType=application/dicom")
    if wanted is not None and wanted != "*" and not is_valid_uid(wanted):
        raise BadRequest("transferSyntax must be a transfer syntax UID")
    [stored] = stored_instances(request, Level.IMAGE, _path(uids))
    syntax = target_syntax(stored.TransferSyntaxUID, wanted)
    archive: Archive = request.app.state.archive
    data = transcode(archive.blobs.get(stored.blob_key), stored.TransferSyntaxUID, syntax)
    return Response(data, media_type=f"{DICOM}; transfer-syntax={syntax}")


def _rendered(request: Request, uids: dict[str, str], media: str) -> Response:
    """One frame rendered by the WADO-RS rendering code."""
    params = request.query_params
    [stored] = stored_instances(request, Level.IMAGE, _path(uids))
    archive: Archive = request.app.state.archive
    ds = dcmread(BytesIO(archive.blobs.get(stored.blob_key)))
    if "PixelData" not in ds:
        raise NotAcceptable(f"the object has no pixel data: ask for contentType={DICOM}")
    frame = params.get("frameNumber")
    number = 1 if frame is None else integer("frameNumber", frame, 1, frame_count(ds))
    window = None
    if "windowCenter" in params or "windowWidth" in params:
        if not params.get("windowCenter") or not params.get("windowWidth"):
            raise BadRequest("windowCenter and windowWidth come together")
        window = render.parse_window(params["windowCenter"], params["windowWidth"])
    size = (_size(params, "columns"), _size(params, "rows"))
    quality = render.parse_quality(params.get("imageQuality"), "imageQuality")
    image = render.render(ds, number, window, size)
    return Response(render.encode(image, media, quality), media_type=media)


def _content_type(value: str | None) -> str:
    """The first content type of the list we can produce (image/jpeg when not said)."""
    if value is None:
        return "image/jpeg"  # PS3.18 9.1.2.1.x: the default for single-frame images
    for media, _named in accept_ranges(value):  # a list with q-values, as an Accept header
        if media in (DICOM, *render.RENDERED_MEDIA):
            return media
        if media in ("image/*", "*/*"):
            return "image/jpeg"
    raise NotAcceptable(
        f"contentType {value[:100]!r}: objects come as {DICOM}, " + ", ".join(render.RENDERED_MEDIA)
    )


def _size(params: QueryParams, name: str) -> int | None:
    value = params.get(name)
    return None if value is None else integer(name, value, 1, render.MAX_SIZE)


def _path(uids: dict[str, str]) -> dict[str, str]:
    return uid_path(uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"])
