import pydicom
import pytest
from pydicom.dataset import Dataset

from pacs.errors import InvalidUID
from pacs.instance import ParsedInstance
from pacs.part10 import locate
from tests.dicom import CT_SMALL, derived, encode
from tests.servers import DATA


def parse(ds: Dataset) -> ParsedInstance:
    return ParsedInstance.from_dataset(locate(encode(ds)).read_dataset())


def test_index_attributes_of_a_real_ct_slice() -> None:
    source = pydicom.dcmread(CT_SMALL)
    parsed = ParsedInstance.from_dataset(locate(CT_SMALL.read_bytes()).read_dataset())
    assert parsed.patient.PatientID == source.PatientID
    assert parsed.patient.PatientName == str(source.PatientName)
    assert parsed.study.StudyInstanceUID == source.StudyInstanceUID
    assert parsed.study.StudyDate == source.StudyDate
    assert parsed.series.Modality == "CT"
    assert parsed.series.SeriesNumber == int(source.SeriesNumber)
    assert parsed.instance.InstanceNumber == int(source.InstanceNumber)
    assert (parsed.instance.Rows, parsed.instance.Columns) == (128, 128)
    assert parsed.instance.NumberOfFrames is None


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("ISO_IR 192", "Nguyễn^Thị Minh Khai"),  # Vietnamese in UTF-8
        ("ISO_IR 100", "Müller^Jürgen"),  # Latin-1
        # Japanese, three PN component groups, code extensions (PS3.5 H.3.1)
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        ("ISO_IR 144", "Иванов^Иван"),  # Cyrillic
    ],
)
def test_person_names_are_decoded_with_their_character_set(
    charset: str | list[str], name: str
) -> None:
    ds = derived(SpecificCharacterSet=charset, PatientName=name, ReferringPhysicianName=name)
    parsed = parse(ds)
    assert parsed.patient.PatientName == name
    assert parsed.study.ReferringPhysicianName == name
    expected = "\\".join(charset) if isinstance(charset, list) else charset
    assert parsed.instance.SpecificCharacterSet == expected


def test_missing_patient_id_is_accepted_as_empty() -> None:
    ds = derived()
    del ds.PatientID
    assert parse(ds).patient.PatientID == ""


def test_malformed_optional_value_is_indexed_as_empty() -> None:
    # pydicom's corpus: Number of Frames (IS) is "1A".
    data = (DATA / "edge-cases" / "badVR.dcm").read_bytes()
    parsed = ParsedInstance.from_dataset(locate(data).read_dataset())
    assert parsed.instance.NumberOfFrames is None
    assert parsed.instance.SOPInstanceUID


@pytest.mark.parametrize("keyword", ["SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_is_rejected(keyword: str) -> None:
    ds = derived()
    delattr(ds, keyword)
    with pytest.raises(InvalidUID, match=f"{keyword} is missing"):
        parse(ds)


@pytest.mark.parametrize("bad", ["1.2.3.", "1.02.3", "1.2.abc", "1." + "9" * 70])
def test_invalid_uid_is_rejected(bad: str) -> None:
    ds = derived(StudyInstanceUID=bad)
    with pytest.raises(InvalidUID, match="not a valid UID"):
        parse(ds)


def test_a_uid_encoded_as_a_sequence_is_an_invalid_uid() -> None:
    """Found by fuzzing the parsers: SOP Class UID with VR SQ, holding an item whose element
    pydicom cannot decode, made str() of the value raise NotImplementedError (a 0x0110
    processing failure instead of a refusal)."""
    located = locate(encode(derived()))
    body = located.data[located.dataset_offset :]
    assert located.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    # An item holding (0008,0005) with VR SQ and no items, as the SOP Class UID's value.
    item = b"\x08\x00\x05\x00SQ\x00\x00\x00\x00\x00\x00\xfe\xff\x00\xe0\x00\x00\x00\x00"
    sop_class = b"\x08\x00\x16\x00SQ\x00\x00" + (8 + len(item)).to_bytes(4, "little")
    sop_class += b"\xfe\xff\x00\xe0" + len(item).to_bytes(4, "little") + item
    start = body.index(b"\x08\x00\x16\x00UI")
    end = start + 8 + int.from_bytes(body[start + 6 : start + 8], "little")
    broken = body[:start] + sop_class + body[end:]
    with pytest.raises(InvalidUID, match="SOPClassUID is not one UID"):
        ParsedInstance.from_dataset(locate(broken, located.transfer_syntax_uid).read_dataset())
