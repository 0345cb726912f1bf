"""The review's domain: states, decisions, the actions a radiologist takes, and its errors.

::

    ArchiveError
    └── ReviewError
        ├── NotReviewable      the study has no analysed AI run to review (409)
        ├── StaleVersion       the review changed since the client read it (409)
        ├── UnknownFinding     no finding with that tracking UID in the review (404)
        ├── InvalidEdit        a value that cannot be right: size, centre, category (400)
        └── NotSignable        pending findings, or nothing changed since the last signature
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pacs.errors import ArchiveError
from pacs.lung_rads import Suggestion, is_valid_category

#: Diameters above this are refused as typing errors: a lung nodule is at most 30 mm by
#: definition (larger is a mass, Fleischner Society glossary), and a mass a radiologist adds
#: still fits well within it.
MAX_DIAMETER_MM = 100.0
MAX_IMPRESSION = 10_000
MAX_REASON = 1_000


class ReviewError(ArchiveError):
    """Base of the review's refusals; nothing was changed when one is raised."""


class NotReviewable(ReviewError):
    """The study has no AI run that analysed a series, so there is nothing to review."""


class StaleVersion(ReviewError):
    """The version the client saw is not the current one (another radiologist acted)."""

    @classmethod
    def behind(cls, current: int | None, seen: int) -> StaleVersion:
        return cls(
            f"the review is at version {current}, not {seen}: someone acted meanwhile; reload it"
        )


class UnknownFinding(ReviewError):
    """No finding with that tracking UID in this review."""


class InvalidEdit(ReviewError):
    """A value outside what can be right (diameter, centre, category, text length)."""


class NotSignable(ReviewError):
    """Signing is refused: findings still pending, or nothing changed since the signature."""

    def __init__(self, reason: str, pending: list[str] | None = None) -> None:
        super().__init__(reason)
        self.pending = pending or []


class ReviewStatus(enum.StrEnum):
    """Where a study's review stands. ``in_review`` with revision > 0 is an amendment."""

    UNREAD = "unread"  # no review row yet
    IN_REVIEW = "in_review"
    FINAL = "final"


class Decision(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"


class Origin(enum.StrEnum):
    AI = "ai"
    RADIOLOGIST = "radiologist"


class ActionKind(enum.StrEnum):
    CONFIRM = "confirm"
    REJECT = "reject"
    CORRECT = "correct"
    ADD = "add"
    IMPRESSION = "impression"
    LUNG_RADS = "lung_rads"
    SIGN = "sign"


@dataclass(frozen=True)
class Point:
    """A centre in DICOM patient coordinates (LPS), mm."""

    x: float
    y: float
    z: float


@dataclass(frozen=True)
class ReviewedFinding:
    """A finding as reviewed: an AI finding carried over by tracking UID, or one added."""

    tracking_uid: str
    origin: Origin
    decision: Decision
    reason: str | None
    centre: Point
    diameter_mm: float
    probability: float | None  # the AI's; None for a nodule the radiologist added


@dataclass(frozen=True)
class ActionRecord:
    """One action, kept: the review version it produced, when, who, what."""

    version: int
    at: datetime
    actor: str
    action: ActionKind
    tracking_uid: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class SignedReport:
    """What a signature covered: the content of the signed SR, kept for FHIR and audit."""

    revision: int
    SOPInstanceUID: str
    SeriesInstanceUID: str
    signed_by: str
    signed_at: datetime
    impression: str
    lung_rads: str
    lung_rads_note: str
    nodules: list[ReviewedFinding]
    #: Each nodule's number in the review ("Nodule n" in the SR; AI findings keep theirs,
    #: so a rejected one leaves a gap rather than renumbering the rest).
    numbers: list[int]
    #: The CT series the review's coordinates and the SR refer to.
    analysed_series: str


@dataclass(frozen=True)
class AnalysedRun:
    """The AI run a review is of: the series it analysed and the SR it wrote (the run's id is
    None once the run row is gone: its job ran again)."""

    id: int | None
    SeriesInstanceUID: str
    sr_sop_instance_uid: str | None


@dataclass(frozen=True)
class Review:
    """A study's review as the radiologist sees it (``UNREAD``: nobody acted yet)."""

    StudyInstanceUID: str
    status: ReviewStatus
    version: int
    revision: int
    run: AnalysedRun | None
    findings: list[ReviewedFinding]
    impression: str
    lung_rads: str | None  # the radiologist's category, when set
    suggestion: Suggestion
    signed: SignedReport | None
    history: list[ActionRecord]
    #: A newer AI run than the one reviewed exists (its findings are not in this review).
    newer_run: int | None = None

    @property
    def amending(self) -> bool:
        return self.status == ReviewStatus.IN_REVIEW and self.revision > 0

    @property
    def pending(self) -> list[str]:
        return [f.tracking_uid for f in self.findings if f.decision == Decision.PENDING]

    @property
    def reported(self) -> list[ReviewedFinding]:
        """The nodules a signature reports: the confirmed ones (added nodules are confirmed)."""
        return [f for f in self.findings if f.decision == Decision.CONFIRMED]


# Actions: each valid on construction (a bad value raises InvalidEdit before anything runs).


def _diameter(value: float) -> float:
    if not math.isfinite(value) or not 0 < value <= MAX_DIAMETER_MM:
        raise InvalidEdit(
            f"diameter {value!r} mm is not possible: it must be > 0 and <= {MAX_DIAMETER_MM:g} mm"
        )
    return value


def _point(centre: Point) -> Point:
    if not all(math.isfinite(v) for v in (centre.x, centre.y, centre.z)):
        raise InvalidEdit("the centre's coordinates must be finite numbers")
    return centre


@dataclass(frozen=True)
class Confirm:
    tracking_uid: str
    kind = ActionKind.CONFIRM


@dataclass(frozen=True)
class Reject:
    tracking_uid: str
    reason: str | None = None
    kind = ActionKind.REJECT

    def __post_init__(self) -> None:
        if self.reason is not None:
            _text(self.reason, "reason", MAX_REASON)


@dataclass(frozen=True)
class Correct:
    tracking_uid: str
    diameter_mm: float | None = None
    centre: Point | None = None
    kind = ActionKind.CORRECT

    def __post_init__(self) -> None:
        if self.diameter_mm is None and self.centre is None:
            raise InvalidEdit("a correction needs a diameter, a centre, or both")
        if self.diameter_mm is not None:
            _diameter(self.diameter_mm)
        if self.centre is not None:
            _point(self.centre)


@dataclass(frozen=True)
class AddNodule:
    centre: Point
    diameter_mm: float
    kind = ActionKind.ADD

    def __post_init__(self) -> None:
        _point(self.centre)
        _diameter(self.diameter_mm)


@dataclass(frozen=True)
class SetImpression:
    text: str
    kind = ActionKind.IMPRESSION

    def __post_init__(self) -> None:
        _text(self.text, "impression", MAX_IMPRESSION)


@dataclass(frozen=True)
class SetLungRads:
    category: str | None  # None: back to the suggestion
    kind = ActionKind.LUNG_RADS

    def __post_init__(self) -> None:
        if self.category is not None and not is_valid_category(self.category):
            raise InvalidEdit(
                f"{self.category!r} is not a Lung-RADS v2022 category "
                "(0, 1, 2, 3, 4A, 4B, 4X, optionally with the S modifier, e.g. 4AS)"
            )


Edit = Confirm | Reject | Correct | AddNodule | SetImpression | SetLungRads


def _text(value: str, name: str, limit: int) -> None:
    """Free text a radiologist wrote: bounded, and without NUL (no SQL text column takes it)."""
    if len(value) > limit:
        raise InvalidEdit(f"the {name} is longer than {limit} characters")
    if "\x00" in value:
        raise InvalidEdit(f"the {name} contains a NUL character")
