"""Removing an instance from the index: its row, the series, study and patient rows it leaves
empty, and the ``instance.deleted`` change, all in the caller's transaction (the blob is the
caller's to delete once that transaction has committed)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, exists, select

# A module import: pacs.changefeed imports the index, whose package imports this module.
from pacs import changefeed
from pacs.index.schema import instance, patient, series, study


def forget_instance(conn: Connection, SOPInstanceUID: str, reason: str, now: datetime) -> str:
    """Remove an instance's row (and parents left empty), with ``instance.deleted`` in the
    change feed, in *conn*'s transaction; returns the blob key the row pointed to."""
    row = conn.execute(
        select(
            series.c.id,
            series.c.series_instance_uid,
            study.c.id,
            study.c.study_instance_uid,
            instance.c.blob_key,
        )
        .join(instance, instance.c.series_fk == series.c.id)
        .join(study, study.c.id == series.c.study_fk)
        .where(instance.c.sop_instance_uid == SOPInstanceUID)
    ).one()
    series_pk, series_uid, study_pk, study_uid, key = row
    conn.execute(delete(instance).where(instance.c.sop_instance_uid == SOPInstanceUID))
    conn.execute(
        delete(series).where(
            series.c.id == series_pk, ~exists().where(instance.c.series_fk == series_pk)
        )
    )
    conn.execute(
        delete(study).where(study.c.id == study_pk, ~exists().where(series.c.study_fk == study_pk))
    )
    conn.execute(delete(patient).where(~exists().where(study.c.patient_fk == patient.c.id)))
    changefeed.append_change(
        conn,
        changefeed.ChangeKind.INSTANCE_DELETED,
        study_uid,
        now=now,
        SeriesInstanceUID=series_uid,
        SOPInstanceUID=SOPInstanceUID,
        detail={"reason": reason},
    )
    return str(key)
