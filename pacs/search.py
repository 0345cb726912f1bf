"""Search of the index: one implementation of matching for C-FIND now and QIDO-RS later.

Matching follows PS3.4 C.2.2.2: single value, universal (empty value: return the attribute,
no constraint), wild card (``*`` and ``?``), range (``A-B``, ``-B``, ``A-`` for DA, TM, DT),
list of UIDs (backslash-separated). Person names match case-insensitively, as most archives
do (PS3.4 C.2.2.2.1 leaves it to the implementation).

Every matching value is checked against its VR (PS3.5 6.2) when a :class:`Query` is built, so
that QIDO-RS and C-FIND refuse the same malformed values with the same reason instead of
matching nothing (or reaching the database with a number it cannot hold).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.sql.type_api import TypeEngine

from pacs.errors import QueryError
from pacs.facilities import Scope, bound_study_condition
from pacs.index.schema import instance, patient, series, study
from pacs.matching import INTEGER_RANGES, RANGED_VRS, checked_value, range_bounds


class Level(enum.Enum):
    """Query/Retrieve levels (PS3.4 C.3)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: Level
    vr: str
    column: Any  # a table column, or a correlated count for computed attributes


# Each count correlates with its own level's table only: a deeper query also has the tables the
# count joins in its FROM, and auto-correlation would take those too (no FROM clause left, or a
# count of the wrong scope: issue 10 item 1, includefield=all).
_STUDY_SERIES = (
    select(func.count(series.c.id))
    .where(series.c.study_fk == study.c.id)
    .correlate(study)
    .scalar_subquery()
)
_STUDY_INSTANCES = (
    select(func.count(instance.c.id))
    .join(series, series.c.id == instance.c.series_fk)
    .where(series.c.study_fk == study.c.id)
    .correlate(study)
    .scalar_subquery()
)
_SERIES_INSTANCES = (
    select(func.count(instance.c.id))
    .where(instance.c.series_fk == series.c.id)
    .correlate(series)
    .scalar_subquery()
)
_PATIENT_STUDIES = (
    select(func.count(study.c.id))
    .where(study.c.patient_fk == patient.c.id)
    .correlate(patient)
    .scalar_subquery()
)
_PATIENT_SERIES = (
    select(func.count(series.c.id))
    .join(study, study.c.id == series.c.study_fk)
    .where(study.c.patient_fk == patient.c.id)
    .correlate(patient)
    .scalar_subquery()
)
_PATIENT_INSTANCES = (
    select(func.count(instance.c.id))
    .join(series, series.c.id == instance.c.series_fk)
    .join(study, study.c.id == series.c.study_fk)
    .where(study.c.patient_fk == patient.c.id)
    .correlate(patient)
    .scalar_subquery()
)


class _DistinctValues(FunctionElement[str]):
    """The distinct values of a column, backslash-separated as a DICOM multi-value."""

    inherit_cache = True
    name = "distinct_values"
    type: TypeEngine[str]


@compiles(_DistinctValues, "sqlite")
def _sqlite_distinct_values(element: _DistinctValues, compiler: Any, **kw: Any) -> str:
    # SQLite's group_concat(DISTINCT x) takes no separator; UIDs never contain a comma.
    return f"replace(group_concat(DISTINCT {compiler.process(element.clauses, **kw)}), ',', '\\')"


@compiles(_DistinctValues, "postgresql")
def _postgresql_distinct_values(element: _DistinctValues, compiler: Any, **kw: Any) -> str:
    return f"string_agg(DISTINCT {compiler.process(element.clauses, **kw)}, '\\')"


_STUDY_SOP_CLASSES = (
    select(_DistinctValues(instance.c.sop_class_uid))
    .join(series, series.c.id == instance.c.series_fk)
    .where(series.c.study_fk == study.c.id)
    .correlate(study)
    .scalar_subquery()
)

ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in (
        Attribute("PatientName", Level.PATIENT, "PN", patient.c.patient_name),
        Attribute("PatientID", Level.PATIENT, "LO", patient.c.patient_id),
        Attribute("IssuerOfPatientID", Level.PATIENT, "LO", patient.c.issuer_of_patient_id),
        Attribute("PatientBirthDate", Level.PATIENT, "DA", patient.c.patient_birth_date),
        Attribute("PatientSex", Level.PATIENT, "CS", patient.c.patient_sex),
        Attribute("NumberOfPatientRelatedStudies", Level.PATIENT, "IS", _PATIENT_STUDIES),
        Attribute("NumberOfPatientRelatedSeries", Level.PATIENT, "IS", _PATIENT_SERIES),
        Attribute("NumberOfPatientRelatedInstances", Level.PATIENT, "IS", _PATIENT_INSTANCES),
        Attribute("StudyInstanceUID", Level.STUDY, "UI", study.c.study_instance_uid),
        Attribute("StudyDate", Level.STUDY, "DA", study.c.study_date),
        Attribute("StudyTime", Level.STUDY, "TM", study.c.study_time),
        Attribute("AccessionNumber", Level.STUDY, "SH", study.c.accession_number),
        Attribute("StudyID", Level.STUDY, "SH", study.c.study_id),
        Attribute("StudyDescription", Level.STUDY, "LO", study.c.study_description),
        Attribute("ReferringPhysicianName", Level.STUDY, "PN", study.c.referring_physician_name),
        Attribute("ModalitiesInStudy", Level.STUDY, "CS", study.c.modalities_in_study),
        Attribute("SOPClassesInStudy", Level.STUDY, "UI", _STUDY_SOP_CLASSES),
        Attribute("NumberOfStudyRelatedSeries", Level.STUDY, "IS", _STUDY_SERIES),
        Attribute("NumberOfStudyRelatedInstances", Level.STUDY, "IS", _STUDY_INSTANCES),
        Attribute("SeriesInstanceUID", Level.SERIES, "UI", series.c.series_instance_uid),
        Attribute("Modality", Level.SERIES, "CS", series.c.modality),
        Attribute("SeriesNumber", Level.SERIES, "IS", series.c.series_number),
        Attribute("SeriesDescription", Level.SERIES, "LO", series.c.series_description),
        Attribute("BodyPartExamined", Level.SERIES, "CS", series.c.body_part_examined),
        Attribute("NumberOfSeriesRelatedInstances", Level.SERIES, "IS", _SERIES_INSTANCES),
        Attribute("SOPInstanceUID", Level.IMAGE, "UI", instance.c.sop_instance_uid),
        Attribute("SOPClassUID", Level.IMAGE, "UI", instance.c.sop_class_uid),
        Attribute("InstanceNumber", Level.IMAGE, "IS", instance.c.instance_number),
        Attribute("Rows", Level.IMAGE, "US", instance.c.rows),
        Attribute("Columns", Level.IMAGE, "US", instance.c.columns),
        Attribute("NumberOfFrames", Level.IMAGE, "IS", instance.c.number_of_frames),
    )
}
UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
# Multi-valued attributes of the study: a match holds any of the requested values.
MULTI_VALUED = frozenset(("ModalitiesInStudy", "SOPClassesInStudy"))
_TABLES = {Level.PATIENT: patient, Level.STUDY: study, Level.SERIES: series, Level.IMAGE: instance}


@dataclass(frozen=True)
class Query:
    """What to match and what to return, at one level.

    Attributes
    ----------
    level : Level
        The level of the entities returned.
    matching : dict
        Keyword -> matching value, PS3.4 C.2.2.2; checked by VR and normalized on
        construction (empty and "*" values, universal matching, are dropped).
    returned : tuple of str
        Keywords whose values each match carries (the level's unique key always).
    limit, offset : int
        Paging of the matches, in a stable order.
    scope : Scope
        The facilities whose studies may match (required, by keyword: a search that forgets
        whose it is cannot be written).
    """

    level: Level
    matching: dict[str, str]
    returned: tuple[str, ...]
    limit: int = 1000
    offset: int = 0
    scope: Scope = field(kw_only=True)

    def __post_init__(self) -> None:
        """Raises QueryError: an unknown key, one below the level, or a malformed value."""
        depth = _DEPTH[self.level]
        for keyword in (*self.matching, *self.returned):
            attribute = ATTRIBUTES.get(keyword)
            if attribute is None:
                raise QueryError(f"{keyword} cannot be searched on")
            if _DEPTH[attribute.level] > depth:
                raise QueryError(f"{keyword} is below the {self.level.value} level")
        if self.limit < 0 or self.offset < 0:
            raise QueryError("limit and offset must not be negative")
        matching = {}
        for keyword, value in self.matching.items():
            if value.strip() in ("", "*"):
                continue  # universal matching (PS3.4 C.2.2.2.3): no constraint
            attribute = ATTRIBUTES[keyword]
            matching[keyword] = checked_value(keyword, attribute.vr, value)
        object.__setattr__(self, "matching", matching)  # normalized, still frozen


@dataclass(frozen=True)
class StoredInstance:
    """An instance to retrieve: what a C-STORE sub-operation needs, and where its blob is."""

    SOPClassUID: str
    SOPInstanceUID: str
    TransferSyntaxUID: str
    blob_key: str


def search(conn: Connection, query: Query) -> Iterator[dict[str, Any]]:
    """Run *query*; yield one dict of keyword -> value per match (values as indexed)."""
    returned = dict.fromkeys((UNIQUE_KEYS[query.level], *query.returned))
    columns = [ATTRIBUTES[k].column.label(k) for k in returned]
    statement = _matching(query, columns).limit(query.limit).offset(query.offset)
    keys = list(returned)
    for row in conn.execute(statement):
        yield dict(zip(keys, row, strict=True))


def count_matches(conn: Connection, query: Query) -> int:
    """How many entities *query* matches, ignoring its limit and offset (same conditions as
    :func:`search`): what a paged answer needs to say how many more results there are."""
    matched = _matching(query, [_TABLES[query.level].c.id]).order_by(None).subquery()
    return int(conn.execute(select(func.count()).select_from(matched)).scalar_one())


def matching_instances(conn: Connection, query: Query) -> list[StoredInstance]:
    """Every instance in or under the entities *query* matches (for C-MOVE and C-GET)."""
    columns = [
        instance.c.sop_class_uid,
        instance.c.sop_instance_uid,
        instance.c.transfer_syntax_uid,
        instance.c.blob_key,
    ]
    below = Query(Level.IMAGE, query.matching, (), scope=query.scope)
    return [StoredInstance(*row) for row in conn.execute(_matching(below, columns))]


def find_instance(
    conn: Connection,
    scope: Scope,
    StudyInstanceUID: str,
    SeriesInstanceUID: str,
    SOPInstanceUID: str,
) -> StoredInstance | None:
    """The instance *SOPInstanceUID* of that series of that study, if *scope* sees the study:
    one row found by the SOP Instance UID (what a frame or an instance's metadata needs;
    :func:`matching_instances` builds the search of every level for it), by a statement
    built once (building it cost more than running it)."""
    uids = {"study": StudyInstanceUID, "series": SeriesInstanceUID, "sop": SOPInstanceUID}
    if scope.is_global:
        row = conn.execute(_FIND_INSTANCE, uids).one_or_none()
    elif scope.facilities:
        row = conn.execute(_FIND_SCOPED_INSTANCE, uids | scope.parameters()).one_or_none()
    else:
        return None  # an empty scope sees nothing
    return None if row is None else StoredInstance(*row)


_FIND_INSTANCE = (
    select(
        instance.c.sop_class_uid,
        instance.c.sop_instance_uid,
        instance.c.transfer_syntax_uid,
        instance.c.blob_key,
    )
    .join(series, series.c.id == instance.c.series_fk)
    .join(study, study.c.id == series.c.study_fk)
    .where(
        instance.c.sop_instance_uid == bindparam("sop"),
        series.c.series_instance_uid == bindparam("series"),
        study.c.study_instance_uid == bindparam("study"),
    )
)
_FIND_SCOPED_INSTANCE = _FIND_INSTANCE.where(bound_study_condition())


def matching_condition(query: Query) -> ColumnElement[bool]:
    """The condition *query*'s matching values and scope put on the patient, study, series and
    instance tables, for a statement that joins those tables itself (the worklist)."""
    conditions = [_condition(ATTRIBUTES[k], v) for k, v in query.matching.items()]
    visible = (
        query.scope.patient_condition()
        if query.level is Level.PATIENT
        else query.scope.study_condition()
    )
    return and_(literal(True), visible, *conditions)


def _matching(query: Query, columns: list[Any]) -> Select[Any]:
    return (
        select(*columns)
        .select_from(_joined(query.level))
        .where(matching_condition(query))
        .order_by(_TABLES[query.level].c.id)
    )


def _joined(level: Level) -> Any:
    joined: Any = patient
    if _DEPTH[level] >= 1:
        joined = joined.join(study, study.c.patient_fk == patient.c.id)
    if _DEPTH[level] >= 2:
        joined = joined.join(series, series.c.study_fk == study.c.id)
    if _DEPTH[level] >= 3:
        joined = joined.join(instance, instance.c.series_fk == series.c.id)
    return joined


def _condition(attribute: Attribute, value: str) -> ColumnElement[bool]:
    column = attribute.column
    values = value.split("\\")
    if attribute.keyword == "ModalitiesInStudy":  # any of the requested modalities
        padded = literal("\\") + func.coalesce(column, "") + literal("\\")
        return or_(*(padded.like(f"%\\{_like(v)}\\%", escape="!") for v in values))
    if attribute.keyword == "SOPClassesInStudy":  # any instance of a requested class
        return exists(
            select(instance.c.id)
            .join(series, series.c.id == instance.c.series_fk)
            .where(series.c.study_fk == study.c.id, instance.c.sop_class_uid.in_(values))
        )
    if len(values) > 1:  # list of UIDs (C.2.2.2.2) or of values
        if attribute.vr in RANGED_VRS or any(c in value for c in "*?"):
            return or_(*(_condition(attribute, v) for v in values))
        # One IN list, not a chain of ORs: SQLite limits how deep an expression may nest.
        if attribute.vr in INTEGER_RANGES:
            return column.in_([int(v) for v in values])  # type: ignore[no-any-return]
        if attribute.vr == "PN":
            return func.lower(column).in_([v.lower() for v in values])
        return column.in_(values)  # type: ignore[no-any-return]
    if attribute.vr in INTEGER_RANGES:
        return column == int(value)  # type: ignore[no-any-return]
    found = range_bounds(attribute.vr, value) if attribute.vr in RANGED_VRS else None
    if found is not None:
        low, high = found
        bounds = [column >= low] if low else []
        bounds += [column <= high + "\uffff"] if high else []  # "-20240101" includes that day
        return and_(*bounds)
    if attribute.vr == "UI" or not any(c in value for c in "*?"):
        if attribute.vr == "PN":
            return func.lower(column) == value.lower()
        return column == value  # type: ignore[no-any-return]
    pattern = _like(value).replace("*", "%").replace("?", "_")
    if attribute.vr == "PN":
        return func.lower(column).like(pattern.lower(), escape="!")
    return column.like(pattern, escape="!")  # type: ignore[no-any-return]


def _like(value: str) -> str:
    """Escape LIKE's own wild cards so that only DICOM's * and ? act as ones."""
    return value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
