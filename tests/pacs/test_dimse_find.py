"""C-FIND against the real server, from dcmtk's findscu and pynetdicom."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from pacs.dimse import status
from pacs.dimse.find import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from tests.dicom import (
    LIDC_0001,
    VIETNAMESE_NAME,
    dicom_files,
    store_statuses,
    write_vietnamese_patient,
)
from tests.pacs.test_dimse_server import NODELAY
from tests.servers import DATA, PacsServer, dcmtk

NAME = VIETNAMESE_NAME


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    """An archive holding 5 slices of LIDC-IDRI-0001, an MR slice and a Vietnamese name."""
    home = tmp_path_factory.mktemp("find")
    pacs = PacsServer(home / "home").start()
    vietnamese = write_vietnamese_patient(home / "vi.dcm")
    files = [*dicom_files(LIDC_0001)[:5], DATA / "edge-cases" / "MR_small.dcm", vietnamese]
    assert set(store_statuses(pacs.port, files).values()) == {status.SUCCESS}
    yield pacs
    pacs.stop()


def findscu(server: PacsServer, tmp_path: Path, model: str, *keys: str) -> list[Dataset]:
    out = tmp_path / "responses"
    out.mkdir()
    command = [dcmtk("findscu"), model, "-aec", "PACS", "-X", "-od", str(out)]
    for key in keys:
        command += ["-k", key]
    subprocess.run([*command, "127.0.0.1", str(server.port)], check=True, env=NODELAY, timeout=60)
    return [pydicom.dcmread(p) for p in sorted(out.iterdir())]


def test_study_root_study_level_from_findscu(server: PacsServer, tmp_path: Path) -> None:
    lidc = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    [study] = findscu(
        server,
        tmp_path,
        "-S",
        "QueryRetrieveLevel=STUDY",
        f"PatientID={lidc.PatientID}",
        "StudyInstanceUID",
        "StudyDate",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "PatientName",
    )
    assert study.StudyInstanceUID == lidc.StudyInstanceUID
    assert study.StudyDate == lidc.StudyDate
    assert study.ModalitiesInStudy == "CT"
    assert int(study.NumberOfStudyRelatedSeries) == 1
    assert int(study.NumberOfStudyRelatedInstances) == 5
    assert study.RetrieveAETitle == "PACS"


def test_patient_root_patient_level_with_wildcard(server: PacsServer, tmp_path: Path) -> None:
    patients = findscu(
        server, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientName=*", "PatientID"
    )
    assert len(patients) == 3
    names = {str(p.PatientName) for p in patients}
    assert NAME in names  # decoded from the UTF-8 response


def test_image_level_and_unicode_matching_from_pynetdicom(server: PacsServer) -> None:
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.PatientName = "nguyễn*"
    identifier.SOPInstanceUID = ""
    identifier.InstanceNumber = ""
    responses = c_find(server, identifier, STUDY_ROOT_FIND)
    assert [code for code, _ in responses] == [status.PENDING, status.SUCCESS]
    match = responses[0][1]
    assert match is not None
    assert str(match.PatientName) == NAME
    assert match.SOPInstanceUID


def test_invalid_queries_get_a_failure_and_the_server_goes_on(server: PacsServer) -> None:
    bad = Dataset()
    bad.QueryRetrieveLevel = "PATIENT"  # the Study Root model has no PATIENT level
    bad.PatientID = ""
    assert [code for code, _ in c_find(server, bad, STUDY_ROOT_FIND)] == [
        status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    ]
    below = Dataset()
    below.QueryRetrieveLevel = "STUDY"
    below.Modality = "CT"  # a series key at the study level
    assert [code for code, _ in c_find(server, below, PATIENT_ROOT_FIND)] == [
        status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    ]
    fine = Dataset()
    fine.QueryRetrieveLevel = "STUDY"
    fine.StudyInstanceUID = ""
    assert len(c_find(server, fine, STUDY_ROOT_FIND)) == 4  # 3 studies + success


def c_find(server: PacsServer, identifier: Dataset, model: str) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="FIND_SCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_established
    try:
        return [(int(s.Status), ds) for s, ds in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()
