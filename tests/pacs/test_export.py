"""`pacs export --deidentify` against a real archive: a `pacs serve` that stored real CT slices
over DIMSE, the export run as an administrator would, its files read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from pacs.cli.common import opened_archive
from pacs.cli.export import ExportReport, export_study
from pacs.deid import Deidentifier
from pacs.dimse import status
from pacs.errors import StorageUnavailable
from pacs.settings import PacsSettings
from tests.dicom import LIDC_0001, derived, dicom_files, store_statuses
from tests.servers import PacsServer

# Instance UIDs of the originals: none may survive de-identification, in any element.
INSTANCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


class Archive:
    """The running server, what it stored, and a project key."""

    def __init__(self, server: PacsServer, root: Path) -> None:
        self.server = server
        self.root = root
        self.slices = dicom_files(LIDC_0001)[:5]
        self.originals = [pydicom.dcmread(path) for path in self.slices]
        self.study = str(self.originals[0].StudyInstanceUID)
        burned_in = derived(
            BurnedInAnnotation="YES",
            StudyInstanceUID=generate_uid(),
            SeriesInstanceUID=generate_uid(),
        )
        self.burned_in_study = str(burned_in.StudyInstanceUID)
        burned_in_file = root / "burned-in.dcm"
        burned_in.save_as(burned_in_file, enforce_file_format=True)
        stored = store_statuses(server.port, [*self.slices, burned_in_file])
        assert set(stored.values()) == {status.SUCCESS}
        self.key = root / "project.key"
        self.key.write_bytes(bytes(range(32)))

    def export(self, out: Path, *args: str) -> tuple[int, str, str]:
        result = self.server.pacs(
            "export", *args, "--out", str(out), "--deidentify", "--project-key-file",
            str(self.key), check=False,
        )  # fmt: skip
        return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("export")
    server = PacsServer(root / "home").start()
    try:
        yield Archive(server, root)
    finally:
        server.stop()


def exported_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.dcm"))


def test_a_study_is_exported_deidentified_with_consistent_new_uids(
    archive: Archive, tmp_path: Path
) -> None:
    code, stdout, stderr = archive.export(tmp_path, archive.study, "--json", "--modified-dates")
    assert code == 0, stderr
    assert json.loads(stdout) == {"studies": 1, "instances": 5, "refused": 0, "skipped": 0}
    files = exported_files(tmp_path)
    assert len(files) == 5
    assert [p.name for p in tmp_path.iterdir()] == [files[0].parent.parent.name]  # no staging
    datasets = [pydicom.dcmread(path) for path in files]
    assert {str(ds.StudyInstanceUID) for ds in datasets} == {files[0].parent.parent.name}
    for path, ds in zip(files, datasets, strict=True):
        assert path.relative_to(tmp_path).parts == (
            ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm"
        )  # fmt: skip
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert ds.PatientID != archive.originals[0].PatientID
        assert ds.PatientName == ds.PatientID
    assert len({str(ds.SeriesInstanceUID) for ds in datasets}) == 1
    assert len({str(ds.SOPInstanceUID) for ds in datasets}) == 5
    written = b"".join(path.read_bytes() for path in files)
    for original in archive.originals:
        for keyword in INSTANCE_UIDS:
            assert str(original[keyword].value).encode() not in written, keyword
    assert str(archive.originals[0].PatientID).encode() not in written


def test_the_same_key_gives_the_same_pseudonym_and_uids_and_never_overwrites(
    archive: Archive, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        assert archive.export(out, archive.study)[0] == 0
    pseudonyms = {str(pydicom.dcmread(p).PatientID) for p in exported_files(tmp_path)}
    assert len(pseudonyms) == 1
    assert [p.relative_to(first) for p in exported_files(first)] == [
        p.relative_to(second) for p in exported_files(second)
    ]
    code, stdout, stderr = archive.export(first, archive.study)
    assert code == 1
    assert "already exported" in stderr
    assert "exported 0 studies" in stdout
    assert len(exported_files(first)) == 5


def test_unknown_studies_and_burned_in_pixels_are_reported_and_exit_1(
    archive: Archive, tmp_path: Path
) -> None:
    unknown = generate_uid()
    code, stdout, stderr = archive.export(tmp_path, unknown, "*", archive.burned_in_study)
    assert code == 1
    assert f"{unknown}: no such study" in stderr
    assert "*: not a valid UID" in stderr  # a wild card never exports the whole archive
    assert "Burned In Annotation is YES" in stderr
    assert "exported 0 studies, 0 instances" in stdout
    assert list(tmp_path.iterdir()) == []
    code, _, stderr = archive.export(tmp_path, archive.burned_in_study, "--force-burned-in")
    assert code == 0, stderr
    (forced,) = exported_files(tmp_path)
    assert "Pixel data not cleaned" in " ".join(pydicom.dcmread(forced).DeidentificationMethod)


def test_a_short_or_missing_key_and_identified_export_are_refused(
    archive: Archive, tmp_path: Path
) -> None:
    archive.key.write_bytes(b"fifteen bytes!!")
    try:
        code, _, stderr = archive.export(tmp_path / "out", archive.study)
    finally:
        archive.key.write_bytes(bytes(range(32)))
    assert code == 2
    assert "at least 16 bytes" in stderr
    missing = archive.server.pacs(
        "export", archive.study, "--out", str(tmp_path / "out"), "--deidentify",
        "--project-key-file", str(tmp_path / "nowhere.key"), check=False,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "cannot read the project key file" in missing.stderr
    identified = archive.server.pacs(
        "export", archive.study, "--out", str(tmp_path / "out"),
        "--project-key-file", str(archive.key), check=False,
    )  # fmt: skip
    assert identified.returncode == 2
    assert "pass --deidentify" in identified.stderr
    assert not (tmp_path / "out").exists()


def test_a_storage_failure_half_way_leaves_no_partial_study(
    archive: Archive, tmp_path: Path
) -> None:
    with opened_archive(PacsSettings(home=archive.server.home)) as opened:
        get = opened.blobs.get
        reads: list[str] = []

        def fails_on_the_third(key: str) -> bytes:
            reads.append(key)
            if len(reads) == 3:
                raise StorageUnavailable(f"cannot read blob {key}: disk gone")
            return get(key)

        opened.blobs.get = fails_on_the_third  # type: ignore[method-assign]
        report = ExportReport()
        deidentifier = Deidentifier(archive.key.read_bytes())
        with pytest.raises(StorageUnavailable):
            export_study(opened, archive.study, tmp_path, deidentifier, report)
    assert len(reads) == 3
    assert list(tmp_path.iterdir()) == []
    assert (report.studies, report.instances) == ([], 0)


def test_query_selects_studies_by_wildcard_and_date_range_with_study_arguments(
    archive: Archive, tmp_path: Path
) -> None:
    code, stdout, stderr = archive.export(tmp_path / "a", "--query", "PatientID=LIDC*", "--json")
    assert code == 0, stderr
    assert json.loads(stdout) == {"studies": 1, "instances": 5, "refused": 0, "skipped": 0}
    # A date range finds the 2004 study only; with a STUDY argument the two are one union.
    code, stdout, stderr = archive.export(
        tmp_path / "b", archive.study, "--query", "StudyDate=20040101-20041231",
        "--query", "ModalitiesInStudy=CT", "--force-burned-in", "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert json.loads(stdout)["studies"] == 2
    assert len(exported_files(tmp_path / "b")) == 6
    code, stdout, _ = archive.export(
        tmp_path / "c", "--query", "StudyDate=20040101-20041231", "--force-burned-in"
    )
    assert code == 0
    (only,) = exported_files(tmp_path / "c")
    assert pydicom.dcmread(only).PatientIdentityRemoved == "YES"


def test_a_bad_query_is_exit_2_and_no_match_is_exit_1(archive: Archive, tmp_path: Path) -> None:
    code, _, stderr = archive.export(tmp_path, "--query", "NotAKeyword=1")
    assert code == 2
    assert "NotAKeyword cannot be searched on" in stderr
    code, _, stderr = archive.export(tmp_path, "--query", "StudyDate=2024-99")
    assert code == 2
    code, _, stderr = archive.export(tmp_path, "--query", "PatientID")
    assert (code, "is not KEYWORD=VALUE" in stderr) == (2, True)
    code, stdout, _ = archive.export(tmp_path, "--query", "PatientID=NOBODY*")
    assert code == 1
    assert "no study matched" in stdout
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_facility_limits_the_export_to_its_studies(archive: Archive, tmp_path: Path) -> None:
    code, _, stderr = archive.export(
        tmp_path, "--query", "PatientID=LIDC*", "--facility", "nowhere"
    )
    assert code == 2
    assert "no facility 'nowhere'" in stderr
    archive.server.pacs("facility", "add", "elsewhere")
    code, stdout, _ = archive.export(
        tmp_path, "--query", "PatientID=LIDC*", "--facility", "elsewhere"
    )
    assert code == 1
    assert "no study matched" in stdout
    code, _, stderr = archive.export(tmp_path, archive.study, "--facility", "elsewhere")
    assert code == 1
    assert f"{archive.study}: no such study in facility elsewhere" in stderr
    default = archive.server.env.get("PACS_FACILITY", "default")
    code, _, stderr = archive.export(tmp_path, "--query", "PatientID=LIDC*", "--facility", default)
    assert code == 0, stderr
    assert len(exported_files(tmp_path)) == 5
