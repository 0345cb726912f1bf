"""Fixtures for the pipeline: an archive, detectors (tiny random, and the bundled demo)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from models.detector import Detector, load_detector
from models.registry import BUILTIN, Registry
from pacs.index import Database, upgrade
from pacs.ingest import Archive, Source
from pacs.jobs import Job, JobStatus
from pacs.storage import open_store
from tests.dicom import dicom_files, encode
from tests.models.tiny import save_tiny

DEMO = "demo-nodule-centernet"


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade(db)
    yield Archive(db, open_store(f"file://{tmp_path / 'storage'}", None, None))
    db.dispose()


def tiny_detector(root: Path, patch: int = 32, score: float = 0.0, report: float = 0.5) -> Detector:
    """A small CenterNet with random (seeded) weights: exercises the plumbing, not accuracy."""
    save_tiny(
        root, patch_size=(patch, patch, patch), score_threshold=score, report_threshold=report
    )
    return load_detector(Registry([root]).get("tiny"))


@pytest.fixture(scope="session")
def demo_detector() -> Detector:
    return load_detector(Registry([BUILTIN]).get(DEMO))


def job_for(study: str, job_id: int = 1) -> Job:
    return Job(job_id, "nodule-detection", study, {}, JobStatus.RUNNING, 1, 3)


def store_series(
    archive: Archive, files: list[Path], study: str, patient: tuple[str, str], **changes: object
) -> str:
    """Store real files as a new series of ``study`` (new series and SOP UIDs, same patient)."""
    series = str(generate_uid())
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName = patient
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        archive.store(encode(ds), Source("IMPORT"))
    return series


def now() -> datetime:
    return datetime.now(UTC)


__all__ = ["dicom_files"]
