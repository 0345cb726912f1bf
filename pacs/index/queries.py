"""Read-side queries of the index used by the archive core (stats, consistency checks)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from pacs.index.schema import change, instance, instance_version, patient, series, study


@dataclass(frozen=True)
class Counts:
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int


@dataclass(frozen=True)
class IndexedBlob:
    StudyInstanceUID: str
    SeriesInstanceUID: str
    SOPInstanceUID: str
    blob_key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Change:
    seq: int
    created_at: datetime
    kind: str
    StudyInstanceUID: str
    SeriesInstanceUID: str | None
    SOPInstanceUID: str | None
    detail: dict[str, object]


def counts(conn: Connection) -> Counts:
    """Number of patients, studies, series and instances, and the bytes they hold."""

    def count(table_id: Any) -> int:
        return int(conn.execute(select(func.count(table_id))).scalar_one())

    return Counts(
        patients=count(patient.c.id),
        studies=count(study.c.id),
        series=count(series.c.id),
        instances=count(instance.c.id),
        bytes=int(conn.execute(select(func.coalesce(func.sum(instance.c.size), 0))).scalar_one()),
    )


def indexed_blobs(conn: Connection) -> Iterator[IndexedBlob]:
    """Every instance row with the blob it points to, streamed."""
    query = (
        select(
            study.c.study_instance_uid,
            series.c.series_instance_uid,
            instance.c.sop_instance_uid,
            instance.c.blob_key,
            instance.c.size,
            instance.c.sha256,
        )
        .join(series, series.c.id == instance.c.series_fk)
        .join(study, study.c.id == series.c.study_fk)
        .order_by(instance.c.id)
    )
    for row in conn.execution_options(yield_per=1000).execute(query):
        yield IndexedBlob(*row)


@dataclass(frozen=True)
class VersionBlob:
    """A superseded version kept with its blob (``instance_version``)."""

    id: int
    SOPInstanceUID: str
    blob_key: str
    size: int
    sha256: str


def version_blobs(conn: Connection) -> Iterator[VersionBlob]:
    """Every kept superseded version with the blob it points to, streamed."""
    v = instance_version.c
    query = select(v.id, v.sop_instance_uid, v.blob_key, v.size, v.sha256).order_by(v.id)
    for row in conn.execution_options(yield_per=1000).execute(query):
        yield VersionBlob(*row)


def changes(conn: Connection, since: int = 0, limit: int = 1000) -> list[Change]:
    """Change-feed rows after sequence number *since*, oldest first."""
    rows = conn.execute(
        select(change).where(change.c.seq > since).order_by(change.c.seq).limit(limit)
    )
    return [
        Change(
            seq=row.seq,
            created_at=row.created_at,
            kind=row.kind,
            StudyInstanceUID=row.study_instance_uid,
            SeriesInstanceUID=row.series_instance_uid,
            SOPInstanceUID=row.sop_instance_uid,
            detail=json.loads(row.detail) if row.detail else {},
        )
        for row in rows
    ]


@dataclass(frozen=True)
class SeriesInStudy:
    """A series of a study with its instances (SOP class, SOP instance, blob key)."""

    SeriesInstanceUID: str
    Modality: str
    BodyPartExamined: str
    instances: list[tuple[str, str, str]]


def series_of_study(conn: Connection, StudyInstanceUID: str) -> list[SeriesInStudy]:
    rows = conn.execute(
        select(
            series.c.series_instance_uid,
            series.c.modality,
            series.c.body_part_examined,
            instance.c.sop_class_uid,
            instance.c.sop_instance_uid,
            instance.c.blob_key,
        )
        .join(study, series.c.study_fk == study.c.id)
        .join(instance, instance.c.series_fk == series.c.id)
        .where(study.c.study_instance_uid == StudyInstanceUID)
        .order_by(series.c.id, instance.c.id)
    ).all()
    found: dict[str, SeriesInStudy] = {}
    for uid, modality, body_part, sop_class, sop_uid, key in rows:
        entry = found.setdefault(uid, SeriesInStudy(uid, modality or "", body_part or "", []))
        entry.instances.append((sop_class, sop_uid, key))
    return list(found.values())
