"""C-FIND against the real server, from dcmtk's findscu and pynetdicom."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from pacs.dimse import status
from pacs.dimse.access import Peer
from pacs.dimse.find import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from pacs.dimse.handlers import INDEX_UNAVAILABLE, handle_find
from pacs.errors import IndexUnavailable
from pacs.facilities import Scope
from pacs.index.ae_registry import ALL_PERMISSIONS
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


def findscu_run(server: PacsServer, *options: str) -> subprocess.CompletedProcess[str]:
    """dcmtk's findscu with *options* against the archive, its output captured as text."""
    return subprocess.run(
        [dcmtk("findscu"), "-aec", "PACS", *options, "127.0.0.1", str(server.port)],
        env=NODELAY,
        capture_output=True,
        text=True,
        timeout=60,
    )


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


def test_file_meta_keys_are_never_returned(server: PacsServer, tmp_path: Path) -> None:
    # dcmtk warns "Invalid Element (0002,0002) found in data set" when a response carries one.
    lidc = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    run = findscu_run(
        server,
        *(
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={lidc.StudyInstanceUID}",
        ),
        *("-k", "0002,0002", "-k", "0002,0010", "-k", "StudyDate"),
    )
    assert run.returncode == 0, run.stderr
    assert "Invalid Element" not in run.stdout + run.stderr
    assert "StudyDate" in run.stdout + run.stderr  # the match was printed
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = lidc.StudyInstanceUID
    identifier.add_new(0x00020002, "UI", "")
    identifier.add_new(0x00020010, "UI", "")
    identifier.add_new(0x00080000, "UL", 0)  # a group length
    responses = c_find(server, identifier, STUDY_ROOT_FIND)
    assert [code for code, _ in responses] == [status.PENDING, status.SUCCESS]
    match = responses[0][1]
    assert match is not None and match.StudyInstanceUID == lidc.StudyInstanceUID
    assert [e.tag for e in match if e.tag.group in (0x0000, 0x0002) or e.tag.element == 0] == []


def test_computed_counters_at_every_level(server: PacsServer, tmp_path: Path) -> None:
    lidc = pydicom.dcmread(dicom_files(LIDC_0001)[0])
    [patient] = findscu(
        server,
        tmp_path,
        "-P",
        "QueryRetrieveLevel=PATIENT",
        f"PatientID={lidc.PatientID}",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    )
    assert int(patient.NumberOfPatientRelatedStudies) == 1
    assert int(patient.NumberOfPatientRelatedSeries) == 1
    assert int(patient.NumberOfPatientRelatedInstances) == 5
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = lidc.PatientID
    identifier.SOPClassesInStudy = ""
    identifier.NumberOfStudyRelatedInstances = ""
    [(_, study), _] = c_find(server, identifier, STUDY_ROOT_FIND)
    assert study is not None
    assert study.SOPClassesInStudy == lidc.SOPClassUID
    assert int(study.NumberOfStudyRelatedInstances) == 5
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = lidc.StudyInstanceUID
    identifier.NumberOfSeriesRelatedInstances = ""
    [(_, series), _] = c_find(server, identifier, STUDY_ROOT_FIND)
    assert series is not None and int(series.NumberOfSeriesRelatedInstances) == 5


@pytest.mark.parametrize(
    ("keyword", "value", "comment"),
    [
        ("StudyDate", "2024", "StudyDate: '2024' is not a date (YYYYMMDD)"),
        ("StudyInstanceUID", "1.2.abc", "StudyInstanceUID: '1.2.abc' is not a UID"),
        (
            "StudyInstanceUID",
            "\\".join(["1.2.3"] * 1200),
            "StudyInstanceUID: 1200 values, at most 1000",
        ),
        ("PatientName", "A^B^C^D^E^F", "PatientName: 'A^B^C^D^E^F' has more than 5"),
    ],
)
def test_malformed_values_fail_with_a_short_reason(
    server: PacsServer, keyword: str, value: str, comment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    setattr(identifier, keyword, value)
    [(code, _)] = c_find_statuses(server, identifier, STUDY_ROOT_FIND)
    assert code.Status == status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert str(code.ErrorComment).startswith(comment)
    assert len(str(code.ErrorComment)) <= 64


def test_forty_digit_number_fails_from_findscu(server: PacsServer) -> None:
    run = findscu_run(
        server,
        *("-v", "-d", "-S", "-k", "QueryRetrieveLevel=IMAGE"),
        *("-k", f"InstanceNumber={'1' * 40}", "-k", "SOPInstanceUID"),
    )
    output = run.stdout + run.stderr
    assert "0xa900" in output, output
    assert f"InstanceNumber: '{'1' * 16}...' is out of the IS range" in output  # Error Comment


def test_results_beyond_the_limit_are_cut_with_a_final_out_of_resources(tmp_path: Path) -> None:
    pacs = PacsServer(tmp_path / "home", {"PACS_MAX_QUERY_RESULTS": "2"}).start()
    try:
        files = dicom_files(LIDC_0001)[:3]
        assert set(store_statuses(pacs.port, files).values()) == {status.SUCCESS}
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.SOPInstanceUID = ""
        responses = c_find_statuses(pacs, identifier, STUDY_ROOT_FIND)
        codes = [int(reply.Status) for reply, _ in responses]
        # Not "Success" (PS3.4: matching is complete) but a failure that says why.
        assert codes == [status.PENDING, status.PENDING, status.OUT_OF_RESOURCES]
        assert responses[-1][0].ErrorComment == "3 matches, 2 returned (result limit)"
        identifier.SOPInstanceUID = pydicom.dcmread(files[0]).SOPInstanceUID
        assert [int(r.Status) for r, _ in c_find_statuses(pacs, identifier, STUDY_ROOT_FIND)] == [
            status.PENDING,
            status.SUCCESS,
        ]
    finally:
        pacs.stop()
    assert "3 matches, only the first 2 returned" in pacs.log.read_text()


def test_index_outage_sends_a_fixed_reason_and_logs_the_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    internal = "index query failed: (sqlite3.OperationalError) [SQL: SELECT x] /var/pacs/index.db"

    class Outage:
        def read(self) -> None:
            raise IndexUnavailable(internal)

    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    event = SimpleNamespace(
        request=SimpleNamespace(AffectedSOPClassUID=STUDY_ROOT_FIND),
        identifier=identifier,
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title="PEER")),
        is_cancelled=False,
    )
    archive = SimpleNamespace(db=Outage())
    peer = Peer("PEER", "127.0.0.1", ALL_PERMISSIONS, False, "PACS", "default", Scope.of(["x"]))
    anyone = SimpleNamespace(permitted=lambda assoc, permission: peer)
    [(reply, match)] = list(handle_find(event, archive, 10, anyone))  # type: ignore[arg-type]
    assert match is None
    assert reply.Status == status.OUT_OF_RESOURCES
    assert reply.ErrorComment == INDEX_UNAVAILABLE
    assert internal in caplog.text


def c_find_statuses(
    server: PacsServer, identifier: Dataset, model: str
) -> list[tuple[Dataset, Dataset | None]]:
    ae = AE(ae_title="FIND_SCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_established
    try:
        return list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()


def c_find(server: PacsServer, identifier: Dataset, model: str) -> list[tuple[int, Dataset | None]]:
    ae = AE(ae_title="FIND_SCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_established
    try:
        return [(int(s.Status), ds) for s, ds in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()
