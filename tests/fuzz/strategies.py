"""Hypothesis strategies for structure-aware inputs: encoded data sets, multipart bodies, query
parameters, JWTs."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from hypothesis import strategies as st

from bench.fuzzing.mutate import BAD_TEXT, LONG_VRS, SHORT_VRS, SPECIFIC_CHARACTER_SETS

# Tags worth hitting: the four UIDs the archive requires, text it indexes, sequences, pixels.
TAGS = (
    0x00080005,
    0x00080016,
    0x00080018,
    0x00080020,
    0x00080060,
    0x00100010,
    0x00100020,
    0x00100030,
    0x00100040,
    0x0020000D,
    0x0020000E,
    0x00200011,
    0x00200013,
    0x00280008,
    0x00280010,
    0x0040A730,
    0x7FE00010,
    0xFFFEE000,
    0xFFFEE00D,
    0xFFFEE0DD,
)
UIDS = ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "2.25.123456789", "", "1..2", "01.2", "x" * 70)

text_values = st.one_of(
    st.sampled_from([u.encode() for u in UIDS]),
    st.sampled_from(BAD_TEXT),
    st.sampled_from([c.encode() for c in SPECIFIC_CHARACTER_SETS]),
    st.binary(max_size=80),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> tuple[int, bytes, bytes | list[Any], int | None]:
    """(tag, VR, value or nested items, length override or None)."""
    tag = draw(st.one_of(st.sampled_from(TAGS), st.integers(0, 0xFFFFFFFF)))
    if depth < 3 and draw(st.integers(0, 5)) == 0:
        items = draw(st.lists(st.lists(elements(depth + 1), max_size=3), max_size=3))
        return tag, b"SQ", items, draw(st.sampled_from([None, None, 0xFFFFFFFF]))
    vr = draw(st.sampled_from(LONG_VRS + SHORT_VRS + (b"UV", b"\0\0", b"zz")))
    value = draw(text_values)
    length = draw(
        st.one_of(
            st.none(),
            st.none(),
            st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF]),
            st.integers(0, 300),
        )
    )
    return tag, vr, value, length


def encode(items: list[Any], implicit: bool, little: bool) -> bytes:
    """Encode elements from :func:`elements` (lengths as drawn, right or wrong)."""
    order = "<" if little else ">"
    out = b""
    for tag, vr, value, length in items:
        if isinstance(value, list):
            inner = b"".join(
                struct.pack(f"{order}HHL", 0xFFFE, 0xE000, len(encoded)) + encoded
                for encoded in (encode(item, implicit, little) for item in value)
            )
            if length == 0xFFFFFFFF:
                inner += struct.pack(f"{order}HHL", 0xFFFE, 0xE0DD, 0)
            value = inner
        declared = len(value) if length is None else length
        head = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
        if implicit or tag >> 16 == 0xFFFE:
            out += head + struct.pack(f"{order}L", declared & 0xFFFFFFFF) + value
        elif vr in LONG_VRS or vr == b"UV":
            out += head + vr + b"\0\0" + struct.pack(f"{order}L", declared & 0xFFFFFFFF) + value
        else:
            out += head + vr + struct.pack(f"{order}H", declared & 0xFFFF) + value
    return out


SYNTAXES = {
    "1.2.840.10008.1.2": (True, True),
    "1.2.840.10008.1.2.1": (False, True),
    "1.2.840.10008.1.2.2": (False, False),
    "1.2.840.10008.1.2.4.50": (False, True),
}


@st.composite
def data_sets(draw: st.DrawFn) -> tuple[str, bytes]:
    """(transfer syntax, an encoded data set): mostly a valid core of UIDs, then drawn
    elements, in tag order or not."""
    syntax = draw(st.sampled_from(sorted(SYNTAXES)))
    implicit, little = SYNTAXES[syntax]
    core: list[Any] = []
    if draw(st.booleans()):
        core = [
            (0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0", None),
            (0x00080018, b"UI", draw(st.sampled_from([b"2.25.1", b"2.25.77", b"2.25.9\0"])), None),
            (0x0020000D, b"UI", b"2.25.2", None),
            (0x0020000E, b"UI", b"2.25.3", None),
        ]
    items = core + draw(st.lists(elements(), max_size=8))
    if draw(st.booleans()):
        items.sort(key=lambda item: item[0])
    return syntax, encode(items, implicit, little)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """(body, boundary): well-formed parts, with the framing broken now and then."""
    boundary = draw(st.sampled_from(["b", "fuzz-boundary", "x" * 70, "--", "a b", "é"]))
    delimiter = b"--" + boundary.encode()
    parts = draw(st.lists(st.binary(max_size=64), max_size=4))
    chunks = [draw(st.sampled_from([b"", b"preamble", b"\r\n"]))]
    for part in parts:
        headers = draw(
            st.sampled_from(
                [
                    b"Content-Type: application/dicom\r\n\r\n",
                    b"content-type:application/dicom;transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n",
                    b"\r\n",
                    b"Content-Type: text/plain\r\n\r\n",
                    b"X: " + b"y" * 20000 + b"\r\n\r\n",
                    b"Content-Type: application/dicom\r\n",
                ]
            )
        )
        chunks.append(delimiter + b"\r\n" + headers + part + b"\r\n")
    chunks.append(draw(st.sampled_from([delimiter + b"--\r\n", delimiter + b"--", delimiter, b""])))
    body = b"".join(chunks)
    if draw(st.booleans()):  # damage: cut, or splice random bytes in
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(max_size=16)) + body[at + draw(st.integers(0, 8)) :]
    return body, boundary


# Query parameter names: real attributes and tags, QIDO controls, FHIR names, junk.
QIDO_NAMES = (
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "00100010",
    "0020000D",
    "Modality",
    "SeriesNumber",
    "InstanceNumber",
    "limit",
    "offset",
    "fuzzymatching",
    "includefield",
    "PixelData",
    "7FE00010",
    "nonsense",
    "",
)
FHIR_NAMES = (
    "_id",
    "_count",
    "_offset",
    "_summary",
    "_total",
    "_include",
    "_revinclude",
    "patient",
    "patient.identifier",
    "identifier",
    "status",
    "date",
    "started",
    "subject",
    "imaging-study",
    "code",
    "name",
    "birthdate",
    "_format",
    "bogus",
)
query_values = st.one_of(
    st.sampled_from(
        [
            "*",
            "?",
            "19990101-",
            "-20240101",
            "20240101-20230101",
            "2024",
            "ge2024-01-01",
            "lt2024-02-30T25:61",
            "eq2024-01-01T00:00:00.123456789+14:00",
            "Doe^J*",
            "=Doe^John",
            "1.2.3",
            "1.2.3\\4.5.6",
            "all",
            "0",
            "-1",
            "9" * 80,
            "true",
            "CT\\MR",
            "a,b,c",
            "|",
            "http://x|",
            "Patient/abc",
            "\x00",
            "%",
            "_",
            "'; DROP TABLE study; --",
            "\\",
            ",".join(["x"] * 200),
        ]
    ),
    st.text(max_size=30),
)


def query_params(names: tuple[str, ...]) -> st.SearchStrategy[list[tuple[str, str]]]:
    name = st.one_of(st.sampled_from(names), st.text(max_size=12))
    return st.lists(st.tuples(name, query_values), max_size=6)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
claim_names = st.sampled_from(
    ["sub", "exp", "iat", "nbf", "iss", "aud", "jti", "roles", "facilities", "all_facilities"]
)


@st.composite
def token_parts(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT: plausible claims with odd types and values mixed in."""
    header: dict[str, Any] = {"alg": draw(st.sampled_from(["HS256", "none", "RS256", "HS512"]))}
    header |= draw(st.dictionaries(st.sampled_from(["typ", "kid", "crit", "b64"]), json_values))
    claims: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "sub": st.one_of(st.just("fuzz"), json_values),
                "exp": st.one_of(st.just(4102444800), json_values),
                "iat": st.one_of(st.just(4102441200), json_values),
                "iss": st.one_of(st.just("pacs"), json_values),
                "roles": st.one_of(st.just(["admin"]), st.lists(st.text(max_size=10)), json_values),
                "facilities": st.one_of(st.lists(st.text(max_size=10)), json_values),
            },
        )
    )
    claims |= draw(st.dictionaries(claim_names, json_values, max_size=2))
    return header, claims


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    return ".".join(
        (_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), _b64(signature))
    )
