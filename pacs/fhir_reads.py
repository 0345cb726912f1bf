"""Index reads behind the FHIR resources (no blob is ever opened), each in a facility scope.

Every read takes the caller's :class:`~pacs.facilities.Scope` and filters by it, as QIDO-RS
and C-FIND do: a study (or a patient, or an AI report) outside the scope is never found, so
a search, a read, an ``_include`` and the next page of a search all see the same studies.
A patient of another facility is visible only through a study shared into the scope, and
then with only the shared studies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, false, func, or_, select

from pacs.facilities import Scope
from pacs.index.schema import ai_run, instance, job, patient, review, series, study
from pacs.results import NODULE_DETECTION, Run, current_run
from pacs.review import SignedReport, signed_reports


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


def get_patient(conn: Connection, scope: Scope, fhir_id: str) -> PatientRow | None:
    """The patient with FHIR id *fhir_id* if *scope* sees it (its facility, or a shared study)."""
    row = conn.execute(
        select(*_PATIENT_COLUMNS).where(patient.c.fhir_id == fhir_id, scope.patient_condition())
    ).first()
    return None if row is None else PatientRow(*row)


def find_patients(
    conn: Connection,
    scope: Scope,
    conditions: list[ColumnElement[bool]],
    count: int,
    offset: int,
) -> tuple[int, list[PatientRow]]:
    """(total matches, one page of patients *scope* sees) in a stable order."""
    conditions = [*conditions, scope.patient_condition()]
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
    conn: Connection,
    scope: Scope,
    conditions: list[ColumnElement[bool]],
    count: int,
    offset: int,
) -> tuple[int, list[StudyRow]]:
    """(total matches, one page of studies *scope* sees) in a stable order."""
    conditions = [*conditions, scope.study_condition()]
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


@dataclass(frozen=True)
class Report:
    """A study's DiagnosticReport: its current AI run, and the radiologist's last signed
    report when there is one (then the report is final or amended, not partial)."""

    study: StudyRow
    run: Run
    signed: SignedReport | None

    @property
    def status(self) -> str:
        """R4 DiagnosticReport.status: ``partial`` while no radiologist has signed (the AI's
        unverified results; ``preliminary`` is for verified early results), ``final`` after
        the first signature, ``amended`` after a later one."""
        if self.signed is None:
            return "partial"
        return "final" if self.signed.revision == 1 else "amended"

    @property
    def observations(self) -> int:
        """How many Observations the report has: the signed nodules, else the AI's findings."""
        return len(self.signed.nodules if self.signed else self.run.findings)

    def number(self, index: int) -> int:
        """The number in the Observation id of the report's *index*-th nodule: the AI's
        finding number, kept when a radiologist signs (a rejected finding leaves a gap, an
        added nodule takes the next free one), so an id names one nodule for good."""
        return self.signed.numbers[index] if self.signed else index + 1

    def index_of(self, number: int) -> int | None:
        """The nodule whose Observation id ends in *number*, if the report has one."""
        numbers = self.signed.numbers if self.signed else range(1, len(self.run.findings) + 1)
        return numbers.index(number) if number in numbers else None

    @property
    def series(self) -> str | None:
        """The CT series the nodules' coordinates are in: the reviewed one once signed."""
        return self.signed.analysed_series if self.signed else self.run.SeriesInstanceUID


#: DiagnosticReport statuses we serve, as conditions on the study's review.
_SIGNED = select(review.c.study_instance_uid).where(review.c.signed_report.is_not(None))
REPORT_STATUSES: dict[str, ColumnElement[bool]] = {
    "partial": study.c.study_instance_uid.not_in(_SIGNED),
    "final": study.c.study_instance_uid.in_(_SIGNED.where(review.c.revision == 1)),
    "amended": study.c.study_instance_uid.in_(_SIGNED.where(review.c.revision > 1)),
}


def report_status(statuses: set[str]) -> ColumnElement[bool]:
    """Reports in any of *statuses* (a status we never serve matches nothing)."""
    known = [REPORT_STATUSES[s] for s in sorted(statuses) if s in REPORT_STATUSES]
    return or_(*known) if known else false()


def current_reports(
    conn: Connection,
    scope: Scope,
    conditions: list[ColumnElement[bool]],
    count: int,
    offset: int,
) -> tuple[int, list[Report]]:
    """Studies *scope* sees with a current AI run (their DiagnosticReports), paged."""
    with_run = (
        select(ai_run.c.study_instance_uid)
        .join(job, job.c.id == ai_run.c.job_id)
        .where(job.c.kind == NODULE_DETECTION)
    )
    total, studies = find_studies(
        conn, scope, [*conditions, study.c.study_instance_uid.in_(with_run)], count, offset
    )
    signed = signed_reports(conn, [s.StudyInstanceUID for s in studies])
    reports = []
    for s in studies:
        run = current_run(conn, s.StudyInstanceUID)
        if run is not None:
            reports.append(Report(s, run, signed.get(s.StudyInstanceUID)))
    return total, reports


def study_of_run(conn: Connection, scope: Scope, run_id: int) -> str | None:
    """The study AI run *run_id* analysed, if *scope* sees it."""
    row = conn.execute(
        select(ai_run.c.study_instance_uid)
        .join(study, study.c.study_instance_uid == ai_run.c.study_instance_uid)
        .where(ai_run.c.id == run_id, scope.study_condition())
    ).first()
    return None if row is None else str(row[0])
