"""Part 10 framing of received bytes (PS3.10 7.1, PS3.5 7).

Finds the data set inside what a peer sent (a Part 10 file with or without preamble and File Meta
Information, or a bare data set as DIMSE carries it), checks that its encoding is complete (no
element or sequence cut off), and frames it as a Part 10 file *without re-encoding the data set*:
received bytes are kept as they are, only the File Meta Information is filled in when missing.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacs.errors import InvalidInstance
from pacs.uids import is_valid_uid

PREAMBLE = bytes(128)
MAGIC = b"DICM"
# Our implementation's identity in the File Meta Information we write (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID = "2.25.248371836424339386116398575591462035331"
IMPLEMENTATION_VERSION_NAME = "PACS_AI_0_1"

# PS3.5 7.1.2: VRs whose explicit encoding has a 4-byte length after 2 reserved bytes.
LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
EXPLICIT_VRS = LONG_VRS | frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split()
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_MAX_NESTING = 64


@dataclass(frozen=True)
class Located:
    """Where the data set lies in received bytes, and how it is encoded.

    Attributes
    ----------
    data : bytes
        The bytes as received.
    dataset_offset : int
        Offset of the first data set element in *data*.
    transfer_syntax_uid : str
        The transfer syntax of the data set.
    meta : FileMetaDataset
        The File Meta Information that came with *data* (empty for a bare data set).
    body : bytes | memoryview
        The encoded data set, inflated when the transfer syntax is deflated.
    header_length : int
        Length of the part of *body* before its top-level Pixel Data element (all of it
        without one): what :meth:`read_dataset` parses.
    wanted : dict
        Top-level elements before Pixel Data whose tags :func:`locate` was asked for: tag ->
        (VR as written, None in implicit VR; offset of the value in *body*; its length).
    """

    data: bytes
    dataset_offset: int
    transfer_syntax_uid: str
    meta: FileMetaDataset
    body: bytes | memoryview
    header_length: int
    wanted: dict[int, tuple[str | None, int, int]] = field(default_factory=dict)

    @property
    def is_complete_part10(self) -> bool:
        """True when *data* already is a Part 10 file with preamble and usable meta."""
        return bool(
            self.data[128:132] == MAGIC
            and "MediaStorageSOPClassUID" in self.meta
            and "MediaStorageSOPInstanceUID" in self.meta
            and self.meta.get("TransferSyntaxUID") == self.transfer_syntax_uid
        )

    def read_dataset(self) -> Dataset:
        """Parse the data set up to (not including) Pixel Data; values decode lazily.

        Raises
        ------
        InvalidInstance
            pydicom cannot parse the data set.
        """
        implicit = self.transfer_syntax_uid == ImplicitVRLittleEndian
        little = self.transfer_syntax_uid != ExplicitVRBigEndian
        try:
            return read_dataset(
                BytesIO(self.body[: self.header_length]),  # a copy of the header alone
                is_implicit_VR=implicit,
                is_little_endian=little,
                stop_when=_at_pixel_data,
            )
        except Exception as exc:  # pydicom raises many types for a broken data set
            raise InvalidInstance(f"unparsable data set: {exc}") from exc

    def wanted_dataset(self) -> Dataset:
        """The elements :func:`locate` was asked for, as a Dataset of pydicom's raw elements:
        their values convert on access exactly as :meth:`read_dataset`'s would (same VR,
        byte order and character set rules), and nothing else is parsed."""
        implicit = self.transfer_syntax_uid == ImplicitVRLittleEndian
        little = self.transfer_syntax_uid != ExplicitVRBigEndian
        body = self.body
        return Dataset(
            {
                BaseTag(tag): RawDataElement(
                    BaseTag(tag), vr, length, bytes(body[at : at + length]), at, implicit, little
                )
                for tag, (vr, at, length) in self.wanted.items()
            }
        )


def locate(
    data: bytes, transfer_syntax_uid: str | None = None, wanted: frozenset[int] = frozenset()
) -> Located:
    """Locate the data set in *data* and check that its encoding is complete.

    Parameters
    ----------
    data : bytes
        A Part 10 file (preamble and meta optional) or, when *transfer_syntax_uid* is given, a
        bare data set as carried by a C-STORE request.
    transfer_syntax_uid : str, optional
        The transfer syntax negotiated for a bare data set.
    wanted : frozenset of int
        Tags of top-level elements to note where they lie while walking the data set
        (:attr:`Located.wanted`, :meth:`Located.wanted_dataset`).

    Raises
    ------
    InvalidInstance
        Empty, truncated or structurally broken input.
    """
    if transfer_syntax_uid is not None:
        offset, meta = 0, FileMetaDataset()
    else:
        offset, meta = _read_meta(data)
        transfer_syntax_uid = meta.get("TransferSyntaxUID") or _guess_transfer_syntax(data, offset)
    if not is_valid_uid(transfer_syntax_uid):
        raise InvalidInstance(f"invalid Transfer Syntax UID {transfer_syntax_uid!r}")
    if offset >= len(data):
        raise InvalidInstance("no data set after the File Meta Information")
    body, header_length, found = _complete_body(data, offset, str(transfer_syntax_uid), wanted)
    return Located(data, offset, str(transfer_syntax_uid), meta, body, header_length, found)


def _at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag == 0x7FE00010)


def with_meta(
    dataset_bytes: bytes, SOPClassUID: str, SOPInstanceUID: str, TransferSyntaxUID: str
) -> bytes:
    """Prefix an encoded data set with preamble and File Meta Information (PS3.10 7.1).

    The data set bytes are not touched. The meta is a function of the three UIDs only, so the
    same instance received twice frames to the same bytes (:func:`file_meta`).
    """
    return b"".join((PREAMBLE, MAGIC, file_meta(SOPClassUID, SOPInstanceUID, TransferSyntaxUID),
                     dataset_bytes))  # fmt: skip


@dataclass(frozen=True)
class FramedDigest:
    """The SHA-256 of :func:`with_meta` (*SOPClassUID*, *SOPInstanceUID*,
    *TransferSyntaxUID*) around a data set, computed while the data set arrived
    (:func:`framed_digest`): the blob's digest without reading its 0.5 MB again."""

    SOPClassUID: str
    SOPInstanceUID: str
    TransferSyntaxUID: str
    sha256: str


def framed_digest(SOPClassUID: str, SOPInstanceUID: str, TransferSyntaxUID: str) -> hashlib._Hash:
    """A SHA-256 begun on what :func:`with_meta` puts before a data set of that instance:
    update it with the data set's bytes, in order, as they arrive."""
    return hashlib.sha256(
        b"".join((PREAMBLE, MAGIC, file_meta(SOPClassUID, SOPInstanceUID, TransferSyntaxUID)))
    )


def file_meta(SOPClassUID: str, SOPInstanceUID: str, TransferSyntaxUID: str) -> bytes:
    """The File Meta Information elements (group 0002, Explicit VR Little Endian) we write for
    an instance: the bytes pydicom's ``write_file_meta_info`` writes for them (a test holds
    the two equal), encoded directly because this runs for every received instance."""
    elements = b"".join(
        (
            _META_VERSION,
            _short(0x0002, b"UI", _padded(SOPClassUID, b"\0")),
            _short(0x0003, b"UI", _padded(SOPInstanceUID, b"\0")),
            _short(0x0010, b"UI", _padded(TransferSyntaxUID, b"\0")),
            _IMPLEMENTATION,
        )
    )
    return _short(0x0000, b"UL", struct.pack("<L", len(elements))) + elements


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    """A group 0002 element with a 2-byte length (PS3.5 7.1.2)."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    encoded = value.encode("ascii")
    return encoded + pad if len(encoded) % 2 else encoded


# FileMetaInformationVersion (OB, 4-byte length) 00 01, and the implementation's identity.
_META_VERSION = struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
_IMPLEMENTATION = _short(0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\0")) + _short(
    0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")
)


def _read_meta(data: bytes) -> tuple[int, FileMetaDataset]:
    """Return (offset of the data set, parsed group 0002 elements)."""
    if data[128:132] == MAGIC:
        start = 132
    elif data[:4] == MAGIC:
        start = 4
    else:
        start = 0
    pos = start
    # File Meta Information is always Explicit VR Little Endian (PS3.10 7.1).
    while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        vr = data[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            if pos + 12 > len(data):
                raise InvalidInstance("truncated File Meta Information")
            length = struct.unpack_from("<L", data, pos + 8)[0]
            pos += 12
        elif vr in EXPLICIT_VRS:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8
        else:  # some writers put implicit VR meta; tolerate it
            length = struct.unpack_from("<L", data, pos + 4)[0]
            pos += 8
        if length == _UNDEFINED or pos + length > len(data):
            raise InvalidInstance("truncated File Meta Information")
        pos += length
    if pos == start:
        return start, FileMetaDataset()
    try:
        raw = read_dataset(BytesIO(data[start:pos]), is_implicit_VR=False, is_little_endian=True)
        meta = FileMetaDataset(raw)
        meta.get("TransferSyntaxUID")  # decode now: a broken value is a broken file
    except Exception as exc:  # pydicom raises many types for broken meta
        raise InvalidInstance(f"unreadable File Meta Information: {exc}") from exc
    return pos, meta


def _guess_transfer_syntax(data: bytes, offset: int) -> str:
    """Implicit/explicit VR and byte order of a data set without meta (PS3.5 A.1, A.2, A.3)."""
    if len(data) < offset + 8:
        raise InvalidInstance("data set too short to hold one element")
    explicit = data[offset + 4 : offset + 6] in EXPLICIT_VRS
    group_le = struct.unpack_from("<H", data, offset)[0]
    group_be = struct.unpack_from(">H", data, offset)[0]
    # A data set without meta starts with a low, even group (0008 in practice).
    if min(group_le, group_be) > 0x00FF or min(group_le, group_be) % 2:
        raise InvalidInstance("not DICOM: no File Meta Information and no data set element")
    if group_be < group_le:
        if not explicit:
            raise InvalidInstance("implicit VR big endian is not a DICOM transfer syntax")
        return str(ExplicitVRBigEndian)
    return str(ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian)


def _complete_body(
    data: bytes, offset: int, transfer_syntax_uid: str, wanted: frozenset[int] = frozenset()
) -> tuple[bytes | memoryview, int, dict[int, tuple[str | None, int, int]]]:
    """Return the (inflated) data set, the length of its part before the top-level Pixel
    Data element and where the *wanted* top-level elements before it lie; raise
    InvalidInstance when it is cut off anywhere."""
    implicit = transfer_syntax_uid == ImplicitVRLittleEndian
    little = transfer_syntax_uid != ExplicitVRBigEndian
    buf = memoryview(data)[offset:]
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(buf) + inflater.flush()
        except zlib.error as exc:
            raise InvalidInstance(f"deflated data set does not inflate: {exc}") from exc
        if not inflater.eof:
            raise InvalidInstance("deflated data set is truncated")
        buf = memoryview(inflated)
    walker = _Walker(buf, little, wanted)
    walker.dataset(0, implicit, delimited=False, depth=0)
    header_length = walker.pixel_data if walker.pixel_data is not None else len(buf)
    return buf, header_length, walker.found


class _Walker:
    """Walks element headers (not values) of an encoded data set, PS3.5 7.1 and 7.5."""

    def __init__(self, buf: memoryview, little: bool, wanted: frozenset[int] = frozenset()) -> None:
        self.buf = buf
        self.end = len(buf)
        self.pixel_data: int | None = None  # where the top-level Pixel Data element starts
        self.wanted = wanted  # top-level tags whose values to note (before Pixel Data)
        self.found: dict[int, tuple[str | None, int, int]] = {}
        self.u16 = struct.Struct("<H" if little else ">H").unpack_from
        self.u32 = struct.Struct("<L" if little else ">L").unpack_from
        self.u32le = struct.Struct("<L").unpack_from

    def _tag(self, pos: int, what: str) -> int:
        if pos + 8 > self.end:
            raise InvalidInstance(f"truncated data set: {what} cut off at byte {pos}")
        return int((self.u16(self.buf, pos)[0] << 16) | self.u16(self.buf, pos + 2)[0])

    def dataset(self, pos: int, implicit: bool, delimited: bool, depth: int) -> int:
        if depth > _MAX_NESTING:
            raise InvalidInstance("sequences nested too deeply")
        while pos < self.end:
            tag = self._tag(pos, "element header")
            if tag == _ITEM_DELIMITER and delimited:
                return pos + 8
            if tag == 0x7FE00010 and depth == 0 and self.pixel_data is None:
                self.pixel_data = pos
            pos = self.element(pos, tag, implicit, depth)
        if delimited:
            raise InvalidInstance("truncated data set: an item of undefined length is not closed")
        return pos

    def element(self, pos: int, tag: int, implicit: bool, depth: int) -> int:
        vr = b"" if implicit else bytes(self.buf[pos + 4 : pos + 6])
        if vr not in EXPLICIT_VRS or (tag >> 16) == 0xFFFE:
            # Implicit VR, an item tag, or (as pydicom tolerates) an element written without
            # its VR inside an explicit VR data set.
            length = int(self.u32(self.buf, pos + 4)[0])
            pos += 8
        else:
            if vr in LONG_VRS:
                if pos + 12 > self.end:
                    raise InvalidInstance(f"truncated data set: header of {tag:08X} cut off")
                length = int(self.u32(self.buf, pos + 8)[0])
                pos += 12
            else:
                length = int(self.u16(self.buf, pos + 6)[0])
                pos += 8
        # A wanted element of undefined length is a sequence, not a value: not noted.
        if depth == 0 and tag in self.wanted and self.pixel_data is None and length != _UNDEFINED:
            self.found[tag] = (vr.decode("ascii") if vr in EXPLICIT_VRS else None, pos, length)
        if length != _UNDEFINED:
            if pos + length > self.end:
                raise InvalidInstance(
                    f"truncated data set: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares "
                    f"{length} bytes, {self.end - pos} remain"
                )
            if self._holds_items(pos, length, tag, vr, implicit):
                # A sequence of defined length: walked like one of undefined length, within
                # its bounds, so that its nesting is bounded too (pydicom decodes sequences
                # recursively when the instance is served).
                Bounded(self, pos + length).sequence(
                    pos, tag, implicit or vr == b"UN", depth + 1, delimited=False
                )
            return pos + length
        # Undefined length: a sequence, encapsulated pixel data, or UN holding implicit VR LE
        # content (PS3.5 6.2.2 note).
        return self.sequence(pos, tag, implicit or vr == b"UN", depth + 1)

    def _holds_items(self, pos: int, length: int, tag: int, vr: bytes, implicit: bool) -> bool:
        """Whether a defined-length value is a sequence pydicom will decode as one: VR SQ, or
        (implicit VR, UN) a tag the dictionary says is SQ, or a private one starting with an
        item."""
        if vr == b"SQ":
            return True
        if (vr and vr != b"UN") or length < 8 or tag == 0x7FE00010:
            return False
        if dictionary_has_tag(tag):
            return bool(dictionary_VR(tag) == "SQ")
        # A private element: pydicom's private dictionary may know it as a sequence.
        first = (self.u16(self.buf, pos)[0] << 16) | self.u16(self.buf, pos + 2)[0]
        return bool((tag >> 16) % 2 and first == _ITEM)

    def sequence(
        self, pos: int, tag: int, implicit: bool, depth: int, delimited: bool = True
    ) -> int:
        if depth > _MAX_NESTING:
            raise InvalidInstance("sequences nested too deeply")
        while pos < self.end:
            item_tag = self._tag(pos, "item header")
            length = int(self.u32(self.buf, pos + 4)[0])
            if item_tag == _SEQUENCE_DELIMITER:
                return pos + 8
            if item_tag != _ITEM:
                raise InvalidInstance(f"malformed sequence {tag:08X}: found {item_tag:08X}")
            if length == _UNDEFINED:
                pos = self.dataset(pos + 8, implicit, delimited=True, depth=depth)
            elif pos + 8 + length > self.end:
                raise InvalidInstance(f"truncated data set: an item of {tag:08X} is cut off")
            else:
                if tag != 0x7FE00010:  # an item's data set (not a pixel data fragment)
                    Bounded(self, pos + 8 + length).dataset(pos + 8, implicit, False, depth)
                pos += 8 + length
        if not delimited:
            return pos
        raise InvalidInstance(
            f"truncated data set: sequence ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not closed"
        )


class Bounded(_Walker):
    """A walker over the value of one defined-length sequence or item (ends at its end)."""

    def __init__(self, outer: _Walker, end: int) -> None:
        self.buf = outer.buf
        self.end = end
        self.pixel_data = None  # only the outermost walker looks for it
        self.wanted, self.found = frozenset(), {}  # and notes the wanted elements
        self.u16 = outer.u16
        self.u32 = outer.u32
        self.u32le = outer.u32le
