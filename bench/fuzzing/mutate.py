"""Structure-aware mutation of real DICOM files, for fuzzing the archive's ingest paths.

A :class:`Seed` is a real file of ``data/`` with its data set located (``pacs.part10``) and its
element headers walked, nested sequences included. :func:`mutate` derives one broken (or
merely odd) instance from a seed: bit flips in the header region, truncation at an element
boundary, a length set to 0xFFFFFFFF / 0 / odd / past the end, sequences nested 1,000 deep, a
VR swapped for another, a value of huge VM, or text that is not valid in the Specific Character
Set it declares. Each mutant first gets fresh Study, Series and SOP Instance UIDs of the same
length (so that it is a new instance, not a replacement of an earlier one, and no offset
moves). Everything is seeded: the same (seed file, seed number) gives the same bytes.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from pacs.errors import InvalidInstance
from pacs.part10 import locate, with_meta

LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT")
SHORT_VRS = tuple(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())
_ALL_VRS = frozenset(LONG_VRS + SHORT_VRS + (b"UV",))
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_FRESH_UIDS = (0x0020000D, 0x0020000E, 0x00080018)  # Study, Series, SOP Instance UID
SPECIFIC_CHARACTER_SETS = (
    "",
    "ISO_IR 100",
    "ISO_IR 101",
    "ISO_IR 109",
    "ISO_IR 110",
    "ISO_IR 144",
    "ISO_IR 127",
    "ISO_IR 126",
    "ISO_IR 138",
    "ISO_IR 148",
    "ISO_IR 13",
    "ISO_IR 166",
    "ISO 2022 IR 6",
    "ISO 2022 IR 87",
    "ISO 2022 IR 159",
    "ISO 2022 IR 149",
    "ISO 2022 IR 58",
    "ISO_IR 192",
    "GB18030",
    "GBK",
    "\\ISO 2022 IR 87",
    "ISO 2022 IR 13\\ISO 2022 IR 87",
    "NOT_A_CHARSET",
)
# Byte strings no (or not every) character set above decodes as text.
BAD_TEXT = (
    b"\xff\xfe\xfd\xfc",
    b"\xc3\x28\xa0\xa1",  # invalid UTF-8
    b"\x1b$B\x1b(\xff",  # a cut-off ISO 2022 escape
    b"\x1b%G\xed\xa0\x80",  # UTF-8 escape, then a surrogate
    b"\x81\x30\x81",  # cut-off GB18030
    b"Doe^John\x00\x00",
    bytes(range(0x80, 0xA0)),
)


@dataclass(frozen=True)
class Element:
    """One element header found in an encoded data set (offsets into the body).

    Attributes
    ----------
    tag : int
        The tag, group << 16 | element.
    vr : bytes
        The explicit VR, or b"" (implicit VR, items and delimiters).
    start : int
        Offset of the header.
    length_at : int
        Offset of the length field.
    length_size : int
        2 or 4 bytes.
    value_start : int
        Offset of the value.
    length : int
        The declared length (0xFFFFFFFF: undefined).
    depth : int
        0 for the top-level data set.
    """

    tag: int
    vr: bytes
    start: int
    length_at: int
    length_size: int
    value_start: int
    length: int
    depth: int


@dataclass
class Seed:
    """A real file, its data set located and walked."""

    path: Path
    data: bytes
    offset: int
    transfer_syntax_uid: str
    SOPClassUID: str
    body: bytes  # the data set, inflated when deflated
    elements: list[Element]

    @property
    def little(self) -> bool:
        return self.transfer_syntax_uid != ExplicitVRBigEndian

    @property
    def implicit(self) -> bool:
        return self.transfer_syntax_uid == ImplicitVRLittleEndian

    @property
    def deflated(self) -> bool:
        return self.transfer_syntax_uid == DeflatedExplicitVRLittleEndian


@dataclass(frozen=True)
class Mutant:
    """One mutated instance, as a C-STORE carries it and as STOW-RS carries it.

    Attributes
    ----------
    kind : str
        Which mutation made it.
    seed : Path
        The real file it was derived from.
    SOPClassUID, SOPInstanceUID, TransferSyntaxUID : str
        What a C-STORE request announces for it.
    dataset : bytes
        The (broken) data set, encoded in *TransferSyntaxUID*.
    part10 : bytes
        A Part 10 file of it, for STOW-RS (sometimes with broken File Meta Information).
    """

    kind: str
    seed: Path
    SOPClassUID: str
    SOPInstanceUID: str
    TransferSyntaxUID: str
    dataset: bytes
    part10: bytes


def load_seed(path: Path) -> Seed | None:
    """The seed of *path*, or None when it is not a DICOM instance the archive takes as is."""
    data = path.read_bytes()
    try:
        located = locate(data)
        ds = located.read_dataset()
        sop_class = str(ds.SOPClassUID)
        str(ds.SOPInstanceUID)
    except (InvalidInstance, AttributeError, ValueError):
        return None
    body = bytes(located.body)
    try:
        elements = list(walk(body, located.transfer_syntax_uid))
    except (ValueError, struct.error, IndexError):
        return None
    return Seed(
        path, data, located.dataset_offset, located.transfer_syntax_uid, sop_class, body, elements
    )


def seed_files(root: Path) -> list[Path]:
    """Every file under *root* that is not documentation or annotation."""
    skip = {".md", ".txt", ".csv", ".xml", ".json", ".py"}
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() not in skip and "LICENSE" not in p.name
    )


def walk(body: bytes, transfer_syntax_uid: str) -> Iterator[Element]:
    """Every element header of *body*, depth first, nested sequence items included."""
    little = transfer_syntax_uid != ExplicitVRBigEndian
    implicit = transfer_syntax_uid == ImplicitVRLittleEndian
    u16 = struct.Struct("<H" if little else ">H").unpack_from
    u32 = struct.Struct("<L" if little else ">L").unpack_from
    yield from _walk(body, 0, len(body), implicit, 0, u16, u32)


def _walk(
    body: bytes,
    pos: int,
    end: int,
    implicit: bool,
    depth: int,
    u16: Callable[[bytes, int], tuple[int]],
    u32: Callable[[bytes, int], tuple[int]],
) -> Iterator[Element]:
    while pos + 8 <= end and depth < 64:
        tag = (u16(body, pos)[0] << 16) | u16(body, pos + 2)[0]
        vr = b"" if implicit else body[pos + 4 : pos + 6]
        if vr not in _ALL_VRS or (tag >> 16) == 0xFFFE:
            vr, length_at, size = b"", pos + 4, 4
        elif vr in LONG_VRS or vr == b"UV":
            length_at, size = pos + 8, 4
        else:
            length_at, size = pos + 6, 2
        length = u32(body, length_at)[0] if size == 4 else u16(body, length_at)[0]
        value = length_at + size
        yield Element(tag, vr, pos, length_at, size, value, length, depth)
        if tag in (_ITEM_END, _SEQUENCE_END):
            pos = value
        elif tag == _ITEM:
            if length == _UNDEFINED:
                pos = value  # its elements follow, then an item delimiter
            else:
                yield from _walk(
                    body, value, min(value + length, end), implicit, depth + 1, u16, u32
                )
                pos = value + length
        elif length == _UNDEFINED:
            pos = value  # sequence items (or encapsulated fragments) follow
        else:
            nested = vr == b"SQ" or (
                not vr and length >= 8 and value + 4 <= end and u16(body, value)[0] == 0xFFFE
            )
            if nested and tag != 0x7FE00010:
                yield from _walk(
                    body, value, min(value + length, end), implicit, depth + 1, u16, u32
                )
            pos = value + length


class Encoder:
    """Element headers in one transfer syntax."""

    def __init__(self, seed: Seed) -> None:
        self.little = seed.little
        self.implicit = seed.implicit
        self.order = "<" if self.little else ">"

    def header(self, tag: int, vr: bytes, length: int) -> bytes:
        o = self.order
        head = struct.pack(f"{o}HH", tag >> 16, tag & 0xFFFF)
        if self.implicit or (tag >> 16) == 0xFFFE:
            return head + struct.pack(f"{o}L", length)
        if vr in LONG_VRS:
            return head + vr + b"\0\0" + struct.pack(f"{o}L", length)
        return head + vr + struct.pack(f"{o}H", min(length, 0xFFFF))

    def element(self, tag: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0" if vr == b"UI" else b" "
        return self.header(tag, vr, len(value)) + value


def fresh_uids(seed: Seed, rng: random.Random) -> tuple[bytes, str]:
    """The seed's body with new top-level Study/Series/SOP Instance UIDs of the same length;
    and the new SOP Instance UID."""
    body = bytearray(seed.body)
    sop_uid = ""
    for element in seed.elements:
        if element.depth or element.tag not in _FRESH_UIDS or element.length == _UNDEFINED:
            continue
        size = element.length
        value = bytes(body[element.value_start : element.value_start + size])
        width = len(value.rstrip(b"\0 "))
        if width < 8:
            continue
        digits = width - len("2.25.")
        uid = "2.25." + str(rng.randrange(10 ** (digits - 1), 10**digits))
        body[element.value_start : element.value_start + width] = uid.encode()
        if element.tag == 0x00080018:
            sop_uid = uid
    return bytes(body), sop_uid


def _set_length(body: bytearray, element: Element, length: int, order: str) -> None:
    if element.length_size == 2:
        struct.pack_into(f"{order}H", body, element.length_at, length & 0xFFFF)
    else:
        struct.pack_into(f"{order}L", body, element.length_at, length & 0xFFFFFFFF)


def _header_region_end(seed: Seed) -> int:
    """Where Pixel Data starts (bit flips inside pixel values say nothing about parsing)."""
    for element in seed.elements:
        if element.tag == 0x7FE00010 and element.depth == 0:
            return element.value_start
    return len(seed.body)


def _pick(seed: Seed, rng: random.Random, want: Callable[[Element], bool]) -> Element | None:
    candidates = [e for e in seed.elements if want(e)]
    return rng.choice(candidates) if candidates else None


def _replace_top(seed: Seed, body: bytes, replacements: dict[int, bytes]) -> bytes:
    """*body* with top-level elements replaced or inserted (at their sorted place); the
    replacements are encoded elements, the rest of *body* is kept as it is."""
    top = [e for e in seed.elements if e.depth == 0 and (e.tag >> 16) != 0xFFFE]
    todo = dict(replacements)
    out = bytearray()
    for i, element in enumerate(top):
        for tag in sorted(t for t in todo if t < element.tag):
            out += todo.pop(tag)
        end = top[i + 1].start if i + 1 < len(top) else len(body)
        if element.tag in todo:
            out += todo.pop(element.tag)
        else:
            out += body[element.start : end]
    for tag in sorted(todo):
        out += todo[tag]
    return bytes(out)


def _text_vr(tag: int) -> bytes:
    return {0x00080005: b"CS", 0x00100010: b"PN", 0x00081030: b"LO", 0x0008103E: b"LO"}.get(
        tag, b"LO"
    )


# Each mutation: (seed, body with fresh UIDs, rng) -> mutated body, or None when it does not
# apply to this seed.
Mutation = Callable[[Seed, bytes, random.Random], bytes | None]


def bit_flips(seed: Seed, body: bytes, rng: random.Random) -> bytes | None:
    out = bytearray(body)
    end = max(_header_region_end(seed), 1)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(end)
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncation(seed: Seed, body: bytes, rng: random.Random) -> bytes | None:
    element = rng.choice(seed.elements)
    cut = rng.choice(
        (element.start, element.start + 2, element.length_at, element.value_start, len(body) - 1)
    )
    return body[: max(0, min(cut, len(body) - 1))]


def length_undefined(seed: Seed, body: bytes, rng: random.Random) -> bytes | None:
    element = _pick(seed, rng, lambda e: e.length != _UNDEFINED and e.tag >> 16 != 0xFFFE)
    if element is None:
        return None
    out = bytearray(body)
    _set_length(out, element, 0xFFFFFFFF, Encoder(seed).order)
    return bytes(out)


def length_odd(seed: Seed, body: bytes, rng: random.Random) -> bytes | None:
    element = _pick(seed, rng, lambda e: 0 < e.length < _UNDEFINED)
    if element is None:
        return None
    out = bytearray(body)
    _set_length(
        out,
        element,
        element.length | 1 if element.length % 2 == 0 else element.length - 1,
        Encoder(seed).order,
    )
    return bytes(out)


def length_past_end(seed: Seed, body: bytes, rng: random.Random) -> bytes | None:
    element = _pick(seed, rng, lambda e: e.length != _UNDEFINED)
    if element is None:
        return None
    out = bytearray(body)
    past = len(body) - element.value_start + rng.choice((1, 2, 1024, 0x7FFFFFFF))
    _set_length(out, element, past, Encoder(seed).order)
    return bytes(out)


def length_zero(seed: Seed, body: bytes, rng: random.Random) -> bytes | None:
    element = _pick(seed, rng, lambda e: 0 < e.length < _UNDEFINED)
    if element is None:
        return None
    out = bytearray(body)
    _set_length(out, element, 0, Encoder(seed).order)
    return bytes(out)


def deep_nesting(seed: Seed, body: bytes, rng: random.Random) -> bytes | None:
    """A Content Sequence nested *depth* items deep (undefined or defined lengths)."""
    enc = Encoder(seed)
    depth = rng.choice((65, 1000, 1000))
    if rng.random() < 0.5:
        inner = b""
        for _ in range(depth):
            inner = (
                enc.header(0x0040A730, b"SQ", _UNDEFINED)
                + enc.header(_ITEM, b"", _UNDEFINED)
                + inner
                + enc.header(_ITEM_END, b"", 0)
                + enc.header(_SEQUENCE_END, b"", 0)
            )
    else:
        inner = b""
        for _ in range(depth):
            item = enc.header(_ITEM, b"", len(inner)) + inner
            inner = enc.header(0x0040A730, b"SQ", len(item)) + item
    return _replace_top(seed, body, {0x0040A730: inner})


def vr_swap(seed: Seed, body: bytes, rng: random.Random) -> bytes | None:
    if seed.implicit:
        return None
    element = _pick(seed, rng, lambda e: bool(e.vr))
    if element is None:
        return None
    out = bytearray(body)
    out[element.start + 4 : element.start + 6] = rng.choice(LONG_VRS + SHORT_VRS + (b"XX",))
    return bytes(out)


def huge_vm(seed: Seed, body: bytes, rng: random.Random) -> bytes | None:
    enc = Encoder(seed)
    value = rng.choice((b"0\\", b"1.5\\", b"\\"))
    count = rng.choice((1000, 20000, 65534 // len(value)))
    tag, vr = rng.choice(((0x00200037, b"DS"), (0x00080008, b"CS"), (0x00280030, b"DS")))
    payload = (value * count)[:65534]
    if rng.random() < 0.3 and not seed.implicit:  # past what a short VR can say
        tag, vr, payload = 0x00204000, b"UT", value * 100000
    return _replace_top(seed, body, {tag: enc.element(tag, vr, payload)})


def bad_charset(seed: Seed, body: bytes, rng: random.Random) -> bytes | None:
    enc = Encoder(seed)
    charset = rng.choice(SPECIFIC_CHARACTER_SETS).encode()
    changes = {0x00080005: enc.element(0x00080005, b"CS", charset)}
    for tag in rng.sample((0x00100010, 0x00081030, 0x0008103E, 0x00100020), rng.randint(1, 3)):
        changes[tag] = enc.element(tag, _text_vr(tag), rng.choice(BAD_TEXT) + b"^x")
    return _replace_top(seed, body, changes)


MUTATIONS: dict[str, Mutation] = {
    "bit_flips": bit_flips,
    "truncation": truncation,
    "length_undefined": length_undefined,
    "length_odd": length_odd,
    "length_past_end": length_past_end,
    "length_zero": length_zero,
    "deep_nesting": deep_nesting,
    "vr_swap": vr_swap,
    "huge_vm": huge_vm,
    "bad_charset": bad_charset,
}


def mutate(seed: Seed, number: int, kind: str | None = None) -> Mutant:
    """The *number*-th mutant of *seed* (deterministic), by *kind* or a mutation drawn."""
    rng = random.Random(f"{seed.path.name}:{number}")
    body, sop_uid = fresh_uids(seed, rng)
    kinds = [kind] if kind else list(MUTATIONS)
    rng.shuffle(kinds)
    for name in kinds:
        mutated = MUTATIONS[name](seed, body, rng)
        if mutated is not None:
            break
    else:
        name, mutated = "none", body
    dataset = zlib.compress(mutated)[2:-4] if seed.deflated else mutated
    sop_uid = sop_uid or "2.25.1"
    part10 = with_meta(dataset, seed.SOPClassUID, sop_uid, seed.transfer_syntax_uid)
    if rng.random() < 0.05:  # now and then, break the File Meta Information instead
        meta = bytearray(part10)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(128, 132 + 200)
            meta[at] ^= 1 << rng.randrange(8)
        part10 = bytes(meta)
        name += "+meta"
    return Mutant(
        name, seed.path, seed.SOPClassUID, sop_uid, seed.transfer_syntax_uid, dataset, part10
    )
