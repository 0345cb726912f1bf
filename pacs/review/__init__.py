"""Radiologist review of a study's AI findings: confirm, reject, correct, add, sign.

The domain (states, actions, errors) is in ``model``; ``read`` reads a review, ``store``
changes it; the centre of an
edited nodule is checked against the analysed volume (``geometry``), read from the archive
(``stored``). Building and storing the signed SR is the caller's (it needs ``inference``): see
``viewer_api.signing``.
"""

from pacs.review.geometry import VolumeBounds
from pacs.review.model import (
    ActionKind,
    ActionRecord,
    AddNodule,
    AnalysedRun,
    Confirm,
    Correct,
    Decision,
    Edit,
    InvalidEdit,
    NotReviewable,
    NotSignable,
    Origin,
    Point,
    Reject,
    Review,
    ReviewedFinding,
    ReviewError,
    ReviewStatus,
    SetImpression,
    SetLungRads,
    SignedReport,
    StaleVersion,
    UnknownFinding,
)
from pacs.review.read import check_signable, load_review, signed_reports
from pacs.review.store import apply_edit, edit_review, record_signature
from pacs.review.stored import (
    discard_instance,
    facility_of_series,
    series_headers,
    stored_dataset,
)

__all__ = [
    "ActionKind",
    "ActionRecord",
    "AddNodule",
    "AnalysedRun",
    "Confirm",
    "Correct",
    "Decision",
    "Edit",
    "InvalidEdit",
    "NotReviewable",
    "NotSignable",
    "Origin",
    "Point",
    "Reject",
    "Review",
    "ReviewError",
    "ReviewStatus",
    "ReviewedFinding",
    "SetImpression",
    "SetLungRads",
    "SignedReport",
    "StaleVersion",
    "UnknownFinding",
    "VolumeBounds",
    "apply_edit",
    "check_signable",
    "discard_instance",
    "edit_review",
    "facility_of_series",
    "load_review",
    "record_signature",
    "series_headers",
    "signed_reports",
    "stored_dataset",
]
