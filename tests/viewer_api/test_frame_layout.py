"""viewer_api.frame_layout: the header walk finds what pydicom finds, or leaves it to pydicom."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.servers import DATA
from viewer_api.frame_layout import native_frames, native_layout
from viewer_api.frames import _frame_length, frame_count

LAYOUT = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
)
FILES = sorted(
    path
    for folder in ("transfer-syntaxes", "edge-cases", "mr", "cxr")
    for path in (DATA / folder).rglob("*")
    if path.is_file() and path.suffix not in (".md", ".json", ".txt")
)


def test_every_file_it_walks_has_pydicoms_attributes_and_pixel_offset() -> None:
    walked = 0
    for path in FILES:
        blob = path.read_bytes()
        layout = native_layout(blob)
        if layout is None:
            continue
        walked += 1
        ds, start, length = layout
        fp = BytesIO(blob)
        read = pydicom.dcmread(fp, stop_before_pixels=True)
        implicit = read.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert start == fp.tell() + (8 if implicit else 12), path
        assert length == len(pydicom.dcmread(path).PixelData), path
        assert {k: ds.get(k) for k in LAYOUT} == {k: read.get(k) for k in LAYOUT}, path
    assert walked > 20  # the native little endian files of data/


def test_every_file_it_cuts_has_the_frames_the_dataset_path_cuts() -> None:
    """native_frames (raw values) agrees with the Dataset path (pydicom's conversion) on every
    file of data/ it takes, and takes most native ones."""
    cut = 0
    for path in FILES:
        blob = path.read_bytes()
        native = native_frames(blob)
        layout = native_layout(blob)
        ds = None if layout is None else layout[0]
        expected = None if ds is None else _frame_length(ds)
        if native is None:  # left to the Dataset path (e.g. badVR.dcm's frames "1A")
            continue
        cut += 1
        assert layout is not None and ds is not None, path
        assert (native.offset, native.length) == layout[1:], path
        assert (native.frames, native.frame_length) == (frame_count(ds), expected), path
        pixels = pydicom.dcmread(path).PixelData
        last = native.frames
        assert native.cut(blob, last) == pixels[(last - 1) * expected : last * expected], path
    assert cut > 20


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"Rows": ("SS", b"\x02\x00")}, "Rows not US"),
        ({"NumberOfFrames": ("IS", b"1A")}, "Number of Frames not a number"),
        ({"BitsAllocated": ("US", b"\x01\x00")}, "bit-packed"),
        ({"Columns": ("US", b"\x02\x00\x02\x00")}, "two values"),
        ({"NumberOfFrames": ("IS", b"\x002")}, "a NUL before the digits: pydicom reads 1"),
        ({"PhotometricInterpretation": ("CS", b" YBR_FULL_422 ")}, "a leading space: not 422"),
    ],
)
def test_odd_raw_values_are_left_to_the_dataset_path(
    changes: dict[str, tuple[str, bytes]], why: str
) -> None:
    ds = _instance(NumberOfFrames="2")
    ds.PixelData = bytes(range(8))  # two frames of 2x2 8-bit
    native = native_frames(encode(ds, ExplicitVRLittleEndian))
    assert native is not None and (native.frames, native.frame_length) == (2, 4)
    odd = encode(_raw(ds, changes), ExplicitVRLittleEndian)
    assert native_frames(odd) is None, why


def _raw(ds: Dataset, changes: dict[str, tuple[str, bytes]]) -> Dataset:
    """*ds* with the *changes* as raw elements (their bytes written as they are)."""
    for keyword, (vr, raw) in changes.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        assert tag is not None
        ds[tag] = pydicom.dataelem.RawDataElement(
            pydicom.tag.Tag(tag), vr, len(raw), raw, 0, False, True
        )
    return ds


def encode(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _instance(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 8, 8, 7
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = b"\x01\x02\x03\x04"
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_pixel_data_found_by_offset(syntax: str) -> None:
    blob = encode(_instance(), syntax)
    layout = native_layout(blob)
    assert layout is not None
    ds, start, length = layout
    assert blob[start : start + length] == b"\x01\x02\x03\x04"
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.get("NumberOfFrames")) == (2, 2, 8, None)


def test_what_it_cannot_walk_is_left_to_pydicom(tmp_path: Path) -> None:
    blob = encode(_instance(), ExplicitVRLittleEndian)
    assert native_layout(blob[:-2]) is None  # Pixel Data cut off
    assert native_layout(blob[128:]) is None  # no preamble
    assert native_layout(encode(_instance(), "1.2.840.10008.1.2.2")) is None  # big endian
    item = Dataset()
    item.CodeValue = "X"
    # A sequence of undefined length before Pixel Data: pydicom walks its items.
    sequenced = _instance(ProcedureCodeSequence=Sequence([item]))
    sequenced["ProcedureCodeSequence"].is_undefined_length = True
    assert native_layout(encode(sequenced, ExplicitVRLittleEndian)) is None


@pytest.mark.parametrize(("photometric", "samples"), [("RGB", 3), ("MONOCHROME2", 1), (None, 1)])
def test_a_header_without_samples_per_pixel_is_cut_as_its_photometric_implies(
    photometric: str | None, samples: int
) -> None:
    ds = _instance()
    del ds.SamplesPerPixel
    if photometric is None:
        del ds.PhotometricInterpretation
    else:
        ds.PhotometricInterpretation = photometric
    ds.PixelData = bytes(2 * 2 * samples)
    blob = encode(ds, ExplicitVRLittleEndian)
    assert native_frames(blob) is None  # left to the Dataset path, which decodes it so too
    layout = native_layout(blob)
    assert layout is not None
    assert _frame_length(layout[0]) == 2 * 2 * samples
