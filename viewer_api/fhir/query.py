"""Index reads behind the FHIR resources (no blob is ever opened)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, false, func, select

from pacs.index.schema import ai_run, instance, job, patient, series, study
from pacs.results import NODULE_DETECTION, Run, current_run


@dataclass(frozen=True)
class PatientRow:
    id: str  # the opaque FHIR id (patient.fhir_id), never the row's sequence number
    PatientID: str
    IssuerOfPatientID: str
    PatientName: str | None
    PatientBirthDate: str | None
    PatientSex: str | None


@dataclass(frozen=True)
class SeriesRow:
    SeriesInstanceUID: str
    Modality: str | None
    SeriesNumber: int | None
    SeriesDescription: str | None
    BodyPartExamined: str | None
    instances: int


@dataclass(frozen=True)
class StudyRow:
    StudyInstanceUID: str
    patient: PatientRow
    StudyDate: str | None
    StudyTime: str | None
    AccessionNumber: str | None
    StudyDescription: str | None
    ModalitiesInStudy: str | None
    last_received_at: datetime
    series: list[SeriesRow]


_PATIENT_COLUMNS = (
    patient.c.fhir_id,
    patient.c.patient_id,
    patient.c.issuer_of_patient_id,
    patient.c.patient_name,
    patient.c.patient_birth_date,
    patient.c.patient_sex,
)


def get_patient(conn: Connection, fhir_id: str) -> PatientRow | None:
    row = conn.execute(select(*_PATIENT_COLUMNS).where(patient.c.fhir_id == fhir_id)).first()
    return None if row is None else PatientRow(*row)


def find_patients(
    conn: Connection, conditions: list[ColumnElement[bool]], count: int, offset: int
) -> tuple[int, list[PatientRow]]:
    """(total matches, one page of patients) in a stable order."""
    base = select(patient.c.id).where(*conditions)
    total = int(conn.execute(select(func.count()).select_from(base.subquery())).scalar_one())
    rows = conn.execute(
        select(*_PATIENT_COLUMNS)
        .where(*conditions)
        .order_by(patient.c.id)
        .limit(count)
        .offset(offset)
    ).all()
    return total, [PatientRow(*r) for r in rows]


def patient_identifier(system: str | None, issuers: list[str], value: str) -> ColumnElement[bool]:
    """Patients with PatientID *value*, and (unless *system* is None, any issuer) one of the
    IssuerOfPatientID values *issuers* (empty: none can match)."""
    condition: ColumnElement[bool] = patient.c.patient_id == value
    if system is None:
        return condition
    if not issuers:
        return false()
    return and_(condition, patient.c.issuer_of_patient_id.in_(issuers))


def patient_fhir_id(fhir_id: str) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = patient.c.fhir_id == fhir_id
    return condition


def find_studies(
    conn: Connection, conditions: list[ColumnElement[bool]], count: int, offset: int
) -> tuple[int, list[StudyRow]]:
    """(total matches, one page of studies) in a stable order."""
    base = select(study.c.id).join(patient, patient.c.id == study.c.patient_fk).where(*conditions)
    total = int(conn.execute(select(func.count()).select_from(base.subquery())).scalar_one())
    rows = conn.execute(
        select(
            study.c.id,
            study.c.study_instance_uid,
            study.c.study_date,
            study.c.study_time,
            study.c.accession_number,
            study.c.study_description,
            study.c.modalities_in_study,
            study.c.last_received_at,
            *_PATIENT_COLUMNS,
        )
        .join(patient, patient.c.id == study.c.patient_fk)
        .where(*conditions)
        .order_by(study.c.id)
        .limit(count)
        .offset(offset)
    ).all()
    return total, [_study(conn, r) for r in rows]


def _study(conn: Connection, r: Any) -> StudyRow:
    counted = conn.execute(
        select(
            series.c.series_instance_uid,
            series.c.modality,
            series.c.series_number,
            series.c.series_description,
            series.c.body_part_examined,
            func.count(instance.c.id),
        )
        .join(instance, instance.c.series_fk == series.c.id)
        .where(series.c.study_fk == r[0])
        .group_by(series.c.id)
        .order_by(series.c.series_number, series.c.id)
    ).all()
    return StudyRow(
        StudyInstanceUID=r[1],
        StudyDate=r[2],
        StudyTime=r[3],
        AccessionNumber=r[4],
        StudyDescription=r[5],
        ModalitiesInStudy=r[6],
        last_received_at=r[7],
        patient=PatientRow(*r[8:14]),
        series=[SeriesRow(*s) for s in counted],
    )


def study_conditions() -> dict[str, Any]:
    """Columns FHIR search parameters match on."""
    return {
        "uid": study.c.study_instance_uid,
        "accession": study.c.accession_number,
        "updated": study.c.last_received_at,
    }


def current_reports(
    conn: Connection, conditions: list[ColumnElement[bool]], count: int, offset: int
) -> tuple[int, list[tuple[StudyRow, Run]]]:
    """Studies with a current AI run (their DiagnosticReports), paged."""
    with_run = (
        select(ai_run.c.study_instance_uid)
        .join(job, job.c.id == ai_run.c.job_id)
        .where(job.c.kind == NODULE_DETECTION)
    )
    total, studies = find_studies(
        conn, [*conditions, study.c.study_instance_uid.in_(with_run)], count, offset
    )
    reports = []
    for s in studies:
        run = current_run(conn, s.StudyInstanceUID)
        if run is not None:
            reports.append((s, run))
    return total, reports


def study_of_run(conn: Connection, run_id: int) -> str | None:
    row = conn.execute(select(ai_run.c.study_instance_uid).where(ai_run.c.id == run_id)).first()
    return None if row is None else str(row[0])
