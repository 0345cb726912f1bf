"""DIMSE event handlers: plain functions, collaborators bound as handler arguments.

This is the one place where archive errors become DIMSE statuses. Every request that reads
patient data is audited (:mod:`pacs.dimse.audit`) before the data goes out, or fails.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import build_context, evt

from pacs.audit import AuditAction, AuditOutcome, record_event
from pacs.dimse import status, wakeups
from pacs.dimse.access import AccessPolicy, refusal
from pacs.dimse.audit import record_refusal, request_event, studies_in
from pacs.dimse.find import query_from_identifier, response_identifier
from pacs.dimse.scu import MAX_CONTEXTS, UNCOMPRESSED_LE, guard_responses, set_nodelay
from pacs.dimse.sends import Sends
from pacs.errors import (
    AuditUnavailable,
    IndexUnavailable,
    InstanceConflict,
    InvalidInstance,
    InvalidUID,
    QueryError,
    ReplaceRefused,
    SOPClassMismatch,
    StorageUnavailable,
)
from pacs.facilities import Scope
from pacs.index.ae_registry import AEPermission, find_ae
from pacs.ingest import Archive, Source
from pacs.metrics import record_instance
from pacs.search import StoredInstance, count_matches, matching_instances, search

log = logging.getLogger(__name__)

VERIFICATION_CONTEXT = build_context("1.2.840.10008.1.1")
# PS3.5 6.2: ErrorComment (0000,0902) is LO, at most 64 characters.
_ERROR_COMMENT_MAX = 64
# Fixed reasons for failures whose detail is internal (SQL, paths, reprs): logged, never sent.
INDEX_UNAVAILABLE = "index unavailable, retry later"
STORAGE_UNAVAILABLE = "storage unavailable, retry later"
INTERNAL_ERROR = "internal error (logged by the archive)"
AUDIT_UNAVAILABLE = "audit trail unavailable, retry later"


def handle_echo(event: Any) -> int:
    """C-ECHO: the archive is up."""
    return status.SUCCESS


def handle_store(event: Any, archive: Archive, policy: AccessPolicy, sends: Sends) -> Dataset | int:
    """C-STORE: :func:`store_instance`, counted by the status answered (``pacs.metrics``)."""
    reply = store_instance(event, archive, policy, sends)
    record_instance("dimse", reply if isinstance(reply, int) else int(reply.Status))
    return reply


def store_instance(
    event: Any, archive: Archive, policy: AccessPolicy, sends: Sends
) -> Dataset | int:
    """C-STORE: store the received data set through the one ingest path.

    The data set is taken encoded as it arrived (never decoded and re-encoded) in the
    negotiated transfer syntax, for the facility the peer stores into (``pacs.dimse.access``);
    an instance of a study another facility holds is refused (0xC002, InstanceConflict).
    New bytes for a stored instance, or other patient identity for a stored patient or study,
    need the ``replace`` permission: without it they are "Refused: Not Authorized" (0x0124),
    with the reason in the ErrorComment. A stored instance is audited in its index transaction
    (by the ingest path); a refused or failed one here. *sends* learns what the association
    stored and whether a store failed transiently (``pacs.dimse.sends``).
    """
    peer = policy.permitted(event.assoc, AEPermission.STORE)
    if peer is None:
        reply = _failure_status(status.NOT_AUTHORIZED, refusal(AEPermission.STORE))
        _audit_store_failure(event, archive, reply, AuditOutcome.MINOR_FAILURE)
        return reply
    request = event.request
    requestor = event.assoc.requestor
    source = Source(
        "DIMSE",
        calling_ae=requestor.ae_title,
        remote_host=requestor.address,
        facility=peer.facility,
        may_replace=AEPermission.REPLACE in peer.permissions,
    )
    try:
        result = archive.store(
            request.DataSet.getvalue(),
            source,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            announced=(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)),
            # Taken by our receive path (pacs.dimse.receive): hashed as it arrived.
            framed=getattr(request, "framed_digest", None),
        )
    except SOPClassMismatch as exc:
        reply = _failure(status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, exc, source)
    except ReplaceRefused as exc:
        reply = _failure(status.NOT_AUTHORIZED, exc, source, _replace_comment(exc))
    except InstanceConflict as exc:
        reply = _failure(status.CANNOT_UNDERSTAND_CONFLICT, exc, source)
    except InvalidUID as exc:
        reply = _failure(status.CANNOT_UNDERSTAND_INVALID_UID, exc, source)
    except InvalidInstance as exc:
        reply = _failure(status.CANNOT_UNDERSTAND, exc, source)
    except StorageUnavailable as exc:
        sends.failed(event.assoc)
        reply = _failure(status.OUT_OF_RESOURCES, exc, source, STORAGE_UNAVAILABLE)
    except IndexUnavailable as exc:
        sends.failed(event.assoc)
        # The audit trail lives in that index: the failure is logged, not recorded.
        return _failure(status.OUT_OF_RESOURCES, exc, source, INDEX_UNAVAILABLE)
    except Exception as exc:
        log.exception("unexpected error storing from %s", source.calling_ae)
        reply = _failure(status.PROCESSING_FAILURE, exc, source, INTERNAL_ERROR)
    else:
        sends.stored(event.assoc, result.StudyInstanceUID)
        return status.SUCCESS
    serious = reply.Status in (status.OUT_OF_RESOURCES, status.PROCESSING_FAILURE)
    outcome = AuditOutcome.SERIOUS_FAILURE if serious else AuditOutcome.MINOR_FAILURE
    _audit_store_failure(event, archive, reply, outcome)
    return reply


def _audit_store_failure(
    event: Any, archive: Archive, reply: Dataset, outcome: AuditOutcome
) -> None:
    audit_event = request_event(
        event,
        AuditAction.STORE,
        outcome,
        reply.ErrorComment,
        status=f"0x{reply.Status:04X}",
        SOPInstanceUID=str(event.request.AffectedSOPInstanceUID),
    )
    record_refusal(archive.db, audit_event)


def handle_find(event: Any, archive: Archive, limit: int, policy: AccessPolicy) -> Iterator[Any]:
    """C-FIND: pending responses from the one search of the index in the peer's scope, then
    the final status. Each match names the AE title the peer called as its Retrieve AE Title.

    At most *limit* matches are returned. When more match, the final status is not Success
    (PS3.4 C.4.1.1.4: "Matching is complete") but Refused: Out of Resources (0xA700), whose
    Error Comment says how many matched (PS3.7 C.5 allows one only on failures and warnings);
    the peer keeps the pending responses it received and may narrow its query.
    """
    peer = policy.permitted(event.assoc, AEPermission.FIND)
    if peer is None:
        reason = refusal(AEPermission.FIND)
        failed = request_event(event, AuditAction.QUERY, AuditOutcome.MINOR_FAILURE, reason)
        record_refusal(archive.db, failed)
        yield _failure_status(status.NOT_AUTHORIZED, reason), None
        return
    model = str(event.request.AffectedSOPClassUID)
    calling_ae = event.assoc.requestor.ae_title
    try:
        query = query_from_identifier(event.identifier, model, limit, peer.scope)
        with archive.db.read() as conn:
            matches = list(search(conn, query))
            matched = count_matches(conn, query) if len(matches) >= limit else len(matches)
        # Audited before the first match goes out (AuditUnavailable: nothing is sent).
        studies = [str(m["StudyInstanceUID"]) for m in matches if m.get("StudyInstanceUID")]
        audited = request_event(
            event, AuditAction.QUERY, studies=studies, level=query.level.value, matches=matched
        )
        record_event(archive.db, audited)
    except QueryError as exc:
        log.warning("C-FIND from %s refused: %s", calling_ae, exc)
        failed = request_event(event, AuditAction.QUERY, AuditOutcome.MINOR_FAILURE, str(exc))
        record_refusal(archive.db, failed)
        yield _failure_status(status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)), None
        return
    except AuditUnavailable as exc:
        log.error("C-FIND from %s failed: %s", calling_ae, exc)
        yield _failure_status(status.OUT_OF_RESOURCES, AUDIT_UNAVAILABLE), None
        return
    except IndexUnavailable as exc:
        log.warning("C-FIND from %s failed: %s", calling_ae, exc)
        yield _failure_status(status.OUT_OF_RESOURCES, INDEX_UNAVAILABLE), None
        return
    except Exception:
        log.exception("C-FIND from %s failed", calling_ae)
        yield _failure_status(status.PROCESSING_FAILURE, INTERNAL_ERROR), None
        return
    for match in matches:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        response = response_identifier(event.identifier, query.level, match)
        response.RetrieveAETitle = peer.called_ae_title
        yield status.PENDING, response
    if matched > len(matches):
        log.warning(
            "C-FIND from %s: %d matches, only the first %d returned (PACS_MAX_QUERY_RESULTS)",
            calling_ae,
            matched,
            len(matches),
        )
        cut = f"{matched} matches, {len(matches)} returned (result limit)"
        yield _failure_status(status.OUT_OF_RESOURCES, cut), None
        return
    yield status.SUCCESS, None


def handle_move(
    event: Any, archive: Archive, policy: AccessPolicy, tls_client: ssl.SSLContext | None = None
) -> Iterator[Any]:
    """C-MOVE: C-STORE the matching instances in the peer's scope to a destination from the
    AE registry that may receive them (any other is unknown: 0xA801), over TLS with
    *tls_client* when the destination is registered with ``--tls``. Nothing matching in the
    scope is success with no sub-operations, as for a study that does not exist."""
    peer = policy.permitted(event.assoc, AEPermission.RETRIEVE)
    if peer is None:
        # Not reached: the policy accepts no C-MOVE context from such a peer, as pynetdicom's
        # C-MOVE SCP can answer no status but 0xA801 before it associates with a destination.
        yield None, None
        return
    destination = str(event.move_destination).strip()
    try:
        with archive.db.read() as conn:
            target = find_ae(conn, destination)
    except IndexUnavailable as exc:
        log.warning("C-MOVE failed: %s", exc)
        target = None  # pynetdicom's 0xA801 carries no text of ours
    if target is not None and not target.may(AEPermission.DESTINATION):
        log.warning("C-MOVE to %r refused: not permitted as a destination", destination)
        target = None
    if target is not None and target.tls and tls_client is None:
        log.warning("C-MOVE to %r refused: it needs TLS, which is not configured", destination)
        target = None
    if target is None:
        log.warning("C-MOVE to unknown destination %r refused", destination)
        reason = f"move destination {destination!r} refused"
        failed = request_event(event, AuditAction.RETRIEVE, AuditOutcome.MINOR_FAILURE, reason)
        record_refusal(archive.db, failed)
        yield None, None  # pynetdicom answers 0xA801, Move Destination Unknown
        return
    found = _instances(event, archive, peer.scope, destination=destination)
    contexts = _contexts(found) if isinstance(found, list) and found else [VERIFICATION_CONTEXT]
    association: dict[str, Any] = {
        "contexts": contexts,
        "evt_handlers": [(evt.EVT_CONN_OPEN, _prepare_sub_association)],
    }
    if target.tls:
        # The destination's certificate must name the host it is registered with.
        association["tls_args"] = (tls_client, target.host)
    yield target.host, target.port, association
    yield from _sub_operations(event, archive, found)


def handle_get(event: Any, archive: Archive, policy: AccessPolicy) -> Iterator[Any]:
    """C-GET: C-STORE the matching instances in the peer's scope back over the same
    association (none in the scope: success with no sub-operations)."""
    peer = policy.permitted(event.assoc, AEPermission.RETRIEVE)
    if peer is None:
        reason = refusal(AEPermission.RETRIEVE)
        failed = request_event(event, AuditAction.RETRIEVE, AuditOutcome.MINOR_FAILURE, reason)
        record_refusal(archive.db, failed)
        yield from _sub_operations(event, archive, _failure_status(status.NOT_AUTHORIZED, reason))
        return
    accepted = {
        (str(context.abstract_syntax), str(syntax))
        for context in event.assoc.accepted_contexts
        for syntax in context.transfer_syntax
    }
    yield from _sub_operations(event, archive, _instances(event, archive, peer.scope), accepted)


def _instances(
    event: Any, archive: Archive, scope: Scope, **audited: Any
) -> list[StoredInstance] | Dataset:
    """The instances in *scope* a retrieve asks for, or the failure status to answer with;
    the retrieve is audited (with *audited* as detail) before any instance is sent."""
    model = str(event.request.AffectedSOPClassUID)
    calling_ae = event.assoc.requestor.ae_title
    try:
        query = query_from_identifier(event.identifier, model, 1, scope)
        with archive.db.read() as conn:
            found = matching_instances(conn, query)
        retrieve = request_event(
            event,
            AuditAction.RETRIEVE,
            studies=studies_in(query.matching),
            level=query.level.value,
            instances=len(found),
            **audited,
        )
        record_event(archive.db, retrieve)
        return found
    except QueryError as exc:
        log.warning("retrieve from %s refused: %s", calling_ae, exc)
        failed = request_event(event, AuditAction.RETRIEVE, AuditOutcome.MINOR_FAILURE, str(exc))
        record_refusal(archive.db, failed)
        return _failure_status(status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc))
    except AuditUnavailable as exc:
        log.error("retrieve from %s failed: %s", calling_ae, exc)
        return _failure_status(status.OUT_OF_RESOURCES, AUDIT_UNAVAILABLE)
    except IndexUnavailable as exc:
        log.warning("retrieve from %s failed: %s", calling_ae, exc)
        return _failure_status(status.UNABLE_TO_PERFORM_SUBOPERATIONS, INDEX_UNAVAILABLE)
    except Exception:
        log.exception("retrieve from %s failed", calling_ae)
        return _failure_status(status.UNABLE_TO_PERFORM_SUBOPERATIONS, INTERNAL_ERROR)


def _sub_operations(
    event: Any,
    archive: Archive,
    found: list[StoredInstance] | Dataset,
    accepted: set[tuple[str, str]] | None = None,
) -> Iterator[Any]:
    if isinstance(found, Dataset):
        # pynetdicom answers "success" when told of zero sub-operations, so announce one and
        # fail it: the peer gets the failure status (for C-MOVE after the sub-association).
        yield 1
        yield found, None
        return
    yield len(found)
    for stored in found:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        try:
            dataset = dcmread(BytesIO(archive.blobs.get(stored.blob_key)))
        except StorageUnavailable as exc:
            log.warning("retrieve stopped: %s", exc)
            yield _failure_status(status.UNABLE_TO_PERFORM_SUBOPERATIONS, STORAGE_UNAVAILABLE), None
            return
        if accepted is not None:
            _decompress_if_needed(dataset, stored, accepted)
        yield status.PENDING, dataset


def _decompress_if_needed(
    dataset: Dataset, stored: StoredInstance, accepted: set[tuple[str, str]]
) -> None:
    """C-GET: an instance stored compressed, in a syntax the requestor did not accept for its
    SOP class, goes decompressed when it accepted an uncompressed one (most SCUs propose
    only those by default); otherwise it is sent as stored or its sub-operation fails."""
    sop_class, syntax = stored.SOPClassUID, stored.TransferSyntaxUID
    if not UID(syntax).is_compressed or (sop_class, syntax) in accepted:
        return
    if not any((sop_class, uncompressed) in accepted for uncompressed in UNCOMPRESSED_LE):
        return
    try:
        dataset.decompress(generate_instance_uid=False)  # same instance, another encoding
    except Exception as exc:  # no decoder here for it: the sub-operation fails as before
        log.warning("cannot decompress %s (%s) for C-GET: %s", stored.SOPInstanceUID, syntax, exc)


def _contexts(found: list[StoredInstance]) -> list[Any]:
    """Presentation contexts for a C-MOVE sub-association: each SOP class in each transfer
    syntax its instances are stored in, alone, so that an instance goes as stored whenever
    the destination accepts that syntax; then, for uncompressed ones, a context offering
    both uncompressed syntaxes (stored one first) as the fallback pynetdicom converts to.
    At most MAX_CONTEXTS (PS3.8 9.3.2.2), the fallbacks dropped first."""
    stored: dict[str, list[str]] = {}
    for instance in found:
        syntaxes = stored.setdefault(instance.SOPClassUID, [])
        if instance.TransferSyntaxUID not in syntaxes:
            syntaxes.append(instance.TransferSyntaxUID)
    exact, fallback = [], []
    for sop_class, syntaxes in sorted(stored.items()):
        exact += [build_context(sop_class, ts) for ts in syntaxes]
        uncompressed = [ts for ts in syntaxes if ts in UNCOMPRESSED_LE]
        if uncompressed:
            others = sorted(UNCOMPRESSED_LE - set(uncompressed))
            fallback.append(build_context(sop_class, [*uncompressed, *others]))
    return [*exact, *fallback][:MAX_CONTEXTS]


def _prepare_sub_association(event: Any) -> None:
    """EVT_CONN_OPEN of a C-MOVE sub-association (pynetdicom sends its C-STOREs): no Nagle
    delays, responses left for the call waiting for them, reactors woken by events
    (``pacs.dimse.wakeups``)."""
    set_nodelay(event.assoc)
    guard_responses(event.assoc)
    wakeups.attach(event.assoc)


def handle_accepted(event: Any) -> None:
    """Log each association an administrator may need to trace."""
    requestor = event.assoc.requestor
    log.info("association from %s (%s) accepted", requestor.ae_title, requestor.address)


def handle_aborted(event: Any) -> None:
    requestor = event.assoc.requestor
    log.warning("association from %s (%s) aborted", requestor.ae_title, requestor.address)


def _replace_comment(exc: ReplaceRefused) -> str:
    """The ErrorComment (at most 64 characters) of a refused replacement."""
    if exc.keyword is None:
        return "instance already stored; replacing needs the replace permission"
    return f"{exc.keyword} differs from stored: needs replace permission"


def _failure(code: int, exc: Exception, source: Source, reason: str | None = None) -> Dataset:
    """A C-STORE failure: the detail logged, *reason* (or the message of one of our own
    InvalidInstance errors) sent."""
    log.warning(
        "C-STORE from %s (%s) failed with 0x%04X: %s",
        source.calling_ae,
        source.remote_host,
        code,
        exc,
    )
    return _failure_status(code, reason or str(exc))


def _failure_status(code: int, reason: str) -> Dataset:
    """A status with an ErrorComment: *reason* is ours (never SQL, paths or reprs)."""
    reply = Dataset()
    reply.Status = code
    # LO in the command set: the default repertoire only, and no backslash (PS3.5 6.2).
    printable = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in reason)
    reply.ErrorComment = printable[:_ERROR_COMMENT_MAX]
    return reply
