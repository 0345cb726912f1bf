"""What each resource type can be searched by, and search parameters -> SQL conditions.

One table (SEARCHES) says which parameters, chains, ``_include`` and ``_revinclude`` values each
type accepts; the CapabilityStatement is drawn from it, and a parameter outside it is a 400
rather than silently ignored (an ignored ``patient.identifier`` would return every patient's
reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, false, or_
from starlette.datastructures import QueryParams

from pacs import fhir_reads as query
from pacs.uids import is_valid_uid
from viewer_api.fhir import params
from viewer_api.fhir.resources import DICOM_UID, issuers_of_system
from viewer_api.problems import BadRequest

#: Parameters every search takes (R4 3.1.1.5): paging, summary and format.
RESULT_PARAMETERS = frozenset({"_count", "_offset", "_summary", "_total", "_format", "_pretty"})
#: The reference parameters to a study's Patient, and their chained ``identifier`` spellings
#: (R4 3.1.1.4.13 chaining, 3.1.1.4.9 ``:identifier`` modifier).
PATIENT_REFERENCES = ("patient", "patient:Patient", "subject", "subject:Patient")
PATIENT_CHAINS = (
    "patient.identifier",
    "patient:Patient.identifier",
    "subject.identifier",
    "subject:Patient.identifier",
    "patient:identifier",
    "subject:identifier",
)
#: DiagnosticReport.imagingStudy has no R4 core search parameter; ``imaging-study`` is the name
#: used by IGs (and ``study``, ``imagingStudy`` are accepted as aliases).
IMAGING_STUDY_REFERENCES = ("imaging-study", "imagingStudy", "study")


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    documentation: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResourceSearch:
    parameters: tuple[Parameter, ...]
    #: ``_include`` values (``Type:param``) -> the kind of resource they add.
    includes: dict[str, str] = field(default_factory=dict)
    revincludes: dict[str, str] = field(default_factory=dict)

    def accepted(self) -> frozenset[str]:
        names = {n for p in self.parameters for n in (p.name, *p.aliases)}
        if self.includes:
            names.add("_include")
        if self.revincludes:
            names.add("_revinclude")
        return frozenset(names | RESULT_PARAMETERS)


_PATIENT_PARAMETERS = (
    Parameter(
        "patient",
        "reference",
        "Patient/<id>; chained: patient.identifier=[system]|MRN "
        "(also subject, subject:Patient.identifier, patient:identifier)",
        (*PATIENT_REFERENCES[1:], *PATIENT_CHAINS),
    ),
)
_REPORT_INCLUDES = {
    "DiagnosticReport:imaging-study": "ImagingStudy",
    "DiagnosticReport:imagingStudy": "ImagingStudy",
    "DiagnosticReport:study": "ImagingStudy",
    "DiagnosticReport:patient": "Patient",
    "DiagnosticReport:subject": "Patient",
    "DiagnosticReport:result": "Observation",
}
SEARCHES: dict[str, ResourceSearch] = {
    "ImagingStudy": ResourceSearch(
        (
            *_PATIENT_PARAMETERS,
            Parameter("_id", "token", "the Study Instance UID"),
            Parameter("identifier", "token", "urn:dicom:uid|urn:oid:<uid>, or an accession"),
            Parameter("_lastUpdated", "date", "when the study last received an instance"),
        ),
        {
            "ImagingStudy:patient": "Patient",
            "ImagingStudy:subject": "Patient",
            "ImagingStudy:endpoint": "Endpoint",
        },
        {f"DiagnosticReport:{name}": "DiagnosticReport" for name in IMAGING_STUDY_REFERENCES},
    ),
    "DiagnosticReport": ResourceSearch(
        (
            *_PATIENT_PARAMETERS,
            Parameter(
                "imaging-study",
                "reference",
                "ImagingStudy/<Study Instance UID> (aliases: study, imagingStudy)",
                IMAGING_STUDY_REFERENCES[1:],
            ),
            Parameter("status", "token", "partial until a radiologist signs; then final, amended"),
        ),
        _REPORT_INCLUDES,
    ),
    "Patient": ResourceSearch(
        (
            Parameter("identifier", "token", "[system]|PatientID (system from IssuerOfPatientID)"),
            Parameter("_id", "token", "the Patient id"),
        )
    ),
}


# Each alternative and each repeated parameter is one more term of an OR or AND chain, which
# the database parses as a tree of bounded depth (SQLite: 1,000): bound both well below it.
MAX_ALTERNATIVES = 100
MAX_PARAMETERS = 50


def check(resource_type: str, query_params: QueryParams) -> None:
    """Refuse parameters the type cannot be searched by (R4 3.1.1.5: a server may reject),
    and searches too large to run."""
    accepted = SEARCHES[resource_type].accepted()
    items = query_params.multi_items()
    if len(items) > MAX_PARAMETERS:
        raise BadRequest(f"{len(items)} search parameters; at most {MAX_PARAMETERS} are allowed")
    for name, value in items:
        if name not in accepted:
            raise BadRequest(f"{resource_type} cannot be searched by {name!r}")
        if "\x00" in value:
            raise BadRequest(f"{name} contains a NUL character")
        alternatives = len(params.split_or(value))
        if alternatives > MAX_ALTERNATIVES:
            raise BadRequest(
                f"{name} has {alternatives} alternatives; at most {MAX_ALTERNATIVES} are allowed"
            )


def includes(resource_type: str, query_params: QueryParams, kind: str) -> set[str]:
    """The resource types that ``_include`` (*kind*) or ``_revinclude`` values ask for."""
    search = SEARCHES[resource_type]
    table = search.includes if kind == "_include" else search.revincludes
    wanted = set()
    for value in query_params.getlist(kind):
        if value == "*" and kind == "_include":
            wanted |= set(table.values())
        elif value in table:
            wanted.add(table[value])
        else:
            raise BadRequest(f"{kind}={value!r} is not supported on {resource_type}")
    return wanted


def patient_conditions(query_params: QueryParams) -> list[ColumnElement[bool]]:
    """Conditions on the study's patient: references and chained identifiers (each parameter
    repeated is AND, comma-separated values OR)."""
    conditions: list[ColumnElement[bool]] = []
    for name in PATIENT_REFERENCES:
        for value in query_params.getlist(name):
            ids = [params.reference_id(name, v, "Patient") for v in params.split_or(value)]
            conditions.append(or_(*(query.patient_fhir_id(i) for i in ids)))
    for name in PATIENT_CHAINS:
        for value in query_params.getlist(name):
            conditions.append(identifier_condition(name, value))
    return conditions


def identifier_condition(name: str, value: str) -> ColumnElement[bool]:
    """A Patient identifier token (R4 3.1.1.4.9): ``system|MRN`` matches that system only,
    ``|MRN`` identifiers without a system (we send none such), ``MRN`` any system."""
    alternatives = []
    for part in params.split_or(value):
        t = params.token(name, part)
        issuers = [] if t.system is None else issuers_of_system(t.system)
        alternatives.append(query.patient_identifier(t.system, issuers, t.code))
    return or_(*alternatives)


def ids(value: str) -> list[str]:
    """``_id`` values (comma-separated OR); an impossible id simply matches nothing."""
    return [v for v in params.split_or(value) if params.ID.fullmatch(v)] or [""]


def study_conditions(query_params: QueryParams) -> list[ColumnElement[bool]]:
    """ImagingStudy (and, through its study, DiagnosticReport) conditions."""
    columns = query.study_conditions()
    conditions = patient_conditions(query_params)
    for value in query_params.getlist("_id"):
        conditions.append(columns["uid"].in_(ids(value)))
    for value in query_params.getlist("identifier"):
        alternatives = []
        for part in params.split_or(value):
            t = params.token("identifier", part)
            if t.system in (None, DICOM_UID) and t.code.startswith("urn:oid:"):
                alternatives.append(columns["uid"] == t.code.removeprefix("urn:oid:"))
            elif t.system is None and is_valid_uid(t.code):
                alternatives.append((columns["uid"] == t.code) | (columns["accession"] == t.code))
            elif t.system is None:
                alternatives.append(columns["accession"] == t.code)
            else:
                alternatives.append(false())  # accessions are sent without a system
        conditions.append(or_(*alternatives))
    for value in query_params.getlist("_lastUpdated"):
        ranges = [params.date("_lastUpdated", v) for v in params.split_or(value)]
        conditions.append(or_(*(_date_condition(columns["updated"], r) for r in ranges)))
    return conditions


def _date_condition(column: ColumnElement[object], r: params.DateRange) -> ColumnElement[bool]:
    """R4 3.1.1.4.2: the column (a point in time) against the value's interval [low, high)."""
    low, high = r.low, r.high
    match r.prefix:
        case "gt" | "sa":
            return column >= high
        case "lt" | "eb":
            return column < low
        case "ge":
            return column >= low
        case "le":
            return column < high
        case "ne":
            return (column < low) | (column >= high)
        case _:  # eq, ap
            return (column >= low) & (column < high)
