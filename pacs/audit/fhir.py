"""An audit event as a FHIR R4 AuditEvent resource, in the shapes of IHE BALP (Basic Audit
Log Patterns): ``type``/``subtype`` and ``action`` from the DICOM audit codes, the requesting
``agent`` (who, requestor, network address), the ``source`` (the archive), the ``entity``
(the patient, the study) and the ``outcome``."""

from __future__ import annotations

import json
from typing import Any

from pacs.audit.codes import ACTION_SYSTEM, DCM, EVENT_CODES
from pacs.audit.model import AuditOutcome, StoredEvent

DICOM_UID = "urn:dicom:uid"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_NETWORK_IP = "2"  # AuditEvent.agent.network.type: IP address


def audit_event_resource(
    stored: StoredEvent, source_id: str, patient: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The AuditEvent of *stored*.

    Parameters
    ----------
    stored : StoredEvent
    source_id : str
        The archive's name as the audit source (``AuditEvent.source.observer``).
    patient : dict, optional
        The Reference to the event's patient (``{"reference": "Patient/<id>", ...}``); None:
        by identifier (PatientID), when the event names one.
    """
    event = stored.event
    codes = EVENT_CODES[event.action]
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(stored.id),
        "type": {"system": DCM, "code": codes.event_id.code, "display": codes.event_id.display},
        "subtype": [{"system": ACTION_SYSTEM, "code": event.action.value}],
        "action": codes.action_code,
        "recorded": event.at.isoformat(timespec="microseconds"),
        "outcome": event.outcome.value,
        "agent": [_requestor(stored), _archive(source_id)],
        "source": {
            "observer": {"display": source_id},
            "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
    }
    if codes.event_type is not None:
        resource["subtype"].insert(
            0, {"system": DCM, "code": codes.event_type.code, "display": codes.event_type.display}
        )
    if event.facility:
        resource["source"]["site"] = event.facility
    if event.outcome is not AuditOutcome.SUCCESS and event.outcome_reason:
        resource["outcomeDesc"] = event.outcome_reason
    entities = _entities(stored, patient)
    if entities:
        resource["entity"] = entities
    return resource


def _requestor(stored: StoredEvent) -> dict[str, Any]:
    event = stored.event
    agent: dict[str, Any] = {
        "type": {
            "coding": [
                {"system": _PARTICIPATION, "code": "IRCP", "display": "information recipient"}
            ]
        },
        "requestor": True,
    }
    if event.subject:
        agent["who"] = {"identifier": {"value": event.subject}, "display": event.subject}
    elif event.ae_title:
        agent["who"] = {"display": event.ae_title}
    if event.ae_title:
        agent["altId"] = event.ae_title
    if event.roles:
        agent["role"] = [{"text": role} for role in event.roles]
    if event.token_id:
        agent["policy"] = [f"urn:pacs-ai:token:{event.token_id}"]
    if event.remote_address:
        agent["network"] = {"address": event.remote_address, "type": _NETWORK_IP}
    return agent


def _archive(source_id: str) -> dict[str, Any]:
    return {
        "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
        "who": {"display": source_id},
        "requestor": False,
    }


def _entities(stored: StoredEvent, patient: dict[str, Any] | None) -> list[dict[str, Any]]:
    event = stored.event
    entities: list[dict[str, Any]] = []
    if event.PatientID is not None:
        what = patient or {"identifier": {"value": event.PatientID or "(none)"}}
        entities.append(
            {
                "what": what,
                "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    if event.StudyInstanceUID:
        study: dict[str, Any] = {
            "what": {
                "identifier": {"system": DICOM_UID, "value": f"urn:oid:{event.StudyInstanceUID}"}
            },
            "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": _OBJECT_ROLE, "code": "3", "display": "Report"},
        }
        details = [
            {"type": keyword, "valueString": uid}
            for keyword, uid in (
                ("SeriesInstanceUID", event.SeriesInstanceUID),
                ("SOPInstanceUID", event.SOPInstanceUID),
            )
            if uid
        ]
        if details:
            study["detail"] = details
        entities.append(study)
    if event.detail:
        entities.append(
            {
                "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": _OBJECT_ROLE, "code": "24", "display": "Query"},
                "description": "request detail",
                "detail": [
                    {"type": "detail", "valueString": json.dumps(event.detail, sort_keys=True)}
                ],
            }
        )
    return entities
