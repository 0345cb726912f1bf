"""The export core that ``pacs export`` (folders) and ``POST /api/v1/exports`` (a zip) share.

Three steps per study: :func:`select_studies` chooses them (UIDs and/or one study-level
search, within a facility scope), :func:`study_instances` finds a study's instances (or says
in the report why it is skipped), :func:`record_export` audits it before anything of it is
written, and :func:`deidentified` yields its instances de-identified, one in memory at a time,
recording the ones the de-identifier refuses. Where the files go is the caller's business.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset

from pacs.audit import AuditAction, AuditEvent, record_event
from pacs.deid.deidentifier import Deidentifier, read_instance
from pacs.deid.errors import DeidentificationError
from pacs.facilities import Scope
from pacs.ingest import Archive
from pacs.search import Level, Query, StoredInstance, matching_instances, search
from pacs.uids import is_valid_uid

__all__ = [
    "ExportReport",
    "Requester",
    "deidentified",
    "record_export",
    "select_studies",
    "study_instances",
]

_PAGE = 1000  # studies per search page when a query selects them


@dataclass
class ExportReport:
    """What an export did: studies written (their new UIDs), instances written, instances
    refused and why, studies not exported and why."""

    studies: list[str] = field(default_factory=list)
    instances: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # SOPInstanceUID -> reason
    skipped: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID -> why not exported

    def summary(self) -> dict[str, int]:
        """The counts ``--json`` prints."""
        return {
            "studies": len(self.studies),
            "instances": self.instances,
            "refused": len(self.refused),
            "skipped": len(self.skipped),
        }


@dataclass(frozen=True)
class Requester:
    """Who asks for the export, as the audit trail names them."""

    subject: str
    roles: tuple[str, ...] = ()
    facility: str | None = None
    token_id: str | None = None
    remote_address: str | None = None


def select_studies(
    archive: Archive, studies: Sequence[str], matching: Mapping[str, str], scope: Scope
) -> list[str]:
    """The StudyInstanceUIDs to export: *studies* as given, then those the study-level search
    *matching* finds in *scope* (none searched when *matching* is empty), each once.

    Raises
    ------
    QueryError
        A matching key that cannot be searched on, or a malformed value.
    """
    chosen = dict.fromkeys(studies)
    if matching:
        query = Query(Level.STUDY, dict(matching), (), limit=_PAGE, scope=scope)
        if not query.matching:  # only universal values: not "everything", a mistake
            return list(chosen)
        with archive.db.read() as conn:
            while True:
                page = [str(row["StudyInstanceUID"]) for row in search(conn, query)]
                chosen.update(dict.fromkeys(page))
                if len(page) < _PAGE:
                    break
                query = Query(
                    Level.STUDY, query.matching, (), limit=_PAGE, offset=query.offset + _PAGE,
                    scope=scope,
                )  # fmt: skip
    return list(chosen)


def study_instances(
    archive: Archive, StudyInstanceUID: str, scope: Scope, report: ExportReport
) -> list[StoredInstance]:
    """The instances of the study in *scope*; none, with the reason in ``report.skipped``,
    when the UID is not a single valid one or no such study is visible."""
    # A wild card or a list would match other studies (PS3.4 C.2.2.2): a single valid UID only.
    if not is_valid_uid(StudyInstanceUID):
        report.skipped[StudyInstanceUID] = "not a valid UID"
        return []
    query = Query(Level.STUDY, {"StudyInstanceUID": StudyInstanceUID}, (), scope=scope)
    with archive.db.read() as conn:
        found = matching_instances(conn, query)
    if not found:  # another facility's study reads the same as an unknown one
        where = "this archive" if scope.is_global else f"facility {scope.describe()}"
        report.skipped[StudyInstanceUID] = f"no such study in {where}"
    return found


def record_export(
    archive: Archive,
    StudyInstanceUID: str,
    instances: int,
    destination: str,
    requester: Requester,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Audit the export of one study, before any of it is written.

    Raises
    ------
    AuditUnavailable
        The event could not be written: nothing of the study may leave.
    """
    record_event(
        archive.db,
        AuditEvent(
            AuditAction.EXPORT,
            subject=requester.subject,
            roles=requester.roles,
            facility=requester.facility,
            token_id=requester.token_id,
            remote_address=requester.remote_address,
            StudyInstanceUID=StudyInstanceUID,
            detail={
                "instances": instances,
                "to": destination,
                "deidentified": True,
                **(detail or {}),
            },
        ),
    )


def deidentified(
    archive: Archive,
    found: Sequence[StoredInstance],
    deidentifier: Deidentifier,
    report: ExportReport,
    *,
    force: bool = False,
) -> Iterator[Dataset]:
    """Each of *found* read and de-identified, one at a time; the ones refused (burned-in
    text, unparsable) are left out and recorded in ``report.refused``.

    Raises
    ------
    StorageUnavailable
        A blob cannot be read.
    """
    for stored in found:
        try:
            ds = deidentifier.dataset(
                read_instance(archive.blobs.get(stored.blob_key)), force=force
            )
        except DeidentificationError as exc:
            report.refused[stored.SOPInstanceUID] = str(exc)
            continue
        yield ds
