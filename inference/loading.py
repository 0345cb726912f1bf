"""Step 2: fetch a study's CT instances from the archive and build the HU volume.

Blobs are fetched and decoded on a thread pool: decoding (JPEG, JPEG 2000, RLE) runs in C
extensions, and blob reads wait on disk or the network, so threads overlap them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from inference.errors import UnreadableSeries
from inference.selection import SeriesHeaders, SliceHeader
from models.volume import Volume, from_datasets
from pacs.index import SeriesInStudy

#: Modalities whose instances are fetched for selection; others are judged from the index.
FETCHED_MODALITIES = frozenset({"CT"})


def read_series(
    entry: SeriesInStudy, fetch: Callable[[str], bytes], pool: ThreadPoolExecutor
) -> tuple[SeriesHeaders, list[Dataset]]:
    """Headers for selection and the parsed data sets (pixel data not yet decoded)."""
    if entry.Modality.upper() not in FETCHED_MODALITIES:
        return SeriesHeaders(
            entry.SeriesInstanceUID, entry.Modality, entry.BodyPartExamined, []
        ), []
    datasets = list(pool.map(lambda item: _parse(fetch(item[2]), item[1]), entry.instances))
    slices = [_header(ds) for ds in datasets]
    return SeriesHeaders(
        entry.SeriesInstanceUID, entry.Modality, entry.BodyPartExamined, slices
    ), datasets


def _parse(data: bytes, sop_uid: str) -> Dataset:
    try:
        return dcmread(BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError) as exc:
        raise UnreadableSeries(f"instance {sop_uid} cannot be parsed: {exc}") from exc


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    try:
        items = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return items if len(items) == count else None


def _header(ds: Dataset) -> SliceHeader:
    return SliceHeader(
        SOPInstanceUID=str(ds.SOPInstanceUID),
        SOPClassUID=str(ds.SOPClassUID),
        ImagePositionPatient=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        ImageOrientationPatient=_floats(ds.get("ImageOrientationPatient"), 6),  # type: ignore[arg-type]
        PixelSpacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        Rows=int(ds.get("Rows", 0)),
        Columns=int(ds.get("Columns", 0)),
        ImageType=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        GantryDetectorTilt=float(ds.get("GantryDetectorTilt") or 0.0),
    )


def build_volume(datasets: list[Dataset], pool: ThreadPoolExecutor) -> Volume:
    """HU volume of a selected series: decoded in parallel, rescaled, padding made air."""

    def decode(ds: Dataset) -> np.ndarray:
        try:
            return ds.pixel_array
        except Exception as exc:  # pydicom raises many types for undecodable pixel data
            raise UnreadableSeries(
                f"instance {ds.SOPInstanceUID}: pixel data cannot be decoded: {exc}"
            ) from exc

    return from_datasets(datasets, list(pool.map(decode, datasets)))
