"""A radiologist's review of the AI findings: ``/api/v1/studies/{study}/review``.

``GET`` the review, then ``POST`` one action at a time under it: confirm, reject, correct a
finding, add a nodule, set the impression, set the Lung-RADS category, sign. Each action names
the review ``version`` the client last saw, in the JSON body or as ``If-Match`` (the ``ETag``
of every answer is the version): when someone acted since, the action is refused with 409 and
nothing changes (409 also for a stale If-Match, where HTTP would say 412, so that a client
handles one status however it sent the version). Every action is attributed to the token's
subject and kept in the history.

Acting needs an AI run that analysed a series (else 409): the review is of its findings, and a
centre is checked against that series' volume. Signing needs every AI finding confirmed or
rejected (else 409 naming the pending ones), as a report must say what became of each.

Radiologists and administrators only: the EMR reads the signed report through FHIR, and
modalities have no business here (403 for both, before any body is read).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ValidationError

from pacs.ingest import Archive
from pacs.review import (
    AddNodule,
    Confirm,
    Correct,
    Edit,
    InvalidEdit,
    NotReviewable,
    NotSignable,
    Point,
    Reject,
    Review,
    ReviewError,
    SetImpression,
    SetLungRads,
    StaleVersion,
    UnknownFinding,
    edit_review,
    load_review,
)
from pacs.uids import is_valid_uid
from viewer_api import signing
from viewer_api.auth import Principal, Radiologist
from viewer_api.deps import ArchiveDep, StudyDep
from viewer_api.problems import ApiProblem, BadRequest, Conflict, NotFound
from viewer_api.review_models import (
    MAX_VERSION,
    AddBody,
    Body,
    Centre,
    CorrectBody,
    ImpressionBody,
    LungRadsBody,
    RejectBody,
    ReviewOut,
    VersionBody,
    review_out,
)

router = APIRouter(prefix="/api/v1/studies/{study}/review", tags=["Review"])

_ETAG = re.compile(r'\s*(?:W/)?"?([0-9]{1,10})"?\s*')


def problem(exc: ReviewError) -> ApiProblem:
    """The review's refusals as HTTP problems (the one translation for these routes)."""
    if isinstance(exc, UnknownFinding):
        return NotFound(str(exc))
    if isinstance(exc, InvalidEdit):
        return BadRequest(str(exc))
    if isinstance(exc, NotSignable) and exc.pending:
        return Conflict(f"{exc}: {', '.join(exc.pending)}")
    if isinstance(exc, StaleVersion | NotReviewable | NotSignable):
        return Conflict(str(exc))
    raise TypeError(f"untranslated review error {exc!r}") from exc  # pragma: no cover


B = TypeVar("B", bound=Body)


def _body(model: type[B]) -> Callable[..., Coroutine[Any, Any, B]]:
    """A dependency reading *model* from the JSON body once the caller is known to be a
    reviewer (a body parameter would be parsed before any dependency runs: an EMR token with
    a malformed body would get a 400 instead of its 403)."""

    async def parse(request: Request, _: Radiologist) -> B:
        raw = await request.body()
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise BadRequest(f"invalid request body ({where}): {first['msg']}") from exc

    return parse


def _openapi(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def seen_version(request: Request, body: Body) -> int:
    """The version the client saw: the body's ``version`` or ``If-Match`` (both: they agree)."""
    header = request.headers.get("if-match")
    from_header = None
    if header is not None:
        match = _ETAG.fullmatch(header)
        if match is None or int(match.group(1)) > MAX_VERSION:
            raise BadRequest(f"If-Match {header!r} is not a review version (an ETag)")
        from_header = int(match.group(1))
    if body.version is not None and from_header is not None and body.version != from_header:
        raise BadRequest(f"version {body.version} and If-Match {header!r} disagree")
    seen = body.version if body.version is not None else from_header
    if seen is None:
        raise BadRequest("name the review version you saw: 'version' in the body, or If-Match")
    return seen


def _answer(response: Response, found: Review) -> ReviewOut:
    response.headers["ETag"] = f'"{found.version}"'
    return review_out(found)


@dataclass(frozen=True)
class Reviewing:
    """What every action route works with: who acts (a reviewer: 403 before anything else),
    on which existing study, in which archive, and the request and response it answers."""

    who: Principal
    study: str
    archive: Archive
    request: Request
    response: Response

    def act(self, body: Body, edit: Edit) -> ReviewOut:
        """Apply *edit* to the review at the version *body* (or If-Match) names."""
        seen = seen_version(self.request, body)
        try:
            found = edit_review(self.archive, self.study, seen, self.who.subject, edit)
        except ReviewError as exc:
            raise problem(exc) from exc
        return _answer(self.response, found)


def _reviewing(
    who: Radiologist, study: StudyDep, archive: ArchiveDep, request: Request, response: Response
) -> Reviewing:
    return Reviewing(who, study, archive, request, response)


ReviewingDep = Annotated[Reviewing, Depends(_reviewing)]


def _edit(build: Callable[[], Edit]) -> Edit:
    try:
        return build()
    except InvalidEdit as exc:
        raise BadRequest(str(exc)) from exc


def _tracking_uid(finding: str) -> str:
    if not is_valid_uid(finding):
        raise NotFound(f"no finding {finding!r} in this review")
    return finding


def _point(centre: Centre) -> Point:
    return Point(centre.x, centre.y, centre.z)


@router.get("")
def get_review(
    _: Radiologist, study: StudyDep, archive: ArchiveDep, response: Response
) -> ReviewOut:
    """The study's review: status, version (also the ETag), findings as reviewed, impression,
    Lung-RADS suggestion and category, the signed report, and every action taken."""
    with archive.db.read() as conn:
        found = load_review(conn, study)
    return _answer(response, found)


@router.post("/findings/{finding}/confirm", openapi_extra=_openapi(VersionBody))
def confirm(
    r: ReviewingDep,
    finding: str,
    body: Annotated[VersionBody, Depends(_body(VersionBody))],
) -> ReviewOut:
    """Confirm an AI finding (or a nodule added before): it goes into the report."""
    return r.act(body, Confirm(_tracking_uid(finding)))


@router.post("/findings/{finding}/reject", openapi_extra=_openapi(RejectBody))
def reject(
    r: ReviewingDep,
    finding: str,
    body: Annotated[RejectBody, Depends(_body(RejectBody))],
) -> ReviewOut:
    """Reject a finding, with an optional reason: it stays out of the report."""
    return r.act(body, _edit(lambda: Reject(_tracking_uid(finding), body.reason)))


@router.post("/findings/{finding}/correct", openapi_extra=_openapi(CorrectBody))
def correct(
    r: ReviewingDep,
    finding: str,
    body: Annotated[CorrectBody, Depends(_body(CorrectBody))],
) -> ReviewOut:
    """Correct a finding's diameter and/or centre (the centre must lie in the analysed CT)."""
    centre = None if body.centre is None else _point(body.centre)
    return r.act(body, _edit(lambda: Correct(_tracking_uid(finding), body.diameter_mm, centre)))


@router.post("/findings", openapi_extra=_openapi(AddBody))
def add(
    r: ReviewingDep,
    body: Annotated[AddBody, Depends(_body(AddBody))],
) -> ReviewOut:
    """Add a nodule the AI missed (centre in the analysed CT, diameter); it is confirmed."""
    return r.act(body, _edit(lambda: AddNodule(_point(body.centre), body.diameter_mm)))


@router.post("/impression", openapi_extra=_openapi(ImpressionBody))
def impression(
    r: ReviewingDep,
    body: Annotated[ImpressionBody, Depends(_body(ImpressionBody))],
) -> ReviewOut:
    """Set the free-text impression."""
    return r.act(body, _edit(lambda: SetImpression(body.text)))


@router.post("/lung-rads", openapi_extra=_openapi(LungRadsBody))
def lung_rads(
    r: ReviewingDep,
    body: Annotated[LungRadsBody, Depends(_body(LungRadsBody))],
) -> ReviewOut:
    """Set the Lung-RADS v2022 category (null: report the suggestion)."""
    return r.act(body, _edit(lambda: SetLungRads(body.category)))


@router.post("/sign", openapi_extra=_openapi(VersionBody))
def sign(
    r: ReviewingDep,
    body: Annotated[VersionBody, Depends(_body(VersionBody))],
) -> ReviewOut:
    """Sign: a verified TID 1500 SR of the confirmed and added nodules is stored in the study
    (an amendment after an earlier signature), and the FHIR report becomes final (amended).
    Every AI finding must be confirmed or rejected first (else 409 naming the pending ones)."""
    seen = seen_version(r.request, body)
    try:
        signed = signing.sign(r.archive, r.study, seen, r.who.subject)
    except ReviewError as exc:
        raise problem(exc) from exc
    return _answer(r.response, signed)
