from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from pacs.errors import InvalidInstance
from pacs.instance import INDEX_TAGS, ParsedInstance
from pacs.part10 import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    file_meta,
    locate,
    with_meta,
)
from tests.dicom import CT_SMALL, dataset_bytes
from tests.servers import DATA

EDGE = DATA / "edge-cases"


def test_complete_part10_file_is_recognised() -> None:
    data = CT_SMALL.read_bytes()
    located = locate(data)
    assert located.is_complete_part10
    assert located.transfer_syntax_uid == ExplicitVRLittleEndian
    assert located.read_dataset().SOPInstanceUID == pydicom.dcmread(CT_SMALL).SOPInstanceUID


@pytest.mark.parametrize(
    ("name", "transfer_syntax"),
    [
        ("ExplVR_LitEndNoMeta.dcm", "1.2.840.10008.1.2.1"),
        ("ExplVR_BigEndNoMeta.dcm", "1.2.840.10008.1.2.2"),
    ],
)
def test_transfer_syntax_of_a_data_set_without_meta_is_detected(
    name: str, transfer_syntax: str
) -> None:
    located = locate((EDGE / name).read_bytes())
    assert not located.is_complete_part10
    assert located.transfer_syntax_uid == transfer_syntax
    assert located.read_dataset().SOPInstanceUID


def test_implicit_vr_without_meta_is_detected() -> None:
    located = locate((DATA / "cxr" / "cr-chest-mono1" / "CR-MONO1-10-chest.dcm").read_bytes())
    assert located.transfer_syntax_uid == "1.2.840.10008.1.2"
    assert located.read_dataset().Modality == "CR"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MR_truncated.dcm", "element (7FE0,0010) declares 8192 bytes"),
        ("rtplan_truncated.dcm", "element (300A,00B0) declares 976 bytes"),
    ],
)
def test_truncated_files_are_rejected(name: str, reason: str) -> None:
    with pytest.raises(
        InvalidInstance,
        match=r"truncated data set: " + reason.replace("(", r"\(").replace(")", r"\)"),
    ):
        locate((EDGE / name).read_bytes())


@pytest.mark.parametrize("cut", [1, 100, 5000])
def test_any_cut_of_a_real_ct_slice_is_rejected(cut: int) -> None:
    data = CT_SMALL.read_bytes()
    with pytest.raises(InvalidInstance, match="truncated"):
        locate(data[:-cut])


def test_unclosed_undefined_length_sequence_is_rejected() -> None:
    # Encapsulated (JPEG) pixel data is a sequence of undefined length: drop its delimiter.
    data = (DATA / "transfer-syntaxes").glob("*JPEGProcess1TransferSyntax*").__next__().read_bytes()
    assert data[-8:] == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    with pytest.raises(InvalidInstance, match="not closed"):
        locate(data[:-8])


def test_text_files_are_not_dicom() -> None:
    with pytest.raises(InvalidInstance, match="not DICOM"):
        locate((DATA / "mr" / "ge-epi" / "LICENSE").read_bytes())
    with pytest.raises(InvalidInstance):
        locate(b"")


def test_bare_data_set_gets_deterministic_meta_and_keeps_its_bytes() -> None:
    body = dataset_bytes(CT_SMALL.read_bytes())
    ds = pydicom.dcmread(CT_SMALL)
    first = with_meta(body, ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
    second = with_meta(body, ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
    assert first == second
    assert first.endswith(body)
    framed = pydicom.dcmread(Path(CT_SMALL).parent / "CT_small.dcm")
    reread = locate(first)
    assert reread.is_complete_part10
    assert reread.meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert reread.read_dataset().PatientName == framed.PatientName


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "transfer_syntax"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2"),  # even, even, odd
        ("1.2.840.10008.5.1.4.1.1.88.22", "1.2.3.45", "1.2.840.10008.1.2.1"),  # odd lengths
        ("1.2.840.10008.5.1.4.1.1.66.4", "2.25." + "9" * 59, "1.2.840.10008.1.2.4.50"),
    ],
)
def test_file_meta_is_what_pydicom_writes_for_it(
    sop_class: str, sop_instance: str, transfer_syntax: str
) -> None:
    # Stored blobs were framed by pydicom: the same instance again must frame to the same
    # bytes (same digest), or a resend would look like new content.
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    written = BytesIO()
    write_file_meta_info(written, meta, enforce_standard=True)  # type: ignore[arg-type]
    assert file_meta(sop_class, sop_instance, transfer_syntax) == written.getvalue()


def test_deflated_data_set_is_inflated_and_checked() -> None:
    data = (EDGE / "image_dfl.dcm").read_bytes()
    located = locate(data)
    assert located.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert located.read_dataset().SOPInstanceUID
    with pytest.raises(InvalidInstance, match="deflated data set is truncated"):
        locate(data[:-50])
    # A corrupt deflate stream is reported as such.
    start = located.dataset_offset
    broken = data[:start] + b"\xff" * 16 + data[start + 16 :]
    with pytest.raises(InvalidInstance):
        locate(broken)


def _nested(depth: int, defined: bool) -> bytes:
    """A Content Sequence nested *depth* items deep, explicit VR little endian."""
    sq = b"\x40\x00\x30\xa7SQ\x00\x00"
    inner = b""
    for _ in range(depth):
        if defined:
            item = b"\xfe\xff\x00\xe0" + len(inner).to_bytes(4, "little") + inner
            inner = sq + len(item).to_bytes(4, "little") + item
        else:
            inner = (
                sq
                + b"\xff\xff\xff\xff"
                + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
                + inner
                + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
                + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
            )
    return inner


@pytest.mark.parametrize("defined", [True, False], ids=["defined-length", "undefined-length"])
def test_sequence_nesting_is_bounded_whatever_the_lengths(defined: bool) -> None:
    """Found by fuzzing (tests/fuzz): sequences of *defined* length nested 1,000 deep were
    stored, and serving the instance's metadata then overflowed pydicom's recursion."""
    assert locate(_nested(64, defined), ExplicitVRLittleEndian)
    with pytest.raises(InvalidInstance, match="nested too deeply"):
        locate(_nested(1000, defined), ExplicitVRLittleEndian)


def test_a_defined_length_item_cut_inside_is_refused() -> None:
    """An element inside a defined-length item may not run past the item's end."""
    item_value = b"\x10\x00\x10\x00PN\x10\x00Doe^John"  # declares 16 bytes, holds 8
    item = b"\xfe\xff\x00\xe0" + len(item_value).to_bytes(4, "little") + item_value
    sq = b"\x40\x00\x30\xa7SQ\x00\x00" + len(item).to_bytes(4, "little") + item
    with pytest.raises(InvalidInstance, match="truncated"):
        locate(sq + b"\x08\x00\x18\x00UI\x04\x002.25", ExplicitVRLittleEndian)


def _bare(data: bytes) -> tuple[bytes, str] | None:
    """The data set of a Part 10 file as a C-STORE carries it (no meta), and its transfer
    syntax; None for a file that does not frame or is deflated."""
    try:
        located = locate(data)
    except InvalidInstance:
        return None
    if located.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        return None
    return data[located.dataset_offset :], located.transfer_syntax_uid


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the broken files
def test_the_index_attributes_read_alone_are_those_of_the_whole_header() -> None:
    """Ingest reads only the index's elements, found by the framing walk: for every file of
    the shared data (every transfer syntax, character sets, broken files), as files and as
    bare data sets, the index attributes (or the error) are those the whole parsed header
    gives."""
    compared = 0
    for path in sorted(DATA.rglob("*.dcm")):
        data = path.read_bytes()
        for raw, syntax in ((data, None), _bare(data) or (data, None)):
            try:
                whole: object = ParsedInstance.from_dataset(locate(raw, syntax).read_dataset())
            except Exception as exc:
                whole = (type(exc), str(exc))
            try:
                alone: object = ParsedInstance.from_dataset(
                    locate(raw, syntax, INDEX_TAGS).wanted_dataset()
                )
            except Exception as exc:
                alone = (type(exc), str(exc))
            assert alone == whole, path
            compared += 1
    assert compared > 600
