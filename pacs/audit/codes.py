"""Our audit actions as DICOM audit codes (PS3.15 A.5.3; PS3.16 CID 400 Audit Event ID,
CID 401 Audit Event Type Code, CID 402 Audit Active Participant Role ID, CID 404 Audit
Participant Object ID Type) and RFC 3881 EventActionCode."""

from __future__ import annotations

from dataclasses import dataclass

from pacs.audit.model import AuditAction

#: Code system of the DICOM audit codes ("DCM" in PS3.15 messages).
DCM = "http://dicom.nema.org/resources/ontology/DCM"
#: Code system of our own action terms (the event's subtype, so our terms stay searchable).
ACTION_SYSTEM = "urn:pacs-ai:audit-action"


@dataclass(frozen=True)
class Code:
    code: str
    display: str


@dataclass(frozen=True)
class EventCodes:
    """The EventID, optional EventTypeCode and EventActionCode (C, R, U, D, E) of an action."""

    event_id: Code
    event_type: Code | None
    action_code: str


EVENT_CODES: dict[AuditAction, EventCodes] = {
    AuditAction.QUERY: EventCodes(Code("110112", "Query"), None, "E"),
    AuditAction.RETRIEVE: EventCodes(Code("110104", "DICOM Instances Transferred"), None, "R"),
    AuditAction.STORE: EventCodes(Code("110104", "DICOM Instances Transferred"), None, "C"),
    AuditAction.EXPORT: EventCodes(Code("110106", "Export"), None, "R"),
    AuditAction.REVIEW: EventCodes(Code("110103", "DICOM Instances Accessed"), None, "U"),
    AuditAction.SIGN: EventCodes(Code("110103", "DICOM Instances Accessed"), None, "C"),
    AuditAction.SHARE: EventCodes(Code("110106", "Export"), None, "U"),
    AuditAction.DELETE: EventCodes(Code("110105", "DICOM Study Deleted"), None, "D"),
    AuditAction.LOGIN_FAILURE: EventCodes(
        Code("110114", "User Authentication"), Code("110122", "Login"), "E"
    ),
    AuditAction.AUDIT_READ: EventCodes(Code("110101", "Audit Log Used"), None, "R"),
}

#: CID 402: the requesting participant's role, by whether it sends or receives the data.
SOURCE_ROLE = Code("110153", "Source Role ID")
DESTINATION_ROLE = Code("110152", "Destination Role ID")
#: CID 404 / RFC 3881: participant object id types.
PATIENT_NUMBER = Code("2", "Patient Number")  # RFC 3881 code system
STUDY_INSTANCE_UID = Code("110180", "Study Instance UID")  # DCM

#: The archive's name as an audit source (AuditSourceID, AuditEvent.source.observer).
SOURCE_ID = "PACS-AI"
