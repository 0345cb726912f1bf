"""Consistency of index and blob store (``pacs fsck``).

Finds index rows whose blob is missing, blobs whose bytes no longer match the recorded SHA-256,
orphan blobs (written but never indexed: a crash between blob write and commit, or a purged
version whose deletion was interrupted) and stray files (temporary files of interrupted writes).
Objects younger than the grace period are reported as in flight, never touched: a store may be
between its blob write and its commit right now. The blob of a superseded version kept for
its retention period (``instance_version``) is referenced like an instance's: checked, never
an orphan.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete

from pacs.errors import InvalidInstance, ReplaceRefused
from pacs.index import IndexedBlob, VersionBlob, indexed_blobs, version_blobs
from pacs.index.records import stored_version
from pacs.index.removal import forget_instance
from pacs.index.schema import instance_version
from pacs.ingest import Archive, Source
from pacs.storage import BlobEntry, is_blob_key

log = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(minutes=5)


@dataclass
class FsckReport:
    """Findings of one check; lists hold blob keys."""

    indexed: int = 0
    versions: int = 0  # superseded versions kept
    blobs: int = 0
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    repaired: dict[str, str] = field(default_factory=dict)  # key -> what was done

    @property
    def consistent(self) -> bool:
        """True when nothing is left to repair (in-flight objects are not findings)."""
        unresolved = [
            key for key in self.missing + self.orphans + self.strays if key not in self.repaired
        ]
        return not unresolved and not self.mismatched


def fsck(
    archive: Archive,
    repair: bool = False,
    verify_checksums: bool = True,
    grace: timedelta = DEFAULT_GRACE,
) -> FsckReport:
    """Compare the index with the blob store; with *repair*, fix what can be fixed.

    Repairs: an orphan of an instance the index does not know is indexed through the ingest
    path (it was written by a store that crashed before its commit); an orphan of an indexed
    instance is a superseded or unacknowledged version and is deleted, as are stray files; a
    row whose blob is missing is removed (recorded as ``instance.deleted`` in the change feed),
    as is a kept version's row whose blob is missing.
    Checksum mismatches are reported, never "repaired".
    """
    report = FsckReport()
    cutoff = datetime.now(UTC) - grace
    with archive.db.read() as conn:
        rows = {row.blob_key: row for row in indexed_blobs(conn)}
        kept: dict[str, VersionBlob] = {}
        for version in version_blobs(conn):
            kept.setdefault(version.blob_key, version)
            report.versions += 1
    listing: dict[str, BlobEntry] = {entry.key: entry for entry in archive.blobs.list()}
    report.indexed, report.blobs = len(rows), len(listing)

    referenced: dict[str, IndexedBlob | VersionBlob] = {**kept, **rows}
    for key, row in referenced.items():
        entry = listing.get(key)
        if entry is None:
            report.missing.append(key)
        elif entry.size != row.size or (
            verify_checksums and hashlib.sha256(archive.blobs.get(key)).hexdigest() != row.sha256
        ):
            report.mismatched.append(key)

    for key, entry in listing.items():
        if key in referenced:
            continue
        if entry.modified > cutoff:
            report.in_flight.append(key)
        elif is_blob_key(key):
            report.orphans.append(key)
        else:
            report.strays.append(key)

    if repair:
        for key in report.orphans:
            report.repaired[key] = _repair_orphan(archive, key)
        for key in report.strays:
            archive.blobs.remove_stray(key)
            report.repaired[key] = "removed stray file"
        for key in report.missing:
            if key in rows:
                report.repaired[key] = _forget_missing(archive, rows[key].SOPInstanceUID)
            if key in kept:
                report.repaired[key] = _forget_version(archive, key)
    return report


def _repair_orphan(archive: Archive, key: str) -> str:
    sop_uid = key.rsplit("/", 1)[-1].rsplit(".", 2)[0]
    with archive.db.read() as conn:
        known = stored_version(conn, sop_uid)
    if known is not None:
        archive.db.sync()  # the version that superseded this blob is on disk before it goes
        archive.blobs.delete(key)
        return "deleted superseded or unacknowledged version"
    data = archive.blobs.get(key)
    try:
        archive.store(data, Source("FSCK"))
    except ReplaceRefused as exc:  # it would rename a stored patient: never acknowledged
        archive.blobs.delete(key)
        return f"deleted refused blob ({exc})"
    except InvalidInstance as exc:
        archive.blobs.delete(key)
        return f"deleted unreadable blob ({exc})"
    return "indexed"


def _forget_version(archive: Archive, key: str) -> str:
    """Remove the rows of kept versions whose blob is gone."""
    with archive.db.write() as conn:
        conn.execute(delete(instance_version).where(instance_version.c.blob_key == key))
    return "removed kept version row (blob missing)"


def _forget_missing(archive: Archive, SOPInstanceUID: str) -> str:
    """Remove the row of an instance whose blob is gone, and parents left empty."""
    with archive.db.write() as conn:
        forget_instance(conn, SOPInstanceUID, "blob missing (fsck)", datetime.now(UTC))
    return "removed index row (blob missing)"
