"""Superseded instance versions (``pacs versions``).

A permitted replacement (new bytes for a stored SOP Instance UID from a source that may
replace, see :class:`pacs.ingest.Source`) keeps the old version's blob with an
``instance_version`` row saying who stored it, who replaced it, and until when it is kept
(``PACS_VERSION_RETENTION_DAYS``). :func:`purge_expired` deletes the versions whose time is up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, select

from pacs.index.schema import instance, instance_version
from pacs.ingest import Archive


@dataclass(frozen=True)
class InstanceVersion:
    """One version of an instance: the current one (``superseded_at`` None) or a kept one."""

    SOPInstanceUID: str
    blob_key: str
    sha256: str
    size: int
    TransferSyntaxUID: str
    received_at: datetime
    stored_by: str  # protocol, AE title, address
    superseded_at: datetime | None = None
    superseded_by: str | None = None
    keep_until: datetime | None = None

    @property
    def current(self) -> bool:
        return self.superseded_at is None


def versions_of(conn: Connection, SOPInstanceUID: str) -> list[InstanceVersion]:
    """The current version (when the instance is stored), then the kept ones, newest first."""
    found: list[InstanceVersion] = []
    current = conn.execute(
        select(
            instance.c.blob_key,
            instance.c.sha256,
            instance.c.size,
            instance.c.transfer_syntax_uid,
            instance.c.received_at,
            instance.c.source,
            instance.c.calling_ae,
            instance.c.remote_host,
        ).where(instance.c.sop_instance_uid == SOPInstanceUID)
    ).one_or_none()
    if current is not None:
        found.append(InstanceVersion(SOPInstanceUID, *current[:5], _stored_by(*current[5:])))
    v = instance_version.c
    rows = conn.execute(
        select(instance_version)
        .where(v.sop_instance_uid == SOPInstanceUID)
        .order_by(v.superseded_at.desc(), v.id.desc())
    )
    for row in rows:
        found.append(
            InstanceVersion(
                SOPInstanceUID,
                row.blob_key,
                row.sha256,
                row.size,
                row.transfer_syntax_uid,
                row.received_at,
                _stored_by(row.source, row.calling_ae, row.remote_host),
                row.superseded_at,
                row.superseded_by,
                row.keep_until,
            )
        )
    return found


def purge_expired(archive: Archive, now: datetime | None = None) -> int:
    """Delete the kept versions whose retention ended; returns how many.

    Rows go first, in one transaction; a blob is then deleted unless a row still points at it
    (the version was stored back, or is kept twice). A crash in between leaves orphans that
    ``pacs fsck --repair`` deletes.
    """
    now = now or datetime.now(UTC)
    with archive.db.write() as conn:
        expired = conn.execute(
            delete(instance_version)
            .where(instance_version.c.keep_until <= now)
            .returning(instance_version.c.blob_key)
        ).all()
    for key in {row.blob_key for row in expired}:
        archive.discard_unreferenced(key)
    return len(expired)


def _stored_by(protocol: str, calling_ae: str | None, remote_host: str | None) -> str:
    return f"{protocol} {calling_ae or '-'}@{remote_host or '-'}"
