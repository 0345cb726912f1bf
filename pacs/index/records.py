"""Writing one instance into the index: rows for patient, study, series, instance and the
change feed, all inside the caller's transaction.

What a new instance may change of what the archive holds depends on its source:

- new bytes for a stored SOP Instance UID, and a patient name, birth date or sex (or a study's
  accession number) other than the stored one, are refused (ReplaceRefused) unless the source
  may replace (an AE with the ``replace`` permission, an admin token): then the newest wins
  and the superseded version is kept (``instance_version``) until its retention ends;
- our own results (AI, REVIEW) copy these attributes from the images they describe: they are
  never refused for them, and never change the stored ones;
- a blank never erases a stored value, and a name differing only in case, spaces or empty
  trailing components (``DOE^JOHN^^^`` and ``Doe^John``) is the same name.

The other attributes (study date and description, series description, ...) are refreshed from
the newest instance, as before.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Table,
    Text,
    Update,
    bindparam,
    func,
    literal,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

# A module import: pacs.changefeed imports the index, whose package imports this module.
from pacs import changefeed
from pacs.errors import InstanceConflict, ReplaceRefused
from pacs.index.schema import facility, instance, instance_version, patient, series, study
from pacs.instance import ParsedInstance

#: Sources of what the archive itself writes into a study: AI results and signed reports.
OWN_RESULTS = frozenset({"AI", "REVIEW"})

#: How long a superseded version is kept by default (PACS_VERSION_RETENTION_DAYS).
DEFAULT_VERSION_RETENTION = timedelta(days=365)

#: Attributes a new instance may not change without the replace permission (column: keyword).
PATIENT_IDENTITY = {
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
}
STUDY_IDENTITY = {"accession_number": "AccessionNumber"}


class Outcome(enum.Enum):
    """What storing an instance did to the index."""

    STORED = "stored"  # a new instance
    DUPLICATE = "duplicate"  # the same bytes were already stored
    REPLACED = "replaced"  # new bytes for a known SOP Instance UID (the old version is kept)


@dataclass(frozen=True)
class BlobRef:
    """The durable blob a new index row points to."""

    key: str
    size: int
    sha256: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class SourceRow:
    """Where an instance came from, as recorded on its row."""

    protocol: str
    calling_ae: str | None
    remote_host: str | None
    facility_id: int
    # Whether it may replace a stored version and correct patient/study identity.
    may_replace: bool = False
    # Who it is, for the record of a version it supersedes (AE title or token subject).
    who: str | None = None

    @property
    def mode(self) -> str:
        """``correct`` (newest wins), ``own`` (keep the stored values) or ``check`` (refuse
        a change)."""
        if self.may_replace:
            return "correct"
        return "own" if self.protocol in OWN_RESULTS else "check"

    def describe(self) -> str:
        """``STOW admin@10.0.0.5``: for the record of a superseded version."""
        who = self.who or self.calling_ae or "-"
        return f"{self.protocol} {who}@{self.remote_host or '-'}"


@dataclass(frozen=True)
class Hierarchy:
    """Row ids of the study and series an instance was recorded under."""

    study_pk: int
    series_pk: int


@dataclass(frozen=True)
class Recorded:
    outcome: Outcome
    hierarchy: Hierarchy


@dataclass(frozen=True)
class StoredVersion:
    """The version of an instance the index points to."""

    SOPInstanceUID: str
    series_instance_uid: str
    blob_key: str
    sha256: str

    def check_same_series(self, SeriesInstanceUID: str) -> None:
        """Raise InstanceConflict when a new version would move the instance to another series."""
        if SeriesInstanceUID != self.series_instance_uid:
            raise InstanceConflict(
                f"SOP Instance UID {self.SOPInstanceUID} is already stored in series "
                f"{self.series_instance_uid}"
            )


def ensure_facility(conn: Connection, name: str, now: datetime) -> int:
    """Return the id of facility *name*, creating it if needed."""
    conn.execute(
        insert_for(conn)(facility).values(name=name, created_at=now).on_conflict_do_nothing()
    )
    return int(conn.execute(select(facility.c.id).where(facility.c.name == name)).scalar_one())


def stored_version(
    conn: Connection, SOPInstanceUID: str, lock: bool = False
) -> StoredVersion | None:
    """The indexed version of an instance, or None; *lock* holds its row (PostgreSQL)."""
    query = _STORED_VERSION
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update(of=instance)
    row = conn.execute(query, {"sop_uid": SOPInstanceUID}).one_or_none()
    return None if row is None else StoredVersion(*row)


# Statements run for every stored instance are built once: building a Core statement and its
# cache key costs more than executing it on SQLite (pacs/ingest.py's hot path).
_STORED_VERSION = (
    select(
        instance.c.sop_instance_uid,
        series.c.series_instance_uid,
        instance.c.blob_key,
        instance.c.sha256,
    )
    .join(series, series.c.id == instance.c.series_fk)
    .where(instance.c.sop_instance_uid == bindparam("sop_uid"))
)


def record_instance(
    conn: Connection,
    parsed: ParsedInstance,
    blob: BlobRef,
    source: SourceRow,
    now: datetime,
    known: Hierarchy | None = None,
    retention: timedelta = DEFAULT_VERSION_RETENTION,
) -> Recorded:
    """Index one stored blob and append its change-feed row, in *conn*'s transaction.

    *known* is the hierarchy an earlier instance with the very same patient, study and series
    attributes was recorded under: then only the receive times are touched instead of
    upserting three rows (most instances of a series carry identical attributes). The rows are
    matched by id *and* UID, so a stale hint falls back to the full upsert.

    A replacement (new bytes for a stored SOP Instance UID, from a source that may replace)
    keeps the superseded version's blob, with an ``instance_version`` row until
    *now* + *retention*.

    Raises
    ------
    ReplaceRefused
        New bytes for a stored instance, or another patient name, birth date, sex or accession
        number than the stored ones, from a source that may not replace.
    InstanceConflict
        The instance contradicts the index: its study belongs to another patient, its series
        to another study, or its SOP Instance UID to another series.
    """
    # Our own AI results (SR, SEG) and signed reports join the study without touching its
    # receive time, so storing them never makes the study unstable and never triggers inference
    # again.
    # A C-STORE marks its study unreleased until its association ends with an A-RELEASE
    # (pacs.dimse.sends): a send broken off midway must not look complete.
    touched: dict[str, Any] = {}
    if source.protocol not in OWN_RESULTS:
        touched = {"last_received_at": now} | (
            {"unreleased": True} if source.protocol == "DIMSE" else {}
        )
    if known is not None and _touch(conn, parsed, known, now, touched):
        study_pk, series_pk = known.study_pk, known.series_pk
    else:
        patient_pk = _upsert_patient(conn, parsed, source, now)
        study_pk = _upsert_study(conn, parsed, patient_pk, source, now, touched)
        series_pk = _upsert_series(conn, parsed, study_pk, now)
    hierarchy = Hierarchy(study_pk, series_pk)
    uids = parsed.study.StudyInstanceUID, parsed.series.SeriesInstanceUID
    sop_uid = parsed.instance.SOPInstanceUID
    values = _instance_values(parsed, blob, source, series_pk, now)

    inserted = conn.execute(_INSERT_INSTANCE[conn.dialect.name == "postgresql"], values).first()
    if inserted is not None:
        _append_change(conn, changefeed.ChangeKind.INSTANCE_STORED, uids, sop_uid, blob, now)
        return Recorded(Outcome.STORED, hierarchy)

    existing = stored_version(conn, sop_uid, lock=True)
    if existing is None:  # pragma: no cover - unique constraint other than the SOP UID
        raise InstanceConflict(f"blob {blob.key} is already indexed for another instance")
    existing.check_same_series(parsed.series.SeriesInstanceUID)
    if existing.sha256 == blob.sha256:
        return Recorded(Outcome.DUPLICATE, hierarchy)
    if not source.may_replace:
        raise replace_refused(sop_uid)
    _keep_version(conn, sop_uid, now, source.describe(), now + retention)
    conn.execute(instance.update().where(instance.c.sop_instance_uid == sop_uid).values(**values))
    _append_change(
        conn,
        changefeed.ChangeKind.INSTANCE_REPLACED,
        uids,
        sop_uid,
        blob,
        now,
        previous=existing.sha256,
    )
    return Recorded(Outcome.REPLACED, hierarchy)


def replace_refused(SOPInstanceUID: str) -> ReplaceRefused:
    return ReplaceRefused(
        f"SOP Instance UID {SOPInstanceUID} is stored with other content; "
        "replacing it needs the replace permission"
    )


def _keep_version(
    conn: Connection, SOPInstanceUID: str, now: datetime, by: str, keep_until: datetime
) -> None:
    """Record the instance's current version as superseded (its blob stays)."""
    columns = (
        "sop_instance_uid",
        "blob_key",
        "size",
        "sha256",
        "transfer_syntax_uid",
        "received_at",
        "source",
        "calling_ae",
        "remote_host",
    )
    current = select(
        *(instance.c[name] for name in columns),
        literal(now, DateTime(timezone=True)),
        literal(by, Text),
        literal(keep_until, DateTime(timezone=True)),
    ).where(instance.c.sop_instance_uid == SOPInstanceUID)
    conn.execute(
        instance_version.insert().from_select(
            [*columns, "superseded_at", "superseded_by", "keep_until"], current
        )
    )


def _touch(
    conn: Connection,
    parsed: ParsedInstance,
    known: Hierarchy,
    now: datetime,
    touched: dict[str, Any],
) -> bool:
    """Update the receive times of a known study (its *touched* columns) and series; False if
    either is gone."""
    study_keys = {"study_pk": known.study_pk, "study_uid": parsed.study.StudyInstanceUID}
    if touched:
        statement = _TOUCH_STUDY[tuple(sorted(touched))]
        touched_study = conn.execute(statement, study_keys | touched).rowcount
    else:
        touched_study = len(conn.execute(_SAME_STUDY, study_keys).all())
    touched_series = conn.execute(
        _TOUCH_SERIES,
        {
            "series_pk": known.series_pk,
            "series_uid": parsed.series.SeriesInstanceUID,
            "study_pk": known.study_pk,
            "now": now,
        },
    ).rowcount
    return bool(touched_study == 1 and touched_series == 1)


_SAME_STUDY_CONDITION = (study.c.id == bindparam("study_pk")) & (
    study.c.study_instance_uid == bindparam("study_uid")
)
_SAME_STUDY = select(study.c.id).where(_SAME_STUDY_CONDITION)
# By the touched columns (record_instance): a STOW-RS instance, a C-STORE one.
_TOUCH_STUDY: dict[tuple[str, ...], Update] = {
    columns: study.update()
    .where(_SAME_STUDY_CONDITION)
    .values({name: bindparam(name) for name in columns})
    for columns in (("last_received_at",), ("last_received_at", "unreleased"))
}
_TOUCH_SERIES = (
    series.update()
    .where(
        series.c.id == bindparam("series_pk"),
        series.c.series_instance_uid == bindparam("series_uid"),
        series.c.study_fk == bindparam("study_pk"),
    )
    .values(last_received_at=bindparam("now"))
)
# By dialect (False: SQLite, True: PostgreSQL); the values come as parameters.
_INSERT_INSTANCE = {
    postgres: dialect.insert(instance).on_conflict_do_nothing().returning(instance.c.id)
    for postgres, dialect in ((False, sqlite), (True, postgresql))
}


def insert_for(conn: Connection) -> Callable[[Table], Any]:
    """INSERT with ON CONFLICT support for the connection's dialect."""
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _upsert(
    conn: Connection,
    table: Table,
    values: dict[str, Any],
    unique: list[str],
    refreshed: tuple[str, ...],
    touched: dict[str, Any],
    returning: tuple[str, ...] = ("id",),
    kept: tuple[str, ...] = (),
) -> Any:
    """INSERT ... ON CONFLICT DO UPDATE, one statement on SQLite and PostgreSQL alike.

    On conflict the *refreshed* columns take the new values, except that a blank never erases
    a known value (the newest instance wins); *kept* columns keep a known value (a new one
    only fills a blank); *touched* columns are set.
    """
    statement = insert_for(conn)(table).values(**values)
    refresh = {name: func.coalesce(statement.excluded[name], table.c[name]) for name in refreshed}
    refresh |= {name: func.coalesce(table.c[name], statement.excluded[name]) for name in kept}
    statement = statement.on_conflict_do_update(
        index_elements=unique, set_=refresh | touched
    ).returning(*(table.c[name] for name in returning))
    return conn.execute(statement).one()


def _upsert_patient(
    conn: Connection, parsed: ParsedInstance, source: SourceRow, now: datetime
) -> int:
    p = parsed.patient
    values = {
        "facility_id": source.facility_id,
        "patient_id": p.PatientID,
        "issuer_of_patient_id": p.IssuerOfPatientID,
        "patient_name": p.PatientName,
        "patient_birth_date": p.PatientBirthDate,
        "patient_sex": p.PatientSex,
        "updated_at": now,
    }
    unique = ["facility_id", "patient_id", "issuer_of_patient_id"]
    identity = tuple(PATIENT_IDENTITY)
    # Instances without a PatientID share one patient row that identifies no one: its
    # attributes are kept as first stored (never renamed), and a difference is no evidence.
    if source.mode == "check" and p.PatientID:
        key = (patient.c[name] == values[name] for name in unique)
        _check_identity(conn, patient, key, PATIENT_IDENTITY, values, f"patient {p.PatientID!r}")
    refreshed, kept = (identity, ()) if source.mode == "correct" else ((), identity)
    (patient_pk,) = _upsert(
        conn, patient, values, unique, refreshed, {"updated_at": now}, kept=kept
    )
    return int(patient_pk)


def _check_identity(
    conn: Connection,
    table: Table,
    key: Any,
    columns: dict[str, str],
    values: dict[str, Any],
    what: str,
) -> None:
    """Raise ReplaceRefused when *values* would change a stored identifying attribute."""
    query = select(*(table.c[name] for name in columns)).where(*key)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    stored = conn.execute(query).one_or_none()
    if stored is None:
        return
    for (name, keyword), old in zip(columns.items(), stored, strict=True):
        new = values[name]
        was, will = same_value(name, old or ""), same_value(name, new or "")
        if was and will and was != will:  # a blank ("", "^^^^") is no change
            raise ReplaceRefused(
                f"{keyword} {new!r} differs from {old!r} stored for {what}; "
                "correcting it needs the replace permission",
                keyword,
            )


def same_value(column: str, value: str) -> str:
    """*value* as compared for a change: case, surrounding spaces and, in a person name, empty
    trailing components and groups do not count (``DOE^JOHN^^^`` is ``Doe^John``, ``^^^^`` is
    blank)."""
    if column != "patient_name":
        return value.strip().casefold()
    groups = ("^".join(c.strip() for c in group.split("^")) for group in value.split("="))
    return "=".join(g.rstrip("^") for g in groups).rstrip("=").casefold()


def _upsert_study(
    conn: Connection,
    parsed: ParsedInstance,
    patient_pk: int,
    source: SourceRow,
    now: datetime,
    touched: dict[str, Any],
) -> int:
    s = parsed.study
    values = {
        "study_instance_uid": s.StudyInstanceUID,
        "patient_fk": patient_pk,
        "study_date": s.StudyDate,
        "study_time": s.StudyTime,
        "accession_number": s.AccessionNumber,
        "study_id": s.StudyID,
        "study_description": s.StudyDescription,
        "referring_physician_name": s.ReferringPhysicianName,
        "created_at": now,
        "last_received_at": now,
        "unreleased": bool(touched.get("unreleased", False)),
    }
    if source.mode == "check":
        key = (study.c.study_instance_uid == s.StudyInstanceUID,)
        _check_identity(conn, study, key, STUDY_IDENTITY, values, f"study {s.StudyInstanceUID}")
    identity = tuple(STUDY_IDENTITY)
    refreshed = (
        "study_date",
        "study_time",
        "study_id",
        "study_description",
        "referring_physician_name",
    ) + (identity if source.mode == "correct" else ())
    study_pk, owner = _upsert(
        conn,
        study,
        values,
        ["study_instance_uid"],
        refreshed,
        touched,
        returning=("id", "patient_fk"),
        kept=() if source.mode == "correct" else identity,
    )
    if owner != patient_pk:
        raise InstanceConflict(
            f"study {s.StudyInstanceUID} belongs to another patient than "
            f"PatientID {parsed.patient.PatientID!r}"
        )
    return int(study_pk)


def _upsert_series(conn: Connection, parsed: ParsedInstance, study_pk: int, now: datetime) -> int:
    s = parsed.series
    values = {
        "series_instance_uid": s.SeriesInstanceUID,
        "study_fk": study_pk,
        "modality": s.Modality,
        "series_number": s.SeriesNumber,
        "series_description": s.SeriesDescription,
        "body_part_examined": s.BodyPartExamined,
        "created_at": now,
        "last_received_at": now,
    }
    refreshed = ("modality", "series_number", "series_description", "body_part_examined")
    series_pk, owner = _upsert(
        conn,
        series,
        values,
        ["series_instance_uid"],
        refreshed,
        {"last_received_at": now},
        returning=("id", "study_fk"),
    )
    if owner != study_pk:
        raise InstanceConflict(
            f"series {s.SeriesInstanceUID} belongs to another study than "
            f"{parsed.study.StudyInstanceUID}"
        )
    _refresh_modalities(conn, study_pk, s.Modality)
    return int(series_pk)


def _refresh_modalities(conn: Connection, study_pk: int, modality: str | None) -> None:
    """Keep ModalitiesInStudy (0008,0061) current when a series brings a new modality."""
    current = conn.execute(
        select(study.c.modalities_in_study).where(study.c.id == study_pk)
    ).scalar_one()
    if modality is None or modality in (current or "").split("\\"):
        return
    modalities = conn.execute(
        select(series.c.modality)
        .where(series.c.study_fk == study_pk, series.c.modality.is_not(None))
        .distinct()
    ).scalars()
    value = "\\".join(sorted(modalities))
    conn.execute(study.update().where(study.c.id == study_pk).values(modalities_in_study=value))


def _instance_values(
    parsed: ParsedInstance, blob: BlobRef, source: SourceRow, series_pk: int, now: datetime
) -> dict[str, Any]:
    i = parsed.instance
    return {
        "sop_instance_uid": i.SOPInstanceUID,
        "series_fk": series_pk,
        "facility_id": source.facility_id,
        "sop_class_uid": i.SOPClassUID,
        "instance_number": i.InstanceNumber,
        "transfer_syntax_uid": blob.transfer_syntax_uid,
        "rows": i.Rows,
        "columns": i.Columns,
        "number_of_frames": i.NumberOfFrames,
        "specific_character_set": i.SpecificCharacterSet,
        "blob_key": blob.key,
        "size": blob.size,
        "sha256": blob.sha256,
        "received_at": now,
        "source": source.protocol,
        "calling_ae": source.calling_ae,
        "remote_host": source.remote_host,
    }


def _append_change(
    conn: Connection,
    kind: changefeed.ChangeKind,
    uids: tuple[str, str],
    sop_uid: str,
    blob: BlobRef,
    now: datetime,
    previous: str | None = None,
) -> None:
    detail: dict[str, Any] = {"sha256": blob.sha256, "size": blob.size}
    if previous is not None:
        detail["previous_sha256"] = previous
    changefeed.append_change(
        conn,
        kind,
        uids[0],
        now=now,
        SeriesInstanceUID=uids[1],
        SOPInstanceUID=sop_uid,
        detail=detail,
    )
