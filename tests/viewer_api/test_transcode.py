"""Transfer-syntax negotiation and transcoding (PS3.18 8.7.3.5), on real files of data/."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.dicom import encode
from tests.servers import DATA
from viewer_api.problems import NotAcceptable
from viewer_api.transcode import AS_STORED, target_syntax, transcode

BIG_ENDIAN = DATA / "edge-cases" / "MR_small_bigendian.dcm"
JPEG_2000 = next((DATA / "transfer-syntaxes").glob("*JPEG2000LosslessOnly*"))
PROGRESSIVE = next((DATA / "transfer-syntaxes").glob("*JPEGProcess10_12*"))


def test_negotiation_defaults_to_explicit_little_endian() -> None:
    stored = "1.2.840.10008.1.2.4.50"
    assert target_syntax(stored, None) == ExplicitVRLittleEndian
    assert target_syntax(stored, AS_STORED) == stored
    assert target_syntax(stored, ImplicitVRLittleEndian) == ImplicitVRLittleEndian
    with pytest.raises(NotAcceptable, match="retired"):
        target_syntax(stored, ExplicitVRBigEndian)
    with pytest.raises(NotAcceptable):
        target_syntax(stored, "1.2.840.10008.1.2.4.90")  # no encoder to JPEG 2000
    with pytest.raises(NotAcceptable, match="cannot be decoded"):
        target_syntax("1.2.840.10008.1.2.4.55", None)  # progressive JPEG: no decoder here
    assert target_syntax("1.2.840.10008.1.2.4.55", AS_STORED) == "1.2.840.10008.1.2.4.55"


def test_big_endian_images_and_their_binary_values_become_little_endian() -> None:
    ds = pydicom.dcmread(BIG_ENDIAN)
    ds.RedPaletteColorLookupTableData = b"\x01\x02\x03\x04"  # OW: words, big endian here
    data = encode(ds)
    out = pydicom.dcmread(BytesIO(transcode(data, ExplicitVRBigEndian, ExplicitVRLittleEndian)))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(out.pixel_array, pydicom.dcmread(BIG_ENDIAN).pixel_array)
    assert out.RedPaletteColorLookupTableData == b"\x02\x01\x04\x03"


def test_compressed_instances_are_decoded_keeping_their_uid() -> None:
    stored = pydicom.dcmread(JPEG_2000)
    syntax = str(stored.file_meta.TransferSyntaxUID)
    for target in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        out = pydicom.dcmread(BytesIO(transcode(JPEG_2000.read_bytes(), syntax, target)))
        assert out.file_meta.TransferSyntaxUID == target
        assert out.SOPInstanceUID == stored.SOPInstanceUID
        assert np.array_equal(out.pixel_array, stored.pixel_array)  # lossless


def test_an_undecodable_instance_is_not_acceptable() -> None:
    syntax = str(pydicom.dcmread(PROGRESSIVE).file_meta.TransferSyntaxUID)
    with pytest.raises(NotAcceptable):
        transcode(PROGRESSIVE.read_bytes(), syntax, ExplicitVRLittleEndian)


def test_big_endian_objects_without_pixels_are_swapped_too() -> None:
    ds = pydicom.dcmread(BIG_ENDIAN)
    del ds.PixelData  # a non-image object, e.g. a waveform or a presentation state
    ds.RedPaletteColorLookupTableData = b"\x01\x02\x03\x04"
    out = transcode(encode(ds), ExplicitVRBigEndian, ExplicitVRLittleEndian)
    assert pydicom.dcmread(BytesIO(out)).RedPaletteColorLookupTableData == b"\x02\x01\x04\x03"
