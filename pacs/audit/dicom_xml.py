"""An audit event as a DICOM audit message (PS3.15 A.5.1, the RFC 3881 schema as DICOM
restricts it) for a site's SIEM or audit repository.

``pacs audit export`` writes one ``<AuditMessage>`` per line: the framing a syslog
transport (RFC 5424/5425, as PS3.15 A.5 and IHE ATNA send them) carries one message per
record in, and one a log shipper reads line by line.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

from pacs.audit.codes import (
    DESTINATION_ROLE,
    EVENT_CODES,
    PATIENT_NUMBER,
    SOURCE_ROLE,
    STUDY_INSTANCE_UID,
    Code,
)
from pacs.audit.model import AuditAction, AuditOutcome, StoredEvent

# Actions in which the requestor receives the data (its role: destination).
_RECEIVES = {AuditAction.QUERY, AuditAction.RETRIEVE, AuditAction.EXPORT, AuditAction.AUDIT_READ}


def audit_message(stored: StoredEvent, source_id: str) -> ET.Element:
    """The ``AuditMessage`` element of *stored*: EventIdentification, the requesting and the
    archive's ActiveParticipant, AuditSourceIdentification, ParticipantObjectIdentification
    for the patient and the study (and the query, for a query)."""
    event = stored.event
    codes = EVENT_CODES[event.action]
    message = ET.Element("AuditMessage")
    identification = ET.SubElement(
        message,
        "EventIdentification",
        EventActionCode=codes.action_code,
        EventDateTime=event.at.isoformat(timespec="microseconds"),
        EventOutcomeIndicator=event.outcome.value,
    )
    _code(identification, "EventID", codes.event_id, "DCM")
    if codes.event_type is not None:
        _code(identification, "EventTypeCode", codes.event_type, "DCM")
    if event.outcome is not AuditOutcome.SUCCESS and event.outcome_reason:
        ET.SubElement(identification, "EventOutcomeDescription").text = event.outcome_reason

    requestor = ET.SubElement(
        message,
        "ActiveParticipant",
        UserID=event.subject or event.ae_title or "unknown",
        UserIsRequestor="true",
    )
    if event.ae_title:
        requestor.set("AlternativeUserID", f"AETITLES={event.ae_title}")
    if event.token_id:
        requestor.set("UserName", f"token {event.token_id}")
    if event.remote_address:
        requestor.set("NetworkAccessPointID", event.remote_address)
        requestor.set("NetworkAccessPointTypeCode", "2")  # IP address
    role = DESTINATION_ROLE if event.action in _RECEIVES else SOURCE_ROLE
    _code(requestor, "RoleIDCode", role, "DCM")
    archive = ET.SubElement(message, "ActiveParticipant", UserID=source_id, UserIsRequestor="false")
    other = SOURCE_ROLE if role is DESTINATION_ROLE else DESTINATION_ROLE
    _code(archive, "RoleIDCode", other, "DCM")

    source = ET.SubElement(message, "AuditSourceIdentification", AuditSourceID=source_id)
    if event.facility:
        source.set("AuditEnterpriseSiteID", event.facility)
    _code(source, "AuditSourceTypeCode", Code("4", "Application Server"), "RFC-3881")

    if event.PatientID is not None:
        patient = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            ParticipantObjectID=_patient_id(event.PatientID, event.IssuerOfPatientID),
            ParticipantObjectTypeCode="1",  # person
            ParticipantObjectTypeCodeRole="1",  # patient
        )
        _code(patient, "ParticipantObjectIDTypeCode", PATIENT_NUMBER, "RFC-3881")
    if event.StudyInstanceUID:
        study = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            ParticipantObjectID=event.StudyInstanceUID,
            ParticipantObjectTypeCode="2",  # system object
            ParticipantObjectTypeCodeRole="3",  # report
        )
        _code(study, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID, "DCM")
        for keyword in ("SeriesInstanceUID", "SOPInstanceUID"):
            uid = getattr(event, keyword)
            if uid:
                _detail(study, keyword, uid)
    if event.detail:
        query = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            ParticipantObjectID=f"urn:pacs-ai:audit:{stored.id}",
            ParticipantObjectTypeCode="2",
            ParticipantObjectTypeCodeRole="24",  # query
        )
        _code(query, "ParticipantObjectIDTypeCode", Code("110181", "SOP Class UID"), "DCM")
        ET.SubElement(query, "ParticipantObjectQuery").text = _b64(
            json.dumps(event.detail, sort_keys=True)
        )
    return message


def audit_message_xml(stored: StoredEvent, source_id: str) -> str:
    """:func:`audit_message` serialised on one line (no XML declaration: UTF-8 text)."""
    return ET.tostring(audit_message(stored, source_id), encoding="unicode")


def _code(parent: ET.Element, tag: str, code: Code, system_name: str) -> ET.Element:
    # PS3.15 A.5.1: csd-code, codeSystemName, originalText.
    return ET.SubElement(
        parent,
        tag,
        {"csd-code": code.code, "codeSystemName": system_name, "originalText": code.display},
    )


def _detail(parent: ET.Element, name: str, value: str) -> None:
    ET.SubElement(parent, "ParticipantObjectDetail", type=name, value=_b64(value))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _patient_id(PatientID: str, issuer: str | None) -> str:
    # The HL7 CX form PS3.15 A.5.3 suggests: ID^^^issuer.
    return f"{PatientID}^^^{issuer}" if issuer else PatientID
