"""De-identification (PS3.15 Annex E), checked against the checked-in extract of Table E.1-1 on
every file of data/; UIDs and pseudonyms consistent across a study, across runs and against
another key; an SR and SEG built by our pipeline still referencing the exported CT; dciodvfy
finding no new error in the exported CT and SR."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from datetime import date
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from inference.dicom_results import build_results
from pacs.deid import (
    Action,
    ActionCode,
    BurnedInAnnotation,
    Deidentifier,
    InvalidProjectKey,
    Options,
    UnreadableInstance,
    burned_in_reasons,
    load_table,
    read_instance,
)
from pacs.deid.deidentifier import NOT_CLEANED_PIXELS
from pacs.deid.uidmap import is_definition
from pacs.deid.values import DUMMY_DATE
from pacs.errors import InvalidInstance
from pacs.instance import ParsedInstance
from pacs.part10 import locate
from pacs.results import Finding
from tests.dicom import CT_SMALL, LIDC_0001, derived, dicom_files
from tests.models.tiny import tiny_spec
from tests.servers import DATA

KEY = b"research-project-key-0123456789"
OTHER_KEY = b"another-project-key-9876543210"
BASIC = Options()
BOTH = Options(modified_dates=True, clean_descriptors=True)
LIDC_0002 = DATA / "ct" / "LIDC-IDRI-0002"
ALL_FILES = sorted(p for p in DATA.rglob("*") if p.is_file())
FILE_GROUPS = {  # every file under data/, by the folder it lies in directly under data/
    group: [p for p in ALL_FILES if (p.relative_to(DATA).parts[:-1] or (".",))[0] == group]
    for group in {(p.relative_to(DATA).parts[:-1] or (".",))[0] for p in ALL_FILES}
}
FREE_TEXT = ("LT", "ST", "UT")
CURVE_AND_OVERLAY = (range(0x5000, 0x5100, 2), range(0x6000, 0x6100, 2))
SPEC = tiny_spec(name="demo-nodule-centernet", version="1.0.0")
FINDINGS = [
    Finding(56.21, 86.34, -115.87, 23.35, 0.93),  # the LUNA16 nodule of LIDC-IDRI-0001
    Finding(-60.0, 20.0, -150.0, 6.0, 0.41),
]


def values(element: DataElement) -> list[str]:
    value = element.value
    items = list(value) if isinstance(value, MultiValue | list) else [value]
    return [str(v) for v in items if v not in (None, "")]


def export(deid: Deidentifier, data: bytes) -> tuple[Dataset, Dataset]:
    """(source, exported): an instance that may show burned-in text is refused, then forced."""
    source = read_instance(data)
    if burned_in_reasons(source):
        with pytest.raises(BurnedInAnnotation, match="refused unless forced"):
            deid.part10(data)
        exported = deid.part10(data, force=True)
    else:
        exported = deid.part10(data)
    return source, pydicom.dcmread(BytesIO(exported))


def effective_code(code_of: ActionCode, basic: ActionCode, vr: str) -> ActionCode:
    """Clean Descriptors does not apply to free text: the basic action does (documented)."""
    return basic if code_of.text == "C" and vr in FREE_TEXT else code_of


def check_against_table(source: Dataset, out: Dataset, options: Options, name: Path) -> None:
    """Every element of *out*, at any depth, is what Table E.1-1 allows."""
    table = load_table()
    originals: defaultdict[int, set[str]] = defaultdict(set)
    for element in source.iterall():
        originals[element.tag].update(values(element))
    instance_uids = {
        uid
        for element in source.iterall()
        if element.VR == "UI"
        for uid in values(element)
        if not is_definition(element.keyword, uid)
    }
    for element in out.iterall():
        where = f"{name}: {element.tag} {element.keyword or element.name}"
        assert not element.tag.is_private, f"private {where} survives"
        assert not any(element.tag.group in groups for groups in CURVE_AND_OVERLAY), where
        rule = table.rule_for(element.tag)
        if rule is not None:
            code = effective_code(rule.code(options), rule.basic, element.VR)
            assert code.alternatives != (Action.X,), f"{rule.name} ({where}) is to be removed"
            if code.alternatives == (Action.Z,):
                if element.keyword in ("PatientID", "PatientName"):
                    assert str(element.value) == str(out.PatientID), where
                else:
                    assert element.is_empty, f"{rule.name} ({where}) is to be empty"
            if code.alternatives == (Action.D,) and element.VR != "SQ":
                assert values(element), f"{where}: D keeps a non-empty value"
                assert not set(values(element)) & originals[element.tag], f"{where} unchanged"
        if element.VR == "UI":
            named = {v for v in values(element) if not is_definition(element.keyword, v)}
            kept = named & instance_uids
            assert not kept, f"{where} keeps the original UID {kept}"
        if element.VR in ("DA", "DT"):
            if options.modified_dates:
                assert not set(values(element)) & originals[element.tag], f"{where} not moved"
            else:
                assert set(values(element)) <= {DUMMY_DATE, "19000101000000"}, where
    assert out.PatientIdentityRemoved == "YES", name
    assert out.PatientID == out.PatientName != source.get("PatientID"), name
    method_codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert "113100" in method_codes
    assert ("113107" in method_codes) == options.modified_dates
    assert ("113105" in method_codes) == options.clean_descriptors
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    if "PixelData" in source:
        assert out.PixelData == source.PixelData, f"{name}: pixel data changed"


@pytest.mark.slow
@pytest.mark.parametrize("options", [BASIC, BOTH], ids=["basic", "dates+descriptors"])
@pytest.mark.parametrize("group", sorted(FILE_GROUPS), ids=str)
def test_every_file_is_deidentified_as_table_e1_1_says(group: str, options: Options) -> None:
    # One test per folder, not per file: each test pays a full garbage collection (conftest).
    deid = Deidentifier(KEY, options)
    exported = 0
    for path in FILE_GROUPS[group]:
        data = path.read_bytes()
        try:
            source, out = export(deid, data)
        except UnreadableInstance as refused:
            # Refused only what the archive could not hold either (not DICOM, cut, no UIDs).
            assert str(refused)
            with pytest.raises(InvalidInstance):
                ParsedInstance.from_dataset(locate(data).read_dataset())
            continue
        check_against_table(source, out, options, path.relative_to(DATA))
        exported += 1
    assert exported or group == "."  # data/ itself holds only its README


def lidc(folder: Path) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in dicom_files(folder)]


@pytest.fixture(scope="module")
def ct_0001() -> list[Dataset]:
    return [pydicom.dcmread(p) for p in dicom_files(LIDC_0001)]


@pytest.mark.slow
def test_uids_stay_consistent_across_each_lidc_study() -> None:
    deid = Deidentifier(KEY, BOTH)
    pseudonyms = set()
    for folder in (LIDC_0001, LIDC_0002):
        sources = lidc(folder)
        outs = [deid.dataset(ds) for ds in sources]
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            (new,) = {str(o.get(keyword)) for o in outs}
            assert new.startswith("2.25.") and new != str(sources[0].get(keyword))
        assert len({o.SOPInstanceUID for o in outs}) == len(sources)
        (pseudonym,) = {str(o.PatientID) for o in outs}
        assert {str(o.PatientName) for o in outs} == {pseudonym}
        pseudonyms.add(pseudonym)
        # One offset for the whole study: intervals between instances are kept.
        offsets = {
            (_day(o.AcquisitionDate) - _day(s.AcquisitionDate)).days
            for o, s in zip(outs, sources, strict=True)
            if s.get("AcquisitionDate")
        }
        assert len(offsets) == 1 and -3652 <= offsets.pop() <= -365
    assert len(pseudonyms) == 2


def test_same_patient_gets_the_same_pseudonym_in_every_export_of_a_project() -> None:
    first_study = pydicom.dcmread(dicom_files(LIDC_0001)[0], stop_before_pixels=True)
    later_study = derived(
        dicom_files(LIDC_0001)[1],
        StudyInstanceUID=pydicom.uid.generate_uid(),
        StudyDate="20000131",  # 30 days after the first study
    )
    first = Deidentifier(KEY, BOTH).dataset(first_study)
    again = Deidentifier(KEY, BOTH).dataset(first_study)
    later = Deidentifier(KEY, BOTH).dataset(later_study)
    other = Deidentifier(OTHER_KEY, BOTH).dataset(first_study)
    assert first.PatientID == again.PatientID == later.PatientID != first_study.PatientID
    assert first.StudyInstanceUID == again.StudyInstanceUID != later.StudyInstanceUID
    assert first.StudyDate == again.StudyDate
    assert (_day(later.StudyDate) - _day(first.StudyDate)).days == 30
    assert other.PatientID != first.PatientID
    assert other.StudyInstanceUID != first.StudyInstanceUID
    assert other.StudyDate != first.StudyDate


@pytest.mark.slow
def test_the_exported_sr_and_seg_still_reference_the_exported_ct(
    ct_0001: list[Dataset], tmp_path: Path
) -> None:
    objects = build_results(ct_0001, FINDINGS, SPEC)
    assert objects.seg is not None
    deid = Deidentifier(KEY, BOTH)
    ct = [deid.dataset(ds) for ds in ct_0001]
    sr, seg = deid.dataset(objects.sr), deid.dataset(objects.seg)
    ct_sops = {str(o.SOPInstanceUID) for o in ct}
    (frame_of_reference,) = {str(o.FrameOfReferenceUID) for o in ct}
    for result in (sr, seg):
        assert result.StudyInstanceUID == ct[0].StudyInstanceUID
        assert result.PatientID == ct[0].PatientID
        referenced = {
            str(e.value) for e in result.iterall() if e.keyword == "ReferencedSOPInstanceUID"
        }
        assert referenced and referenced <= ct_sops
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == ct[0].StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == ct[0].SeriesInstanceUID
    listed = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert {str(i.ReferencedSOPInstanceUID) for i in listed} == ct_sops
    sr_frames = {str(e.value) for e in sr.iterall() if e.keyword == "ReferencedFrameOfReferenceUID"}
    assert sr_frames == {frame_of_reference}
    assert seg.FrameOfReferenceUID == frame_of_reference
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct[0].SeriesInstanceUID
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID in ct_sops
    # The nodules' tracking UIDs are replaced alike in both objects.
    seg_tracking = {str(s.TrackingUID) for s in seg.SegmentSequence}
    sr_uids = {str(e.value) for e in sr.iterall() if e.keyword == "UID"}
    assert seg_tracking and seg_tracking <= sr_uids
    assert not seg_tracking & {f.tracking_uid for f in FINDINGS}
    for name, before, after in (("sr", objects.sr, sr), ("seg", objects.seg, seg)):
        assert dciodvfy_errors(before, tmp_path / f"{name}-before.dcm") >= dciodvfy_errors(
            after, tmp_path / f"{name}-after.dcm"
        )


@pytest.mark.parametrize("options", [BASIC, BOTH], ids=["basic", "dates+descriptors"])
@pytest.mark.parametrize("folder", [LIDC_0001, LIDC_0002], ids=lambda p: p.name)
def test_dciodvfy_finds_no_new_error_in_the_exported_ct(
    folder: Path, options: Options, tmp_path: Path
) -> None:
    deid = Deidentifier(KEY, options)
    for path in dicom_files(folder)[:2]:
        original = pydicom.dcmread(path)
        exported = deid.dataset(original)
        before = dciodvfy_errors(original, tmp_path / "before.dcm")
        assert dciodvfy_errors(exported, tmp_path / "after.dcm") <= before


def test_combined_codes_follow_the_attribute_type_in_the_iod() -> None:
    source = pydicom.dcmread(CT_SMALL)
    source.SourceImageSequence = Sequence([_image_reference(source)])  # X/Z/U*, Type 3 in CT
    source.SourceImageSequence[0].add_new(0x00091010, "LO", "PRIVATE CREATOR")
    out = Deidentifier(KEY, BASIC).dataset(source)
    assert "InstitutionName" not in out  # X/Z/D, Type 3 in General Equipment: X
    assert "StationName" not in out  # X/Z/D, Type 3: X
    assert "ContrastBolusAgent" in out and out.ContrastBolusAgent == ""  # Z/D, Type 2: Z
    assert out.ContentDate == ""  # Z/D, Type 2C in General Image: Z
    assert "OtherPatientIDsSequence" not in out  # X
    assert out.PatientSex == ""  # Z
    # U*: the reference is kept, its UID replaced, the private element inside it removed.
    (reference,) = out.SourceImageSequence
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert reference.ReferencedSOPInstanceUID.startswith("2.25.")
    assert not [e for e in reference if e.tag.is_private]


@pytest.mark.parametrize(
    ("code", "attribute_type", "action"),
    [
        ("X/Z", "3", Action.X),
        ("X/Z", "2", Action.Z),
        ("X/Z", None, Action.Z),
        ("X/D", "3", Action.X),
        ("X/D", "2", Action.D),
        ("X/D", "1", Action.D),
        ("Z/D", "3", Action.Z),
        ("Z/D", "1C", Action.D),
        ("X/Z/D", "2C", Action.Z),
        ("X/Z/D", "1", Action.D),
        ("X/Z/D", None, Action.D),
        ("X/Z/U*", "3", Action.U),
        ("K", None, Action.K),
    ],
)
def test_action_codes_resolve_by_attribute_type(
    code: str, attribute_type: str | None, action: Action
) -> None:
    assert ActionCode.parse(code).resolve(attribute_type) is action


@pytest.mark.parametrize("bad", ["", "Q", "X/K", "D/X", "U*/X"])
def test_an_unknown_action_code_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not an action code"):
        ActionCode.parse(bad)


def test_the_table_extract_holds_the_profile_and_both_options() -> None:
    table = load_table()
    assert len(table) == 460
    by_name = {rule.name: rule for rule in table}
    assert by_name["Patient's Name"].basic.text == "Z"
    assert by_name["Content Sequence"].basic.text == "D"
    assert by_name["Source Image Sequence"].basic.text == "X/Z/U*"
    assert by_name["Study Date"].code(Options(modified_dates=True)).text == "C"
    assert by_name["Series Description"].code(Options(clean_descriptors=True)).text == "C"
    assert by_name["Series Description"].code(Options(modified_dates=True)).text == "X"
    assert table.rule_for(0x00091010) is table.rule_for(0x7FE10010) is by_name["Private attributes"]
    assert table.rule_for(0x60023000) is by_name["Overlay Data"]
    assert table.rule_for(0x00280010) is None  # Rows: not identifying, kept


def test_clean_descriptors_keeps_descriptions_without_identifying_text() -> None:
    source = derived(
        SeriesDescription="Chest COMPRESSEDSAMPLES 1CT1 jfk imaging center",
        ImageComments="called 1CT1 at home",
    )
    cleaned = Deidentifier(KEY, Options(clean_descriptors=True)).dataset(source)
    assert cleaned.SeriesDescription == "Chest"
    assert cleaned.StudyDescription == source.StudyDescription  # nothing identifying in it
    assert cleaned.ContrastBolusAgent == source.ContrastBolusAgent
    assert "ImageComments" not in cleaned  # free text is not cleaned but removed
    basic = Deidentifier(KEY, BASIC).dataset(source)
    assert "SeriesDescription" not in basic and "StudyDescription" not in basic


def test_burned_in_annotation_is_refused_unless_forced() -> None:
    cr = read_instance(next((DATA / "cxr" / "real-cr-chest-j2k").glob("*.dcm")).read_bytes())
    cr.BurnedInAnnotation = "YES"
    deid = Deidentifier(KEY, BASIC)
    with pytest.raises(BurnedInAnnotation, match="Burned In Annotation is YES"):
        deid.dataset(cr)
    forced = deid.dataset(cr, force=True)
    assert NOT_CLEANED_PIXELS in forced.DeidentificationMethod
    cr.BurnedInAnnotation = "NO"
    assert NOT_CLEANED_PIXELS not in deid.dataset(cr).DeidentificationMethod

    sc = read_instance(next((DATA / "cxr" / "nih-dx-chest").glob("*.dcm")).read_bytes())
    assert "BurnedInAnnotation" not in sc
    with pytest.raises(BurnedInAnnotation, match="Secondary Capture"):
        deid.dataset(sc)
    sc.BurnedInAnnotation = "NO"
    assert deid.dataset(sc).PatientIdentityRemoved == "YES"


def test_a_short_project_key_is_refused() -> None:
    with pytest.raises(InvalidProjectKey, match="at least 16 bytes"):
        Deidentifier(b"too short")


def test_bytes_that_are_not_an_instance_are_refused_clearly() -> None:
    with pytest.raises(UnreadableInstance, match="truncated"):
        Deidentifier(KEY).part10(CT_SMALL.read_bytes()[:-100])
    with pytest.raises(UnreadableInstance):
        Deidentifier(KEY).part10(b"")


# -- helpers ---------------------------------------------------------------------------------

_NUMBERS = re.compile(r"\d+(\.\d+)*")


def dciodvfy_errors(ds: Dataset, path: Path) -> set[str]:
    """dciodvfy's error lines, numbers (UIDs, dates) masked so that replaced values compare."""
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return {_NUMBERS.sub("#", line) for line in lines if line.startswith("Error")}


def _day(value: object) -> date:
    text = str(value)
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def _image_reference(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
    return item
