"""A C-STORE send broken off midway (A-ABORT) is not a complete study: it stays unstable past
PACS_STABLE_AGE, while a released send becomes stable at that age; a released resend makes it
stable at the normal age, with exactly one ``study.stable`` event and one job."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE

from pacs.index import Database, changes
from pacs.jobs import list_jobs
from tests.dicom import LIDC_0001, dicom_files, encode
from tests.servers import PacsServer, running, wait_for

STABLE_AGE = 1.0


def slices(count: int) -> list[Path]:
    """The first *count* slices of LIDC-IDRI-0001 by InstanceNumber (no gap among them)."""
    by_number = sorted(
        dicom_files(LIDC_0001),
        key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber),
    )
    return by_number[:count]


def other_study(folder: Path, count: int) -> list[Path]:
    """*count* slices as a study of its own (new Study, Series and SOP Instance UIDs)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for path in slices(count):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(folder / path.name)
        paths[-1].write_bytes(encode(ds))
    return paths


def send(port: int, paths: list[Path], abort: bool = False) -> None:
    """C-STORE *paths* over one association, then release it (or abort it: A-ABORT)."""
    ae = AE(ae_title="CT_SCANNER")
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    # The files' own transfer syntax: pynetdicom encodes each in the accepted one.
    ae.add_requested_context(header.SOPClassUID, [header.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        for path in paths:
            assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.abort() if abort else assoc.release()


def stable_events(db: Database) -> Counter[str]:
    with db.read() as conn:
        return Counter(str(c.StudyInstanceUID) for c in changes(conn) if c.kind == "study.stable")


def test_aborted_send_waits_until_a_released_resend_completes_it(tmp_path: Path) -> None:
    env = {
        "PACS_STABLE_AGE": str(STABLE_AGE),
        # Far longer than this test runs: a broken-off send never becomes stable by waiting.
        "PACS_STABLE_AGE_INCOMPLETE": "600",
        "PACS_WORKERS": "0",  # the jobs are counted, not run
    }
    first = slices(6)
    aborted = str(pydicom.dcmread(first[0], stop_before_pixels=True).StudyInstanceUID)
    whole_paths = other_study(tmp_path, 3)
    whole = str(pydicom.dcmread(whole_paths[0], stop_before_pixels=True).StudyInstanceUID)
    with running(PacsServer(tmp_path / "home", env)) as server:
        db = Database(f"sqlite:///{server.home / 'index.db'}")
        try:
            send(server.port, first[:3], abort=True)  # broken off midway
            send(server.port, whole_paths)  # a complete send, released
            wait_for(lambda: stable_events(db)[whole] == 1, 30, "the released study to be stable")
            time.sleep(3 * STABLE_AGE)  # well past the normal age (the sweeper runs every 0.25 s)
            assert stable_events(db)[aborted] == 0
            send(server.port, first[3:])  # the resend of the rest, released
            wait_for(lambda: stable_events(db)[aborted] == 1, 30, "the resent study to be stable")
            time.sleep(3 * STABLE_AGE)
            assert stable_events(db) == Counter({aborted: 1, whole: 1})
            with db.read() as conn:
                jobs = Counter(str(job.StudyInstanceUID) for job in list_jobs(conn))
            assert jobs == Counter({aborted: 1, whole: 1})
        finally:
            db.dispose()
