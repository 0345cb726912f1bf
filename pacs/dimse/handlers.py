"""DIMSE event handlers: plain functions, collaborators bound as handler arguments.

This is the one place where archive errors become DIMSE statuses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from pacs.dimse import status
from pacs.dimse.find import query_from_identifier, response_identifier
from pacs.errors import (
    IndexUnavailable,
    InstanceConflict,
    InvalidInstance,
    InvalidUID,
    QueryError,
    SOPClassMismatch,
    StorageUnavailable,
)
from pacs.ingest import Archive, Source
from pacs.search import search

log = logging.getLogger(__name__)

# PS3.5 6.2: ErrorComment (0000,0902) is LO, at most 64 characters.
_ERROR_COMMENT_MAX = 64


def handle_echo(event: Any) -> int:
    """C-ECHO: the archive is up."""
    return status.SUCCESS


def handle_store(event: Any, archive: Archive) -> Dataset | int:
    """C-STORE: store the received data set through the one ingest path.

    The data set is taken encoded as it arrived (never decoded and re-encoded) in the
    negotiated transfer syntax.
    """
    request = event.request
    requestor = event.assoc.requestor
    source = Source("DIMSE", calling_ae=requestor.ae_title, remote_host=requestor.address)
    try:
        archive.store(
            request.DataSet.getvalue(),
            source,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            announced=(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)),
        )
    except SOPClassMismatch as exc:
        return _failure(status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, exc, source)
    except InstanceConflict as exc:
        return _failure(status.CANNOT_UNDERSTAND_CONFLICT, exc, source)
    except InvalidUID as exc:
        return _failure(status.CANNOT_UNDERSTAND_INVALID_UID, exc, source)
    except InvalidInstance as exc:
        return _failure(status.CANNOT_UNDERSTAND, exc, source)
    except (StorageUnavailable, IndexUnavailable) as exc:
        return _failure(status.OUT_OF_RESOURCES, exc, source)
    except Exception as exc:
        log.exception("unexpected error storing from %s", source.calling_ae)
        return _failure(status.PROCESSING_FAILURE, exc, source)
    return status.SUCCESS


def handle_find(event: Any, archive: Archive, ae_title: str, limit: int) -> Iterator[Any]:
    """C-FIND: pending responses from the one search of the index, then success."""
    model = str(event.request.AffectedSOPClassUID)
    try:
        query = query_from_identifier(event.identifier, model, limit)
        with archive.db.read() as conn:
            matches = list(search(conn, query))
    except QueryError as exc:
        log.warning("C-FIND from %s refused: %s", event.assoc.requestor.ae_title, exc)
        yield _failure_status(status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, exc), None
        return
    except IndexUnavailable as exc:
        log.warning("C-FIND failed: %s", exc)
        yield _failure_status(status.OUT_OF_RESOURCES, exc), None
        return
    for match in matches:
        if event.is_cancelled:
            yield status.CANCEL, None
            return
        response = response_identifier(event.identifier, query.level, match)
        response.RetrieveAETitle = ae_title
        yield status.PENDING, response
    yield status.SUCCESS, None


def handle_accepted(event: Any) -> None:
    """Log each association an administrator may need to trace."""
    requestor = event.assoc.requestor
    log.info("association from %s (%s) accepted", requestor.ae_title, requestor.address)


def handle_aborted(event: Any) -> None:
    requestor = event.assoc.requestor
    log.warning("association from %s (%s) aborted", requestor.ae_title, requestor.address)


def _failure(code: int, exc: Exception, source: Source) -> Dataset:
    log.warning(
        "C-STORE from %s (%s) failed with 0x%04X: %s",
        source.calling_ae,
        source.remote_host,
        code,
        exc,
    )
    return _failure_status(code, exc)


def _failure_status(code: int, exc: Exception) -> Dataset:
    reply = Dataset()
    reply.Status = code
    reply.ErrorComment = str(exc)[:_ERROR_COMMENT_MAX]
    return reply
