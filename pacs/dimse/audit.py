"""Audit events of DIMSE requests: who (the calling AE title, its address), what (the query
keys, the studies), with what outcome.

A query or retrieve is recorded before any match or instance is sent; when that fails the
request fails too (:class:`~pacs.errors.AuditUnavailable`, answered as Out of Resources).
A refusal is recorded when possible: it is refused whether or not its record is written.
"""

from __future__ import annotations

import logging
from typing import Any

from pacs.audit import AuditAction, AuditEvent, AuditOutcome, record_event
from pacs.errors import IndexUnavailable
from pacs.index import Database

log = logging.getLogger(__name__)
# A C-FIND's audit event lists at most this many matched studies (its count is always there).
LISTED_STUDIES = 100


def request_event(
    event: Any,
    action: AuditAction,
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
    reason: str | None = None,
    studies: list[str] | None = None,
    **detail: Any,
) -> AuditEvent:
    """The audit event of a DIMSE request *event*; the study when exactly one is named."""
    requestor = event.assoc.requestor
    identifier = _keys(event)
    if identifier:
        detail["keys"] = identifier
    if studies is not None:
        detail["studies"] = studies[:LISTED_STUDIES]
    one_study = studies[0] if studies is not None and len(set(studies)) == 1 else None
    return AuditEvent(
        action,
        outcome=outcome,
        ae_title=requestor.ae_title,
        remote_address=requestor.address,
        StudyInstanceUID=one_study,
        outcome_reason=reason,
        detail={"service": _service(event), **detail},
    )


def record_refusal(db: Database, audit_event: AuditEvent) -> None:
    """Record a refused or failed request; a failure to record it is logged (the request is
    refused either way)."""
    try:
        record_event(db, audit_event)
    except IndexUnavailable as exc:
        log.error("refusal of %s not audited: %s", audit_event.ae_title, exc)


def studies_in(keys: dict[str, str]) -> list[str] | None:
    """The Study Instance UIDs a retrieve names (a UID list, PS3.4 C.2.2.2.2), if it names any."""
    named = keys.get("StudyInstanceUID")
    return [uid for uid in named.split("\\") if uid] if named else None


def _keys(event: Any) -> dict[str, str]:
    """The request's identifier as keyword -> value (the values it matched on), if it has one."""
    try:
        identifier = event.identifier
    except Exception:  # C-STORE and C-ECHO have none; a malformed one is reported elsewhere
        return {}
    keys: dict[str, str] = {}
    for element in identifier:
        if element.VR != "SQ" and element.value not in (None, ""):
            keys[element.keyword or str(element.tag)] = str(element.value)
    return keys


def _service(event: Any) -> str:
    return str(getattr(event.event, "name", "")).removeprefix("EVT_")
