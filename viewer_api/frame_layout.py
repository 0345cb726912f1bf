"""Where the frames of a stored instance lie, found by walking element headers only.

A frame request needs six Image Pixel attributes and the offset of Pixel Data; pydicom parses
every element before it into a Dataset, which cost several times the rest of the request.
Here the common case, a Part 10 file in Explicit or Implicit VR Little Endian with native
pixel data of a defined length, is walked header by header (PS3.5 7.1: tag, VR, length;
values skipped by their length), and only the six elements are kept, as pydicom's raw
elements, so they convert on access exactly as pydicom's own reading would have them. Anything
else (no preamble, big endian, deflated, encapsulated, an element of undefined length before
Pixel Data, a length running past the end) is left to pydicom: :func:`native_layout` says None.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs.part10 import EXPLICIT_VRS, LONG_VRS

# The Image Pixel attributes cutting frames needs (PS3.3 C.7.6.3): Samples per Pixel,
# Photometric Interpretation, Number of Frames, Rows, Columns, Bits Allocated.
LAYOUT_TAGS = frozenset((0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100))
_PREAMBLE = 128
_SAMPLES_PER_PIXEL, _PHOTOMETRIC, _NUMBER_OF_FRAMES = 0x00280002, 0x00280004, 0x00280008
_ROWS, _COLUMNS, _BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280100
_TRANSFER_SYNTAX = 0x00020010
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_TAG = struct.Struct("<HH").unpack_from
_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<L").unpack_from


def native_layout(blob: bytes) -> tuple[Dataset, int, int] | None:
    """The layout attributes of *blob* (a Dataset of LAYOUT_TAGS found), and the offset and
    length of its Pixel Data value; None where pydicom must read it (see module)."""
    layout = _native(blob)
    if layout is None:
        return None
    found, implicit, value_offset, pixel_length = layout
    elements: dict[BaseTag, DataElement | RawDataElement] = {
        Tag(tag): RawDataElement(Tag(tag), vr, len(raw), raw, 0, implicit, True)
        for tag, (vr, raw) in found.items()
    }
    return Dataset(elements), value_offset, pixel_length


def _native(blob: bytes) -> tuple[dict[int, tuple[str | None, bytes]], bool, int, int] | None:
    """The LAYOUT_TAGS elements found (VR, raw value), whether the data set is implicit VR,
    and the offset and length of the Pixel Data value; None where pydicom must read it."""
    if blob[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        return None
    meta = _walk(blob, _PREAMBLE + 4, False, frozenset((_TRANSFER_SYNTAX,)), meta=True)
    if meta is None or meta[1] < 0:
        return None
    found, start, _ = meta
    syntax = found.get(_TRANSFER_SYNTAX)
    value = syntax[1].rstrip(b"\x00 ").decode("ascii", "replace") if syntax else ""
    if value not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    implicit = value == ImplicitVRLittleEndian
    walked = _walk(blob, start, implicit, LAYOUT_TAGS)
    if walked is None:
        return None
    found, at, pixel_length = walked
    if at < 0 or pixel_length == _UNDEFINED:
        return None  # no Pixel Data, or encapsulated
    if not implicit and blob[at + 4 : at + 6] not in (b"OB", b"OW"):
        return None
    value_offset = at + (8 if implicit else 12)
    if value_offset + pixel_length > len(blob):
        return None
    return found, implicit, value_offset, pixel_length


@dataclass(frozen=True)
class NativeFrames:
    """Where the frames of native pixel data lie in a blob, read from the raw values."""

    offset: int  # of the Pixel Data value
    length: int  # of the Pixel Data value
    frames: int  # Number of Frames (1 when absent)
    frame_length: int  # bytes of one frame

    def cut(self, blob: bytes, number: int) -> memoryview:
        """Frame *number* (1-based) as it lies in *blob*."""
        start = self.offset + (number - 1) * self.frame_length
        return memoryview(blob)[start : start + self.frame_length]


def native_frames(blob: bytes) -> NativeFrames | None:
    """The frames of *blob* when they can be cut out as they lie (:func:`native_layout`'s case,
    byte-aligned, every frame there in full), their layout read from the six elements' raw
    bytes: unsigned shorts of one value (US), Number of Frames an integer string (IS), the
    Photometric Interpretation a code string (CS). None for anything else, which the Dataset
    path decides (pydicom's conversion, its defaults and its errors); pydicom's conversion of
    a Dataset cost more than finding the elements."""
    layout = _native(blob)
    if layout is None:
        return None
    found, _, offset, length = layout
    shorts: dict[int, int] = {}
    for tag in (_ROWS, _COLUMNS, _BITS_ALLOCATED, _SAMPLES_PER_PIXEL):
        if tag not in found:
            continue
        vr, raw = found[tag]
        if vr not in (None, "US") or len(raw) != 2:
            return None
        (shorts[tag],) = _U16(raw)
    frames = 1
    if _NUMBER_OF_FRAMES in found:
        vr, raw = found[_NUMBER_OF_FRAMES]
        text = raw.rstrip(b" \x00")  # padding; anything before the digits: pydicom decides
        if vr not in (None, "IS") or not text.isdigit():
            return None
        frames = max(1, int(text))
    bits = shorts.get(_BITS_ALLOCATED, 0)
    if bits % 8 or not bits or not shorts.get(_ROWS) or not shorts.get(_COLUMNS):
        return None
    if not shorts.get(_SAMPLES_PER_PIXEL):
        return None  # what the Photometric Interpretation implies: the Dataset path's rule
    samples = shorts[_SAMPLES_PER_PIXEL]
    photometric = found.get(_PHOTOMETRIC)
    if photometric is not None:
        if photometric[0] not in (None, "CS") or photometric[1][:1] in (b" ", b"\x00"):
            return None
        if photometric[1].rstrip(b" \x00") == b"YBR_FULL_422":
            samples = 2  # two chroma samples shared by each pair of pixels (PS3.3 C.7.6.3.1.2)
    frame_length = shorts[_ROWS] * shorts[_COLUMNS] * samples * bits // 8
    if length < frames * frame_length:
        return None
    return NativeFrames(offset, length, frames, frame_length)


def _walk(
    blob: bytes, pos: int, implicit: bool, wanted: frozenset[int], meta: bool = False
) -> tuple[dict[int, tuple[str | None, bytes]], int, int] | None:
    """Walk elements from *pos*: the *wanted* ones found (VR, value), and where the walk
    stopped with the length found there: at Pixel Data, or (-1, 0) past the last element,
    or, walking the File Meta Information (*meta*), at the first element of another group.
    None: an element of undefined length, an unknown VR, or an element cut off."""
    end = len(blob)
    found: dict[int, tuple[str | None, bytes]] = {}
    while pos + 8 <= end:
        group, element = _TAG(blob, pos)
        tag = (group << 16) | element
        if meta and group != 0x0002:
            return found, pos, 0
        vr: bytes | None = None
        if implicit:
            (length,) = _U32(blob, pos + 4)
            start = pos + 8
        else:
            vr = blob[pos + 4 : pos + 6]
            if vr not in EXPLICIT_VRS:
                return None  # e.g. an element written without its VR: pydicom copes
            if vr in LONG_VRS:
                if pos + 12 > end:
                    return None
                (length,) = _U32(blob, pos + 8)
                start = pos + 12
            else:
                (length,) = _U16(blob, pos + 6)
                start = pos + 8
        if tag == _PIXEL_DATA and not meta:
            return found, pos, length
        if length == _UNDEFINED or start + length > end:
            return None
        if tag in wanted:
            found[tag] = (None if vr is None else vr.decode("ascii"), blob[start : start + length])
        pos = start + length
    if pos != end:
        return None  # a header cut off
    return found, -1, 0
