"""The one ingest path: every instance enters the archive through Archive.store().

Order of work, which is what makes a crash harmless (DESIGN.md, data flow 1):

1. parse and validate (nothing written when this fails);
2. write the blob under a key made of validated UIDs and the blob's digest, durably;
3. in ONE transaction: the duplicate, replace and facility checks, then index rows +
   change-feed row + the ``store`` audit event;
4. only then report success.

A crash between 2 and 3 leaves an orphan blob that no row points to (``pacs fsck`` repairs
it); it never leaves a row without its blob. A replacement writes the new version under a new
key and keeps the old blob as a superseded version (``instance_version``, ``pacs versions``);
only a source that may replace makes one (``Source.may_replace``): for any other, new bytes for
a stored SOP Instance UID are refused, and the blob just written for them is deleted again.
The same bytes again rewrite the blob they already have (same key) and index nothing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import Connection, select

from pacs.audit import AuditAction, AuditEvent, GroupCommit, append_event
from pacs.audit.covering import CoveredEvents
from pacs.errors import ForeignStudy, SOPClassMismatch, StudyMismatch
from pacs.facilities import study_facility
from pacs.index import BlobRef, Database, Outcome, SourceRow
from pacs.index.records import (
    DEFAULT_VERSION_RETENTION,
    Hierarchy,
    ensure_facility,
    record_instance,
    replace_refused,
    stored_version,
)
from pacs.index.removal import forget_instance
from pacs.index.schema import instance, instance_version, series, study
from pacs.instance import INDEX_TAGS, ParsedInstance
from pacs.metrics import metrics
from pacs.part10 import FramedDigest, Located, locate, with_meta
from pacs.storage import BlobStore, blob_key

log = logging.getLogger(__name__)

# How many recently written series each process remembers (a few KB each).
KNOWN_SERIES = 256

Protocol = Literal["DIMSE", "STOW", "AI", "REVIEW", "FSCK", "IMPORT"]
#: Transfers whose stores of a series one audit event covers (``Archive.stores``); a signed
#: report, an AI result, a repair or an import is audited on its own.
COVERED: frozenset[Protocol] = frozenset({"DIMSE", "STOW"})


@dataclass(frozen=True)
class Source:
    """Who sent an instance.

    Attributes
    ----------
    protocol : str
        ``DIMSE`` (C-STORE), ``STOW`` (STOW-RS), ``AI`` (our own results), ``REVIEW`` (a
        radiologist's signed report), ``FSCK``, ``IMPORT``.
    calling_ae : str, optional
        The peer's AE title (DIMSE).
    remote_host : str, optional
        The peer's address.
    facility : str, optional
        The facility the instance is received for. None: the facility of the study it joins
        (AI results, signed reports), the archive's default facility for a new study.
    may_replace : bool
        Whether it may store new bytes for a stored SOP Instance UID and correct a stored
        patient's name, birth date or sex or a study's accession number (an AE with the
        ``replace`` permission, an admin token). Default: refused.
    subject : str, optional
        The authenticated token subject (STOW-RS), recorded with a version it supersedes
        and in the audit trail.
    token_id : str, optional
        The token's jti (STOW-RS), for the audit trail.
    """

    protocol: Protocol
    calling_ae: str | None = None
    remote_host: str | None = None
    facility: str | None = None
    may_replace: bool = False
    subject: str | None = None
    token_id: str | None = None


@dataclass(frozen=True)
class StoreResult:
    """What store() did with one instance."""

    outcome: Outcome
    SOPClassUID: str
    SOPInstanceUID: str
    StudyInstanceUID: str
    SeriesInstanceUID: str
    TransferSyntaxUID: str
    blob_key: str
    sha256: str
    size: int


class Archive:
    """The archive core's write side: blob store + index, assembled once per process."""

    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        default_facility: str = "default",
        version_retention: timedelta = DEFAULT_VERSION_RETENTION,
        store_audit_window: float = 0.0,
    ) -> None:
        self.db = db
        self.blobs = blobs
        self.audit = GroupCommit(db)  # reads' audit events, committed in groups
        # A sender's stores of a series after the first, counted (pacs.audit.covering).
        self.stores = CoveredEvents(self.audit.record, store_audit_window)
        self.default_facility = default_facility
        self.version_retention = version_retention
        self._facility_ids: dict[str, int] = {}
        self._facility_lock = threading.Lock()
        self._known = _KnownSeries(KNOWN_SERIES)

    def close(self) -> None:
        """Write the summaries of the stores still covered (at the end of a process)."""
        self.stores.close()

    def store(
        self,
        data: bytes,
        source: Source,
        transfer_syntax_uid: str | None = None,
        announced: tuple[str, str] | None = None,
        expected_study: str | None = None,
        framed: FramedDigest | None = None,
    ) -> StoreResult:
        """Validate, store durably and index one instance (:meth:`_store`, which documents
        it), timed into ``pacs_ingest_seconds`` when it stored."""
        started = time.perf_counter()
        result = self._store(data, source, transfer_syntax_uid, announced, expected_study, framed)
        metrics().ingest_seconds.labels(source.protocol.lower()).observe(
            time.perf_counter() - started
        )
        return result

    def _store(
        self,
        data: bytes,
        source: Source,
        transfer_syntax_uid: str | None = None,
        announced: tuple[str, str] | None = None,
        expected_study: str | None = None,
        framed: FramedDigest | None = None,
    ) -> StoreResult:
        """Validate, store durably and index one instance.

        Parameters
        ----------
        data : bytes
            A Part 10 file (File Meta Information is filled in when missing), or a bare data
            set when *transfer_syntax_uid* is given (as a C-STORE request carries it).
        source : Source
            Who sent it.
        transfer_syntax_uid : str, optional
            The negotiated transfer syntax of a bare data set.
        announced : tuple of str, optional
            (SOPClassUID, SOPInstanceUID) a C-STORE request announced for the data set.
        expected_study : str, optional
            The Study Instance UID the instance must belong to (STOW-RS to /studies/{study}).
        framed : FramedDigest, optional
            The digest of *data* framed by our File Meta Information, computed as it arrived
            (a C-STORE's data set): used when that is the blob stored, instead of hashing it
            again.

        Returns
        -------
        StoreResult
            Returned only once blob and index rows are durable.

        Raises
        ------
        InvalidInstance
            Unparsable, truncated, or missing/invalid UIDs; nothing was stored.
        SOPClassMismatch
            The data set is not what *announced* says; nothing was stored.
        StudyMismatch
            The instance is not of *expected_study*; nothing was stored.
        ReplaceRefused
            New bytes for a stored instance, or a change of the stored patient's name, birth
            date or sex or the study's accession number, from a source that may not replace;
            nothing was stored.
        ForeignStudy
            *source* names a facility and the study belongs to another; nothing was stored
            (also for the same bytes again: a facility never gets another's instance).
        InstanceConflict
            Contradicts the index (series under another study, ...); nothing was stored.
        StorageUnavailable, IndexUnavailable
            Nothing was acknowledged; at worst an orphan blob remains for ``pacs fsck``.
        """
        # 1. Parse and validate.
        # Only the index's attributes are parsed: the walk has checked that the rest is whole.
        located = locate(data, transfer_syntax_uid, INDEX_TAGS)
        parsed = ParsedInstance.from_dataset(located.wanted_dataset())
        if announced is not None:
            found = (parsed.instance.SOPClassUID, parsed.instance.SOPInstanceUID)
            if found != announced:
                raise SOPClassMismatch(f"data set is {found}, the request announced {announced}")
        if expected_study is not None and parsed.study.StudyInstanceUID != expected_study:
            raise StudyMismatch(
                f"instance of study {parsed.study.StudyInstanceUID}, sent to {expected_study}"
            )
        blob, whole = _part10_blob(located, parsed)
        ours = parsed.instance.SOPClassUID, parsed.instance.SOPInstanceUID
        if (
            whole
            and framed is not None
            and (framed.SOPClassUID, framed.SOPInstanceUID) == ours
            and framed.TransferSyntaxUID == located.transfer_syntax_uid
        ):
            sha256 = framed.sha256
        else:
            sha256 = hashlib.sha256(blob).hexdigest()
        uids = parsed.study.StudyInstanceUID, parsed.series.SeriesInstanceUID
        sop_uid = parsed.instance.SOPInstanceUID
        key = blob_key(*uids, sop_uid, sha256)
        result = StoreResult(
            Outcome.DUPLICATE,
            parsed.instance.SOPClassUID,
            sop_uid,
            *uids,
            located.transfer_syntax_uid,
            key,
            sha256,
            len(blob),
        )
        # 2. Durable blob, before the transaction that makes it visible. Written before the
        # duplicate and replace checks, which run in that transaction: a new instance (the
        # common case) costs one transaction, not a read transaction before the write. Same
        # bytes again rewrite the blob they already have (same key, same bytes, an atomic
        # rename); a refused instance's blob is deleted again.
        self.blobs.put(key, blob)

        # 3. Checks, index rows, change feed and audit event in one transaction.
        ref = BlobRef(key, len(blob), sha256, located.transfer_syntax_uid)
        now = datetime.now(UTC)
        try:
            with self.db.write() as conn:
                existing = stored_version(conn, sop_uid)
                owner = study_facility(conn, uids[0])
                facility = source.facility or owner or self.default_facility
                if owner is not None and owner != facility:
                    raise ForeignStudy(
                        f"study {uids[0]} belongs to another facility than {facility}"
                    )
                if existing is not None:
                    existing.check_same_series(uids[1])
                    if existing.sha256 == sha256:
                        return result  # the same bytes again: nothing to index
                    if not source.may_replace:
                        raise replace_refused(sop_uid)
                source_row = SourceRow(
                    protocol=source.protocol,
                    calling_ae=source.calling_ae,
                    remote_host=source.remote_host,
                    facility_id=self.facility_id(facility, conn),
                    may_replace=source.may_replace,
                    who=source.subject or source.calling_ae,
                )
                attributes = (source_row.facility_id, parsed.patient, parsed.study, parsed.series)
                known = self._known.get(uids[1], attributes)
                recorded = record_instance(
                    conn, parsed, ref, source_row, now, known, self.version_retention
                )
                event = _store_event(parsed, source, facility, now, recorded.outcome)
                new = recorded.outcome is Outcome.STORED and source.protocol in COVERED
                covered = new and self.stores.would_cover(event)
                if not covered:
                    # Last in the transaction: PostgreSQL holds the chain's lock until commit.
                    append_event(conn, event)
        except BaseException:
            self.discard_unreferenced(key)
            raise
        if covered and not self.stores.covered(event):
            self.audit.record(event)  # its window closed meanwhile: an event of its own
        elif new and not covered:
            self.stores.opened(event)
        with self._facility_lock:
            self._facility_ids.setdefault(facility, source_row.facility_id)
        self._known.remember(uids[1], attributes, recorded.hierarchy)
        log.debug("%s %s from %s", recorded.outcome.value, sop_uid, source.calling_ae)
        return replace(result, outcome=recorded.outcome)

    def facility_id(self, name: str, conn: Connection | None = None) -> int:
        """The id of facility *name*, created on first use (in *conn*'s write transaction
        when given: store() remembers it once that transaction has committed)."""
        with self._facility_lock:
            known = self._facility_ids.get(name)
        if known is not None:
            return known
        if conn is not None:
            return ensure_facility(conn, name, datetime.now(UTC))
        with self._facility_lock:
            if name not in self._facility_ids:
                with self.db.write() as new_conn:
                    self._facility_ids[name] = ensure_facility(new_conn, name, datetime.now(UTC))
            return self._facility_ids[name]

    def discard_unreferenced(self, key: str) -> None:
        """Delete a blob no index row points to (neither an instance nor a superseded version
        of one); leave it to ``pacs fsck`` when unsure."""
        try:
            with self.db.read() as conn:
                referenced = conn.execute(
                    select(instance.c.id)
                    .where(instance.c.blob_key == key)
                    .union_all(
                        select(instance_version.c.id).where(instance_version.c.blob_key == key)
                    )
                ).first()
            if referenced is None:
                self.blobs.delete(key)
        except Exception as exc:  # the index or store is down: fsck will find the orphan
            log.warning("left blob %s for fsck: %s", key, exc)


class _KnownSeries:
    """Series recently recorded by this process, with the attributes they were recorded with:
    an instance repeating them only touches receive times (see record_instance)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[object, Hierarchy]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, SeriesInstanceUID: str, attributes: object) -> Hierarchy | None:
        with self._lock:
            entry = self._entries.get(SeriesInstanceUID)
        return entry[1] if entry is not None and entry[0] == attributes else None

    def remember(self, SeriesInstanceUID: str, attributes: object, hierarchy: Hierarchy) -> None:
        with self._lock:
            self._entries[SeriesInstanceUID] = (attributes, hierarchy)
            self._entries.move_to_end(SeriesInstanceUID)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


def _store_event(
    parsed: ParsedInstance, source: Source, facility: str, now: datetime, outcome: Outcome
) -> AuditEvent:
    return AuditEvent(
        AuditAction.STORE,
        at=now,
        subject=source.subject,
        facility=facility,
        ae_title=source.calling_ae,
        token_id=source.token_id,
        remote_address=source.remote_host,
        PatientID=parsed.patient.PatientID,
        IssuerOfPatientID=parsed.patient.IssuerOfPatientID or None,
        StudyInstanceUID=parsed.study.StudyInstanceUID,
        SeriesInstanceUID=parsed.series.SeriesInstanceUID,
        SOPInstanceUID=parsed.instance.SOPInstanceUID,
        detail={"protocol": source.protocol, "outcome": outcome.value},
    )


def _part10_blob(located: Located, parsed: ParsedInstance) -> tuple[bytes, bool]:
    """The bytes to store: as received when they form a consistent Part 10 file, else the
    received data set behind File Meta Information made for it (the data set is never
    re-encoded); and whether that is all the received bytes behind our meta."""
    meta = located.meta
    if (
        located.is_complete_part10
        and meta.MediaStorageSOPInstanceUID == parsed.instance.SOPInstanceUID
        and meta.MediaStorageSOPClassUID == parsed.instance.SOPClassUID
    ):
        return located.data, False
    blob = with_meta(
        located.data[located.dataset_offset :],
        parsed.instance.SOPClassUID,
        parsed.instance.SOPInstanceUID,
        located.transfer_syntax_uid,
    )
    return blob, located.dataset_offset == 0


def delete_series(archive: Archive, SeriesInstanceUID: str, reason: str) -> int:
    """Remove a series (rows, then blobs) with ``instance.deleted`` changes; returns the count.

    Used to supersede our own earlier AI result series. Rows go first, in one transaction, so
    nothing points at a deleted blob; a crash before the blobs are gone leaves orphans that
    ``pacs fsck --repair`` deletes.
    """
    with archive.db.write() as conn:
        sop_uids = (
            conn.execute(
                select(instance.c.sop_instance_uid)
                .join(series, series.c.id == instance.c.series_fk)
                .where(series.c.series_instance_uid == SeriesInstanceUID)
            )
            .scalars()
            .all()
        )
        now = datetime.now(UTC)
        if sop_uids:  # first: the study (and its patient) may go with the series
            append_event(conn, _delete_event(conn, SeriesInstanceUID, len(sop_uids), reason, now))
        keys = [forget_instance(conn, uid, reason, now) for uid in sop_uids]
    for key in keys:
        archive.discard_unreferenced(key)  # a superseded version may still be kept
    return len(keys)


def _delete_event(
    conn: Connection, SeriesInstanceUID: str, count: int, reason: str, now: datetime
) -> AuditEvent:
    StudyInstanceUID = conn.execute(
        select(study.c.study_instance_uid)
        .join(series, series.c.study_fk == study.c.id)
        .where(series.c.series_instance_uid == SeriesInstanceUID)
    ).scalar_one_or_none()
    return AuditEvent(
        AuditAction.DELETE,
        at=now,
        StudyInstanceUID=StudyInstanceUID,
        SeriesInstanceUID=SeriesInstanceUID,
        detail={"instances": count, "reason": reason},
    )
