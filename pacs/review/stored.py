"""Instances the review reads from the archive, and the one it may have to take back."""

from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from pacs.errors import InvalidInstance
from pacs.index.removal import forget_instance
from pacs.index.schema import facility, instance, series
from pacs.ingest import Archive


def series_headers(archive: Archive, SeriesInstanceUID: str) -> list[Dataset]:
    """The series' instances as stored, parsed without their pixel data, in index order.

    Raises
    ------
    InvalidInstance
        A stored instance cannot be parsed.
    """
    with archive.db.read() as conn:
        keys = (
            conn.execute(
                select(instance.c.blob_key)
                .join(series, series.c.id == instance.c.series_fk)
                .where(series.c.series_instance_uid == SeriesInstanceUID)
                .order_by(instance.c.id)
            )
            .scalars()
            .all()
        )
    return [_parse(archive.blobs.get(key), key, headers_only=True) for key in keys]


def stored_dataset(archive: Archive, SOPInstanceUID: str) -> Dataset | None:
    """A stored instance in full; None when the archive no longer holds it."""
    with archive.db.read() as conn:
        key = conn.execute(
            select(instance.c.blob_key).where(instance.c.sop_instance_uid == SOPInstanceUID)
        ).scalar()
    return None if key is None else _parse(archive.blobs.get(key), key, headers_only=False)


def facility_of_series(archive: Archive, SeriesInstanceUID: str) -> str:
    """The facility the series' instances belong to (the archive's default when unknown)."""
    with archive.db.read() as conn:
        name = conn.execute(
            select(facility.c.name)
            .join(instance, instance.c.facility_id == facility.c.id)
            .join(series, series.c.id == instance.c.series_fk)
            .where(series.c.series_instance_uid == SeriesInstanceUID)
            .limit(1)
        ).scalar()
    return str(name) if name else archive.default_facility


def discard_instance(archive: Archive, SOPInstanceUID: str, reason: str) -> None:
    """Take back an instance this process stored moments ago (rows first, then the blob, as
    pacs.ingest.delete_series does; a crash in between leaves an orphan blob for fsck)."""
    with archive.db.write() as conn:
        known = conn.execute(
            select(instance.c.id).where(instance.c.sop_instance_uid == SOPInstanceUID)
        ).first()
        key = None if known is None else forget_instance(conn, SOPInstanceUID, reason, _now())
    if key is not None:
        archive.blobs.delete(key)


def _parse(data: bytes, key: str, headers_only: bool) -> Dataset:
    try:
        return dcmread(BytesIO(data), stop_before_pixels=headers_only)
    except (InvalidDicomError, ValueError, EOFError) as exc:
        raise InvalidInstance(f"stored instance {key} cannot be parsed: {exc}") from exc


def _now() -> datetime:
    return datetime.now(UTC)
