"""The signed report SR: valid (dciodvfy), verified and complete, chained to its predecessors,
the nodules in the same OHIF-readable groups as the AI SR, read back by highdicom."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from inference import ReportedNodule, Signature, build_signed_sr
from inference.dicom_results import build_sr
from inference.report_sr import LUNG_RADS_CATEGORY, person_name
from pacs.results import Character, Finding
from tests.dicom import LIDC_0001, dicom_files
from tests.inference.sr_checks import (
    QUALITATIVE_EVALUATIONS,
    check_display_group,
    child,
    code,
    dciodvfy,
    find,
    groups,
)
from tests.models.tiny import tiny_spec

AI_FINDING = Finding(56.21, 86.34, -115.87, 23.35, 0.93)  # the LUNA16 nodule of LIDC-IDRI-0001
CONFIRMED = ReportedNodule(
    AI_FINDING.tracking_uid, "Nodule 1", 56.21, 86.34, -115.87, 23.35, 0.93, False
)
ADDED = ReportedNodule(str(generate_uid()), "Nodule 2", -60.0, 20.0, -150.0, 6.0, None, True)
SIGNED_AT = datetime(2025, 3, 4, 10, 11, 12, tzinfo=UTC)
SIGNATURE = Signature("dr-house", "Princeton-Plainsboro", SIGNED_AT)
NOTE = "size-based suggestion, solid assumed; set by radiologist"


@pytest.fixture(scope="module")
def source() -> list[Dataset]:
    # Headers only: the report needs no pixel data.
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in dicom_files(LIDC_0001)]


@pytest.fixture(scope="module")
def ai_sr(source: list[Dataset], tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    sr = build_sr(source, [AI_FINDING], tiny_spec(name="demo-nodule-centernet"))
    path = tmp_path_factory.mktemp("ai") / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path, stop_before_pixels=True)


def sign(
    source: list[Dataset],
    nodules: list[ReportedNodule],
    predecessors: list[Dataset],
    series: str,
    revision: int = 1,
) -> Dataset:
    return build_signed_sr(
        source,
        nodules,
        impression="Solid nodule in the right upper lobe, 23 mm.",
        lung_rads="4B",
        lung_rads_note=NOTE,
        signature=SIGNATURE,
        predecessors=predecessors,
        series_instance_uid=series,
        instance_number=revision,
    )


def predecessor_uids(sr: Dataset) -> set[str]:
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in sr.PredecessorDocumentsSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def test_a_signed_report_is_verified_complete_and_carries_the_nodules(
    source: list[Dataset], ai_sr: Dataset, tmp_path: Path
) -> None:
    series = str(generate_uid())
    report = sign(source, [CONFIRMED, ADDED], [ai_sr], series)
    assert dciodvfy(report, tmp_path / "signed.dcm") == []
    sr = pydicom.dcmread(tmp_path / "signed.dcm")
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == (
        "VERIFIED",
        "COMPLETE",
        "FINAL",
    )
    (observer,) = sr.VerifyingObserverSequence
    assert str(observer.VerifyingObserverName) == "dr-house^"
    assert observer.VerifyingOrganization == "Princeton-Plainsboro"
    # The content time in the machine's local time, with its offset from UTC stated.
    local = SIGNED_AT.astimezone()
    assert observer.VerificationDateTime == local.strftime("%Y%m%d%H%M%S%z")
    assert (sr.ContentDate, sr.ContentTime) == (local.strftime("%Y%m%d"), local.strftime("%H%M%S"))
    assert sr.TimezoneOffsetFromUTC == local.strftime("%z")
    assert (sr.SeriesInstanceUID, sr.InstanceNumber) == (series, 1)
    assert sr.StudyInstanceUID == source[0].StudyInstanceUID
    assert sr.PatientID == source[0].PatientID
    assert predecessor_uids(sr) == {ai_sr.SOPInstanceUID}
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source[0].SeriesInstanceUID
    # The radiologist observed (TID 1002), not a device.
    observer_type = child(sr, "121005")
    assert observer_type.ConceptCodeSequence[0].CodeValue == codes.cid270.Person.value
    assert str(child(sr, "121008").PersonName) == "dr-house^"
    assert child(sr, "128774").TextValue == "dr-house"
    assert child(sr, "121009").TextValue == "Princeton-Plainsboro"
    # The nodules, in the AI SR's group shape; certainty only where the AI gave one.
    confirmed, added = groups(sr)
    for group, nodule in ((confirmed, CONFIRMED), (added, ADDED)):
        check_display_group(
            group,
            source,
            tracking_uid=nodule.tracking_uid,
            label=nodule.label,
            centre=(nodule.x, nodule.y, nodule.z),
            diameter_mm=nodule.diameter_mm,
            certainty=nodule.probability,
        )
        assert find(group, "111001") is None  # no algorithm: the radiologist reports
    # The tracking UID carried over from the AI SR.
    (ai_group,) = groups(ai_sr)
    assert child(ai_group, "112040").UID == child(confirmed, "112040").UID
    # Impression and Lung-RADS as qualitative evaluations.
    evaluations = child(sr, QUALITATIVE_EVALUATIONS)
    impression = child(evaluations, codes.DCM.Impression.value)
    assert (impression.ValueType, impression.RelationshipType) == ("TEXT", "CONTAINS")
    assert impression.TextValue == "Solid nodule in the right upper lobe, 23 mm."
    category = child(evaluations, LUNG_RADS_CATEGORY.value)
    assert category.ConceptNameCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert (category.ValueType, category.TextValue) == ("TEXT", "4B")
    assert child(evaluations, codes.DCM.Comment.value).TextValue == NOTE


def test_a_kept_ai_nodule_carries_its_character_into_the_signed_report(
    source: list[Dataset], ai_sr: Dataset, tmp_path: Path
) -> None:
    """The radiologist's report says what kind of nodule it is and its axes and volume, as
    the AI SR did; a nodule the radiologist added has no outline, so none of that."""
    character = Character("part-solid", 0.87, 25.1, 21.4, 23.35, 6120.0, 9.2)
    characterised = ReportedNodule(
        CONFIRMED.tracking_uid, "Nodule 1", 56.21, 86.34, -115.87, 23.35, 0.93, False, character
    )
    report = sign(source, [characterised, ADDED], [ai_sr], str(generate_uid()))
    assert dciodvfy(report, tmp_path / "signed.dcm") == []
    confirmed, added = groups(pydicom.dcmread(tmp_path / "signed.dcm"))
    items = {code(i): i for i in confirmed.ContentSequence}
    assert items["type"].ConceptCodeSequence[0].CodeValue == "part-solid"
    measured = {
        key: float(items[key].MeasuredValueSequence[0].NumericValue)
        for key in ("103339001", "103340004", "118565006")
    }
    assert measured == {"103339001": 25.1, "103340004": 21.4, "118565006": 6120.0}
    assert not {"type", "103339001", "118565006"} & {code(i) for i in added.ContentSequence}


def test_highdicom_reads_the_signed_report_back(
    source: list[Dataset], ai_sr: Dataset, tmp_path: Path
) -> None:
    sign(source, [CONFIRMED, ADDED], [ai_sr], str(generate_uid())).save_as(
        tmp_path / "signed.dcm", enforce_file_format=True
    )
    sr = hd.sr.srread(tmp_path / "signed.dcm")
    (person,) = sr.content.get_observer_contexts(observer_type=codes.cid270.Person)
    assert str(person.observer_identifying_attributes[0].value) == "dr-house^"
    read = sr.content.get_volumetric_roi_measurement_groups()
    assert [str(g.tracking_uid) for g in read] == [CONFIRMED.tracking_uid, ADDED.tracking_uid]
    assert [str(g.tracking_identifier) for g in read] == ["Nodule 1", "Nodule 2"]
    for group, nodule in zip(read, (CONFIRMED, ADDED), strict=True):
        measured = {m.name.value: m.value for m in group.get_measurements()}
        assert measured[codes.SCT.Diameter.value] == pytest.approx(nodule.diameter_mm)
        surface = hd.sr.VolumeSurface.from_sequence(group[0].ContentSequence)
        assert surface.graphic_data.mean(axis=0) == pytest.approx(
            [nodule.x, nodule.y, nodule.z], abs=0.01
        )


def test_a_report_without_nodules_is_valid(
    source: list[Dataset], ai_sr: Dataset, tmp_path: Path
) -> None:
    report = sign(source, [], [ai_sr], str(generate_uid()))
    assert dciodvfy(report, tmp_path / "signed.dcm") == []
    sr = pydicom.dcmread(tmp_path / "signed.dcm")
    assert find(sr, codes.DCM.ImagingMeasurements.value) is None
    evaluations = child(sr, QUALITATIVE_EVALUATIONS)
    assert child(evaluations, LUNG_RADS_CATEGORY.value).TextValue == "4B"
    assert sr.VerificationFlag == "VERIFIED"
    read = hd.sr.srread(tmp_path / "signed.dcm")
    assert read.content.get_volumetric_roi_measurement_groups() == []


def test_an_amendment_is_a_new_instance_of_the_same_series_after_both_predecessors(
    source: list[Dataset], ai_sr: Dataset, tmp_path: Path
) -> None:
    series = str(generate_uid())
    first = sign(source, [CONFIRMED], [ai_sr], series)
    amended = sign(source, [CONFIRMED, ADDED], [ai_sr, first], series, revision=2)
    assert dciodvfy(amended, tmp_path / "amended.dcm") == []
    sr = pydicom.dcmread(tmp_path / "amended.dcm")
    assert (sr.SeriesInstanceUID, sr.InstanceNumber) == (series, 2)
    assert sr.SOPInstanceUID != first.SOPInstanceUID
    assert predecessor_uids(sr) == {ai_sr.SOPInstanceUID, first.SOPInstanceUID}
    assert len(groups(sr)) == 2


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"diameter_mm": 0.0}, "diameter"),
        ({"probability": 1.5}, "probability"),
        ({"probability": 0.5, "added_by_radiologist": True}, "added"),
    ],
)
def test_an_inconsistent_nodule_is_refused(changes: dict[str, object], reason: str) -> None:
    fields: dict[str, object] = {
        "tracking_uid": "1.2.3",
        "label": "Nodule 1",
        "x": 0.0,
        "y": 0.0,
        "z": 0.0,
        "diameter_mm": 5.0,
        "probability": None,
        "added_by_radiologist": True,
    }
    with pytest.raises(ValueError, match=reason):
        ReportedNodule(**(fields | changes))  # type: ignore[arg-type]


def test_observer_names_become_person_names() -> None:
    assert person_name("dr-house") == "dr-house^"
    assert person_name("House^Gregory") == "House^Gregory"
    for bad in ("", "a\\b", "tab\there", "x" * 65):
        with pytest.raises(ValueError):
            person_name(bad)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"impression": " "}, "impression"),
        ({"lung_rads": ""}, "Lung-RADS"),
        ({"instance_number": 0}, "revision"),
        ({"signature": Signature("", "Princeton-Plainsboro", SIGNED_AT)}, "person name"),
        ({"signature": Signature("dr-house", "", SIGNED_AT)}, "organization"),
        ({"signature": Signature("dr-house", "x" * 65, SIGNED_AT)}, "organization"),
    ],
)
def test_a_report_is_refused_without_what_it_must_carry(
    source: list[Dataset], ai_sr: Dataset, changes: dict[str, object], reason: str
) -> None:
    arguments: dict[str, object] = {
        "impression": "No nodules.",
        "lung_rads": "1",
        "lung_rads_note": "",
        "signature": SIGNATURE,
        "predecessors": [ai_sr],
        "series_instance_uid": str(generate_uid()),
        "instance_number": 1,
    }
    with pytest.raises(ValueError, match=reason):
        build_signed_sr(source, [], **(arguments | changes))  # type: ignore[arg-type]
