"""Which transfer syntax a WADO response carries, and re-encoding instances into it.

PS3.18 8.7.3.5.2: without a ``transfer-syntax`` parameter, ``application/dicom`` and
``application/octet-stream`` default to Explicit VR Little Endian; ``transfer-syntax=*`` asks
for the syntax as stored. Every syntax pydicom can decode here can be sent as Explicit or
Implicit VR Little Endian. Explicit VR Big Endian is retired (PS3.5 A.3) and not produced.
The decision is taken before the first byte of a response: a 406 cannot follow a 200.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from viewer_api.problems import NotAcceptable

DEFAULT = str(ExplicitVRLittleEndian)
AS_STORED = "*"
# What any decodable instance can be re-encoded in.
PRODUCIBLE = frozenset((str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)))
# Encoded without compression: every element is readable without a pixel decoder.
_NATIVE = frozenset((*PRODUCIBLE, str(ExplicitVRBigEndian), str(DeflatedExplicitVRLittleEndian)))
# Binary VRs whose raw bytes are words of this size (swapped when leaving big endian).
_WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class TranscodeFailed(NotAcceptable):
    """The stored instance could not be decoded for re-encoding."""


def target_syntax(stored: str, wanted: str | None) -> str:
    """The transfer syntax to send an instance stored in *stored* as.

    Parameters
    ----------
    stored : str
        The stored transfer syntax UID.
    wanted : str or None
        The ``transfer-syntax`` the client asked for: None (not said), ``"*"`` or a UID.

    Raises
    ------
    NotAcceptable
        *wanted* cannot be produced from *stored*.
    """
    if wanted is None:
        wanted = DEFAULT
    if wanted in (AS_STORED, stored):
        return stored
    if wanted == str(ExplicitVRBigEndian):
        raise NotAcceptable(
            "Explicit VR Big Endian is retired (PS3.5 A.3) and not produced here: ask for "
            f"transfer-syntax={DEFAULT} or transfer-syntax=* (as stored)"
        )
    if wanted not in PRODUCIBLE:
        raise NotAcceptable(
            f"instances stored as {stored} cannot be sent as {wanted}: ask for "
            f"transfer-syntax={DEFAULT} or transfer-syntax=* (as stored)"
        )
    if not decodable(stored):
        raise NotAcceptable(
            f"pixel data stored as {stored} cannot be decoded here: ask for transfer-syntax=*"
        )
    return wanted


def decodable(transfer_syntax: str) -> bool:
    """Whether pixel data in *transfer_syntax* can be decoded here."""
    if transfer_syntax in _NATIVE:
        return True
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except NotImplementedError:  # a syntax pydicom has no decoder for at all
        return False


def transcode(data: bytes, stored: str, target: str) -> bytes:
    """Part 10 *data*, stored in *stored*, re-encoded in *target* (one of PRODUCIBLE).

    The SOP Instance UID is kept: the same instance in another encoding (PS3.5 8.2). Raises
    TranscodeFailed when the pixel data cannot be decoded.
    """
    if target == stored:
        return data
    try:
        ds = dcmread(BytesIO(data))
        if "PixelData" in ds and stored not in PRODUCIBLE:
            _make_native_little_endian(ds, stored)
        if stored == str(ExplicitVRBigEndian):  # images and non-images (waveforms, LUTs)
            _swap_binary_words(ds, top_level=True)
        ds.file_meta.TransferSyntaxUID = UID(target)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = BytesIO()
        implicit = target == str(ImplicitVRLittleEndian)
        dcmwrite(out, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    except Exception as exc:  # pydicom and the decoder plugins raise many kinds
        raise TranscodeFailed(f"the instance stored as {stored} could not be decoded") from exc
    return out.getvalue()


def _make_native_little_endian(ds: Dataset, stored: str) -> None:
    """Replace compressed or big-endian pixel data with native little-endian pixel data."""
    if UID(stored).is_compressed:
        ds.decompress(generate_instance_uid=False)  # PhotometricInterpretation updated too
        return
    if stored == str(ExplicitVRBigEndian):
        pixels: Any = ds.pixel_array  # decoded from big endian, in native order
        if int(ds.get("BitsAllocated", 16)) == 1:
            ds.PixelData = pack_bits(pixels)
        else:
            ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        if "PlanarConfiguration" in ds:
            ds.PlanarConfiguration = 0  # pixel_array interleaves the samples


def _swap_binary_words(ds: Dataset, top_level: bool) -> None:
    """Big- to little-endian for raw binary values, except the top-level pixel data (already
    re-encoded); nested ones (Icon Image Sequence) are swapped like any OW value."""
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _swap_binary_words(item, top_level=False)
        elif isinstance(element.value, bytes) and not (
            top_level and element.keyword == "PixelData"
        ):
            size = _WORD_SIZE.get(element.VR)
            if size and len(element.value) % size == 0:
                words = np.frombuffer(element.value, dtype=f">u{size}")
                element.value = words.astype(f"<u{size}").tobytes()
