"""Request and response bodies of the review routes (viewer_api.review)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pacs.lung_rads import CAVEAT
from pacs.review import Review
from pacs.review.model import MAX_IMPRESSION, MAX_REASON

MAX_VERSION = 2**31 - 1


# Request bodies.


class Body(BaseModel):
    """What every action carries: the version seen (unless sent as If-Match)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    version: int | None = Field(
        default=None,
        ge=0,
        le=MAX_VERSION,
        description="The review version last seen (or send it as If-Match).",
    )


class Centre(BaseModel):
    """A point in DICOM patient coordinates (LPS), mm."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    x: float
    y: float
    z: float


class VersionBody(Body):
    """Confirm and sign carry nothing but the version."""


class RejectBody(Body):
    reason: str | None = Field(default=None, max_length=MAX_REASON)


class CorrectBody(Body):
    diameter_mm: float | None = Field(default=None, description="The corrected mean diameter")
    centre: Centre | None = None


class AddBody(Body):
    centre: Centre
    diameter_mm: float


class ImpressionBody(Body):
    text: str = Field(max_length=MAX_IMPRESSION)


class LungRadsBody(Body):
    category: str | None = Field(
        description="0, 1, 2, 3, 4A, 4B or 4X, optionally with the S modifier (e.g. 4AS); "
        "null returns to the suggestion",
        max_length=8,
    )


# Responses.


class FindingOut(BaseModel):
    tracking_uid: str
    origin: str = Field(description="ai or radiologist")
    decision: str = Field(description="pending, confirmed or rejected")
    reason: str | None
    centre: Centre
    coordinate_system: str = "DICOM patient (LPS), mm"
    diameter_mm: float
    probability: float | None


class AssumptionOut(BaseModel):
    input: str = Field(description="what the Lung-RADS table needed and the study lacked")
    assumed: str = Field(description="what was assumed instead")


class SuggestionOut(BaseModel):
    category: str
    driving_nodule: str | None = Field(description="tracking UID of the nodule that decided")
    diameter_mm: float | None
    rule: str
    row: str | None = Field(
        default=None, description="the Lung-RADS v2022 table row that fired (pacs.lung_rads)"
    )
    context: str | None = Field(
        default=None, description="how the driving nodule was read: baseline, new, growing, stable"
    )
    compared: bool = Field(default=False, description="whether a prior CT was compared")
    assumptions: list[AssumptionOut] = Field(default_factory=list)
    caveat: str = CAVEAT


class LungRadsOut(BaseModel):
    suggestion: SuggestionOut
    category: str | None = Field(description="the radiologist's category, when set")
    reported: str = Field(description="what a signature reports: the category, else suggestion")


class SignedOut(BaseModel):
    revision: int
    SOPInstanceUID: str
    SeriesInstanceUID: str
    signed_by: str
    signed_at: datetime


class ActionOut(BaseModel):
    version: int
    at: datetime
    actor: str
    action: str
    tracking_uid: str | None
    detail: dict[str, Any]


class ReviewOut(BaseModel):
    StudyInstanceUID: str
    status: str = Field(description="unread, in_review or final")
    amending: bool = Field(description="in review after a signature: the next one amends")
    version: int
    revision: int = Field(description="signatures so far")
    ai_run: int | None
    SeriesInstanceUID: str | None = Field(description="the analysed series")
    newer_ai_run: int | None = Field(description="a newer AI run, not in this review")
    findings: list[FindingOut]
    pending: list[str]
    impression: str
    lung_rads: LungRadsOut
    signed: SignedOut | None
    history: list[ActionOut]


def review_out(r: Review) -> ReviewOut:
    s = r.suggestion
    return ReviewOut(
        StudyInstanceUID=r.StudyInstanceUID,
        status=r.status.value,
        amending=r.amending,
        version=r.version,
        revision=r.revision,
        ai_run=None if r.run is None else r.run.id,
        SeriesInstanceUID=None if r.run is None else r.run.SeriesInstanceUID,
        newer_ai_run=r.newer_run,
        findings=[
            FindingOut(
                tracking_uid=f.tracking_uid,
                origin=f.origin.value,
                decision=f.decision.value,
                reason=f.reason,
                centre=Centre(x=f.centre.x, y=f.centre.y, z=f.centre.z),
                diameter_mm=f.diameter_mm,
                probability=f.probability,
            )
            for f in r.findings
        ],
        pending=r.pending,
        impression=r.impression,
        lung_rads=LungRadsOut(
            suggestion=SuggestionOut(
                category=s.category,
                driving_nodule=None if s.driving_nodule is None else s.driving_nodule.tracking_uid,
                diameter_mm=None if s.driving_nodule is None else s.driving_nodule.diameter_mm,
                rule=s.rule,
                row=s.row,
                context=None if s.context is None else s.context.value,
                compared=s.compared,
                assumptions=[
                    AssumptionOut(input=a.input, assumed=a.assumed) for a in s.assumptions
                ],
                caveat=s.caveat,
            ),
            category=r.lung_rads,
            reported=r.lung_rads or s.category,
        ),
        signed=None
        if r.signed is None
        else SignedOut(
            revision=r.signed.revision,
            SOPInstanceUID=r.signed.SOPInstanceUID,
            SeriesInstanceUID=r.signed.SeriesInstanceUID,
            signed_by=r.signed.signed_by,
            signed_at=r.signed.signed_at,
        ),
        history=[
            ActionOut(
                version=a.version,
                at=a.at,
                actor=a.actor,
                action=a.action.value,
                tracking_uid=a.tracking_uid,
                detail=a.detail,
            )
            for a in r.history
        ],
    )
