"""Index rows -> FHIR R4 resources (JSON dicts), following the IHE IDR profile's shape."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pacs.fhir_reads import PatientRow, Report, StudyRow
from pacs.results import Character, Run
from pacs.review import Origin

DICOM_UID = "urn:dicom:uid"
#: Identifier system for a PatientID without IssuerOfPatientID (a local identifier).
LOCAL_PATIENT_ID = "urn:pacs-ai:patient-id"
#: Identifier system for an IssuerOfPatientID that is not a URI (e.g. ``HOSP``).
ISSUER_PREFIX = "urn:pacs-ai:issuer:"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
#: Our own codes where PS3.16 / SNOMED have none we could confirm: the nodule's type (solid,
#: part-solid, ground-glass) and its solid component's diameter (the DICOM SR uses the same
#: values under coding scheme 99PACSAI).
NODULE_CHARACTER = "urn:pacs-ai:nodule-character"
WADO_ENDPOINT_ID = "wado-rs"


def patient_resource(p: PatientRow) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(p.id),
        "identifier": [{"system": _patient_system(p), "value": p.PatientID}],
    }
    if p.PatientName:
        family, _, given = p.PatientName.partition("^")
        name: dict[str, Any] = {"text": p.PatientName.replace("^", " ").strip()}
        if family:
            name["family"] = family
        if given:
            name["given"] = [g for g in given.split("^") if g][:1] or [given]
        resource["name"] = [name]
    gender = {"M": "male", "F": "female", "O": "other"}.get((p.PatientSex or "").upper())
    if gender:
        resource["gender"] = gender
    birth = _date(p.PatientBirthDate)
    if birth:
        resource["birthDate"] = birth
    return resource


def _patient_system(p: PatientRow) -> str:
    issuer = p.IssuerOfPatientID
    if not issuer:
        return LOCAL_PATIENT_ID
    return issuer if ":" in issuer else f"{ISSUER_PREFIX}{issuer}"


def issuers_of_system(system: str) -> list[str]:
    """The IssuerOfPatientID values whose Patient.identifier.system is *system* (the inverse of
    the mapping above; empty for a system we never send, e.g. "" or a bare word)."""
    if system == LOCAL_PATIENT_ID:
        return [""]
    issuers = [system] if ":" in system else []
    named = system.removeprefix(ISSUER_PREFIX)
    if system.startswith(ISSUER_PREFIX) and named and ":" not in named:
        issuers.append(named)
    return issuers


def endpoint_resource(wado_base: str) -> dict[str, Any]:
    return {
        "resourceType": "Endpoint",
        "id": WADO_ENDPOINT_ID,
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM WADO-RS"}],
        "payloadMimeType": ["application/dicom"],
        "address": wado_base,
    }


def imaging_study_resource(s: StudyRow) -> dict[str, Any]:
    identifiers: list[dict[str, Any]] = [
        {"system": DICOM_UID, "value": f"urn:oid:{s.StudyInstanceUID}"}
    ]
    if s.AccessionNumber:
        identifiers.append(
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "value": s.AccessionNumber,
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": s.StudyInstanceUID,
        "meta": {"lastUpdated": _instant(s.last_received_at)},
        "identifier": identifiers,
        "status": "available",
        "subject": {"reference": f"Patient/{s.patient.id}"},
        "endpoint": [{"reference": f"Endpoint/{WADO_ENDPOINT_ID}"}],
        "numberOfSeries": len(s.series),
        "numberOfInstances": sum(x.instances for x in s.series),
        "series": [_series(x) for x in s.series],
    }
    modalities = sorted({x.Modality for x in s.series if x.Modality})
    if modalities:
        resource["modality"] = [_modality(m) for m in modalities]
    started = _datetime(s.StudyDate, s.StudyTime)
    if started:
        resource["started"] = started
    if s.StudyDescription:
        resource["description"] = s.StudyDescription
    return resource


def _series(x: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "uid": x.SeriesInstanceUID,
        "modality": _modality(x.Modality or "OT"),
        "numberOfInstances": x.instances,
        "endpoint": [{"reference": f"Endpoint/{WADO_ENDPOINT_ID}"}],
    }
    if x.SeriesNumber is not None:
        item["number"] = x.SeriesNumber
    if x.SeriesDescription:
        item["description"] = x.SeriesDescription
    if x.BodyPartExamined:
        item["bodySite"] = {"display": x.BodyPartExamined}
    return item


def _modality(code: str) -> dict[str, str]:
    return {"system": DCM, "code": code}


def report_id(run: Run) -> str:
    return f"ai-{run.id}"


def observation_id(report: Report, index: int) -> str:
    return f"ai-{report.run.id}-{report.number(index)}"


def diagnostic_report_resource(report: Report) -> dict[str, Any]:
    """A study's report: the AI's (``partial``) until a radiologist signs it (``final``, then
    ``amended``); a signed one lists only the confirmed and added nodules, as signed."""
    s, run, signed = report.study, report.run, report.signed
    issued = run.created_at if signed is None else signed.signed_at
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": report_id(run),
        "meta": {"lastUpdated": _instant(issued)},
        "identifier": [{"system": "urn:pacs-ai:ai-run", "value": str(run.id)}],
        "status": report.status,
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": "24627-2", "display": "CT Chest"}]},
        "subject": {"reference": f"Patient/{s.patient.id}"},
        "effectiveDateTime": _datetime(s.StudyDate, s.StudyTime) or _instant(run.created_at),
        "issued": _instant(issued),
    }
    if signed is not None:
        # No Practitioner resource is served: the radiologist is a display-only reference
        # (R4 Reference.display), as who signed (performer) and who interpreted.
        radiologist = [{"display": signed.signed_by}]
        resource["performer"] = radiologist
        resource["resultsInterpreter"] = radiologist
        signed_sr = {"system": DICOM_UID, "value": f"urn:oid:{signed.SOPInstanceUID}"}
        resource["identifier"].append(signed_sr)
    resource["imagingStudy"] = [{"reference": f"ImagingStudy/{s.StudyInstanceUID}"}]
    resource["result"] = [
        {"reference": f"Observation/{observation_id(report, i)}"}
        for i in range(report.observations)
    ]
    resource["conclusion"] = _conclusion(report)
    return resource


def _conclusion(report: Report) -> str:
    run, signed = report.run, report.signed
    if signed is not None:
        return f"{signed.impression} Lung-RADS category {signed.lung_rads}. {signed.lung_rads_note}"
    if run.findings:
        listed = "; ".join(
            f"{f.diameter_mm:.1f} mm at ({f.x:.1f}, {f.y:.1f}, {f.z:.1f}) mm, "
            f"probability {f.probability:.2f}" + (f", {f.describe_change()}" if f.change else "")
            for f in run.findings
        )
        return (
            f"{len(run.findings)} lung nodule candidate(s) flagged by AI "
            f"({run.model_name} {run.model_version}): {listed}. Not reviewed by a radiologist."
        )
    if run.SeriesInstanceUID is None:
        return "No series of this study could be analysed for lung nodules."
    return (
        f"No lung nodules detected by AI ({run.model_name} {run.model_version}). "
        "Not reviewed by a radiologist."
    )


@dataclass(frozen=True)
class _Nodule:
    """What an Observation says about one nodule, from the AI run or the signed report."""

    tracking_uid: str
    x: float
    y: float
    z: float
    diameter_mm: float
    probability: float | None
    note: str
    character: Character | None = None


def _nodule(report: Report, index: int) -> _Nodule:
    run, signed = report.run, report.signed
    if signed is None:
        f = run.findings[index]
        source = f"detected by {run.model_name} {run.model_version}"
        if f.change is not None:
            source += f"; {f.describe_change()}"
        return _Nodule(
            f.tracking_uid, f.x, f.y, f.z, f.diameter_mm, f.probability, source, f.character
        )
    n = signed.nodules[index]
    how = "added" if n.origin == Origin.RADIOLOGIST else "confirmed"
    note = f"{how} by {signed.signed_by} (signed report revision {signed.revision})"
    c = n.centre
    # A confirmed AI nodule keeps the character measured on its outline.
    measured = {f.tracking_uid: f.character for f in run.findings}.get(n.tracking_uid)
    return _Nodule(n.tracking_uid, c.x, c.y, c.z, n.diameter_mm, n.probability, note, measured)


def character_components(c: Character) -> list[dict[str, Any]]:
    """Observation components of a characterised nodule: type, axes, volume, solid part."""

    def size(code: str, display: str, value: float, unit: str = "mm") -> dict[str, Any]:
        coding = {"system": SNOMED, "code": code, "display": display}
        return {"code": {"coding": [coding]}, "valueQuantity": _quantity(round(value, 2), unit)}

    components = [
        {
            "code": {"coding": [{"system": NODULE_CHARACTER, "code": "type", "display": "Type"}]},
            "valueCodeableConcept": {
                "coding": [{"system": NODULE_CHARACTER, "code": c.type, "display": c.type}],
                "text": f"{c.type} (probability {c.type_probability:.2f})",
            },
        },
        size("103339001", "Long axis", c.long_axis_mm),
        size("103340004", "Short axis", c.short_axis_mm),
        size("118565006", "Volume", c.volume_mm3, "mm3"),
    ]
    if c.solid_diameter_mm is not None:
        coding = {
            "system": NODULE_CHARACTER,
            "code": "solid-diameter",
            "display": "Solid component mean diameter",
        }
        components.append(
            {
                "code": {"coding": [coding]},
                "valueQuantity": _quantity(round(c.solid_diameter_mm, 2), "mm"),
            }
        )
    return components


def observation_resource(report: Report, index: int) -> dict[str, Any]:
    """One nodule of the report: an AI finding (``preliminary``), or a signed one."""
    s, run, signed = report.study, report.run, report.signed
    f = _nodule(report, index)
    diameter: dict[str, Any] = {
        "code": {"coding": [{"system": SNOMED, "code": "81827009", "display": "Diameter"}]},
        "valueQuantity": _quantity(round(f.diameter_mm, 2), "mm"),
    }
    if f.character is not None and signed is None:
        # Outlined: the reported diameter is the mean of the axes, as Lung-RADS measures.
        diameter["code"]["text"] = "Mean diameter (long axis + short axis) / 2"
        diameter["valueQuantity"] = _quantity(round(f.character.mean_diameter_mm, 2), "mm")
    components: list[dict[str, Any]] = [diameter]
    if f.probability is not None:
        components.append(
            {
                "code": {
                    "coding": [{"system": DCM, "code": "111012", "display": "Certainty of Finding"}]
                },
                "valueQuantity": _quantity(round(100 * f.probability, 2), "%"),
            }
        )
    if f.character is not None:
        components.extend(character_components(f.character))
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": observation_id(report, index),
        "identifier": [{"system": DICOM_UID, "value": f"urn:oid:{f.tracking_uid}"}],
        "status": "preliminary" if signed is None else report.status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "imaging",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": SNOMED, "code": "27925004", "display": "Nodule"}]},
        "subject": {"reference": f"Patient/{s.patient.id}"},
        "effectiveDateTime": _datetime(s.StudyDate, s.StudyTime) or _instant(run.created_at),
    }
    if signed is not None:
        resource["performer"] = [{"display": signed.signed_by}]
    series = report.series
    resource |= {
        "bodySite": {"coding": [{"system": SNOMED, "code": "39607008", "display": "Lung"}]},
        "derivedFrom": [{"reference": f"ImagingStudy/{s.StudyInstanceUID}"}],
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "POS",
                        "display": "Positive",
                    }
                ]
            }
        ],
        "component": components,
        "note": [
            {
                "text": f"Centre at ({f.x:.1f}, {f.y:.1f}, {f.z:.1f}) mm in DICOM patient "
                f"coordinates (LPS) of series {series}; {f.note}."
            }
        ],
    }
    return resource


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _date(value: str | None) -> str | None:
    if not value or len(value) < 8 or not value[:8].isdigit():
        return None
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}"


def _datetime(date: str | None, time: str | None) -> str | None:
    """StudyDate (+ StudyTime) as a FHIR dateTime. DICOM times carry no zone and FHIR requires
    one with a time of day, so only the date is given rather than a guessed zone."""
    del time
    return _date(date)


def _instant(value: datetime) -> str:
    return (
        value.isoformat(timespec="seconds")
        if value.tzinfo
        else value.isoformat(timespec="seconds") + "+00:00"
    )
