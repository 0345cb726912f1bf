"""What one audit event says: who, what, when, from where, with what outcome.

The action terms are ours; :mod:`pacs.audit.codes` maps each to the DICOM audit codes
(PS3.15 A.5.3, PS3.16 CID 400-405) that the FHIR and DICOM renderings carry.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class AuditAction(enum.StrEnum):
    """What was done to patient data (or tried: a login that failed)."""

    QUERY = "query"  # C-FIND, QIDO-RS, FHIR searches, worklists
    RETRIEVE = "retrieve"  # C-MOVE, C-GET, WADO-RS/URI, frames, rendered, FHIR reads
    STORE = "store"  # one instance stored or replaced (C-STORE, STOW-RS, AI results, reports)
    EXPORT = "export"  # `pacs export`, one study
    REVIEW = "review"  # a radiologist's review action (confirm, reject, edit...)
    SIGN = "sign"  # a signed report
    SHARE = "share"  # a sharing grant given or revoked
    DELETE = "delete"  # instances removed
    LOGIN_FAILURE = "login_failure"  # a request without a valid token
    AUDIT_READ = "audit_read"  # the audit trail itself was read (PS3.15 "Audit Log Used")


class AuditOutcome(enum.StrEnum):
    """RFC 3881 / PS3.15 EventOutcomeIndicator: 0 success, 4 minor failure (refused, bad
    request), 8 serious failure (the archive's own error)."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"
    SERIOUS_FAILURE = "8"


@dataclass(frozen=True)
class AuditEvent:
    """One audit event, valid on construction.

    Attributes
    ----------
    action, outcome : AuditAction, AuditOutcome
    at : datetime
        When, timezone-aware (stored in UTC).
    subject : str, optional
        The token's subject (HTTP), or None (DIMSE peers are named by *ae_title*; a failed
        login has no subject).
    roles : tuple of str
        The token's roles.
    facility : str, optional
        The facility the actor speaks for, or the data belongs to.
    ae_title : str, optional
        The calling AE title (DIMSE).
    token_id : str, optional
        The token's jti.
    remote_address : str, optional
        Where the request came from.
    PatientID, IssuerOfPatientID : str, optional
    StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID : str, optional
    outcome_reason : str, optional
        Why it failed (ours, never a stack trace).
    detail : dict
        More, as JSON: the query keys, the matched studies, the route, the HTTP status...
    """

    action: AuditAction
    outcome: AuditOutcome = AuditOutcome.SUCCESS
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = None
    roles: tuple[str, ...] = ()
    facility: str | None = None
    ae_title: str | None = None
    token_id: str | None = None
    remote_address: str | None = None
    PatientID: str | None = None
    IssuerOfPatientID: str | None = None
    StudyInstanceUID: str | None = None
    SeriesInstanceUID: str | None = None
    SOPInstanceUID: str | None = None
    outcome_reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("an audit event's time must be timezone-aware")
        object.__setattr__(self, "action", AuditAction(self.action))
        object.__setattr__(self, "outcome", AuditOutcome(self.outcome))
        object.__setattr__(self, "roles", tuple(sorted(self.roles)))
        json.dumps(self.detail)  # JSON or nothing: fails here, not in the transaction


@dataclass(frozen=True)
class StoredEvent:
    """An audit event as the chain holds it: its place (partition, seq) and hashes."""

    id: int
    partition: str
    seq: int
    event: AuditEvent
    prev_hash: str
    hash: str
