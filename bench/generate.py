"""Synthetic CT studies for the ingest benchmark, built on a real LIDC slice's header."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

HEADER_SOURCE = Path(__file__).resolve().parent.parent / "data" / "ct" / "LIDC-IDRI-0001"


def write_study(folder: Path, instances: int, patient_id: str, seed: int, size: int = 512) -> int:
    """Write one study of *instances* *size* x *size* int16 CT slices; return the bytes
    written."""
    template = pydicom.dcmread(next(HEADER_SOURCE.rglob("*.dcm")))
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    # Noise pixel data: content does not matter for ingest (stored as received), size does.
    pixels = os.urandom(size * size * 2)
    written = 0
    for number in range(1, instances + 1):
        ds = template.copy()
        ds.PatientID = patient_id
        ds.PatientName = f"BENCH^{patient_id}"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [-170.0, -170.0, -1.25 * number]
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        # A different first bytes per slice so no two blobs are identical.
        ds.PixelData = (number + seed * 100_000).to_bytes(8, "little") + pixels[8:]
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written += path.stat().st_size
    return written
