"""Helpers to read and derive test instances from the real sample data."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs.part10 import locate
from tests.servers import DATA

LIDC_0001 = DATA / "ct" / "LIDC-IDRI-0001"
CT_SMALL = DATA / "edge-cases" / "CT_small.dcm"
MR_SMALL = DATA / "edge-cases" / "MR_small.dcm"


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file())


def dataset_bytes(part10: bytes) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and meta."""
    located = locate(part10)
    return bytes(located.data[located.dataset_offset :])


def encode(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def derived(path: Path = CT_SMALL, **changes: object) -> Dataset:
    """A real instance with new UIDs (or the given attribute values)."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def store_statuses(
    port: int, paths: list[Path], calling_aet: str = "TEST_SCU"
) -> dict[str, int | None]:
    """C-STORE each file over one pynetdicom association; the status of each (None: no reply)."""
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes of the file, broken or not

    ae = AE(ae_title=calling_aet)
    headers = {}
    for path in paths:  # broken files are sent too: pydicom reads their header leniently
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        headers[path] = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    for context in sorted(set(headers.values())):
        ae.add_requested_context(*context)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    statuses: dict[str, int | None] = {}
    try:
        for path in paths:
            reply = assoc.send_c_store(path)
            statuses[path.name] = int(reply.Status) if "Status" in reply else None
    finally:
        assoc.release()
    return statuses


VIETNAMESE_NAME = "Nguyễn^Thị Minh Khai"


def write_vietnamese_patient(path: Path) -> Path:
    """A real CT slice as a new study of patient VN-1 with a UTF-8 (ISO_IR 192) name."""
    ds = derived(
        SpecificCharacterSet="ISO_IR 192",
        PatientName=VIETNAMESE_NAME,
        PatientID="VN-1",
        StudyInstanceUID=pydicom.uid.generate_uid(),
        SeriesInstanceUID=pydicom.uid.generate_uid(),
    )
    path.write_bytes(encode(ds))
    return path
