"""`pacs fsck`: index against storage, through the CLI as an administrator runs it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs.index import changes
from pacs.ingest import Archive, Source
from pacs.storage import blob_key
from tests.conftest import make_archive
from tests.dicom import CT_SMALL, MR_SMALL, derived, encode
from tests.servers import PacsServer


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def archive(home: Path) -> Iterator[Archive]:
    built = make_archive(f"sqlite:///{home / 'index.db'}", f"file://{home / 'storage'}")
    yield built
    built.db.dispose()


def fsck(home: Path, *args: str) -> tuple[int, dict[str, object]]:
    result = PacsServer(home).pacs("fsck", "--json", *args, check=False)
    return result.returncode, json.loads(result.stdout)


def test_consistent_archive(archive: Archive, home: Path) -> None:
    archive.store(CT_SMALL.read_bytes(), Source("IMPORT"))
    code, report = fsck(home)
    assert (code, report["consistent"], report["indexed"], report["blobs"]) == (0, True, 1, 1)


def test_orphan_of_an_unknown_instance_is_indexed(archive: Archive, home: Path) -> None:
    # What a crash between blob write and commit leaves behind.
    data = MR_SMALL.read_bytes()
    result = archive.store(data, Source("IMPORT"))
    with archive.db.write() as conn:  # forget it, keep the blob
        conn.exec_driver_sql("DELETE FROM change")
        conn.exec_driver_sql("DELETE FROM instance")
    assert fsck(home)[0] == 0  # younger than the grace period: in flight, not a finding
    code, report = fsck(home, "--grace", "0")
    assert (code, report["orphans"]) == (1, [result.blob_key])
    code, report = fsck(home, "--grace", "0", "--repair")
    assert (code, report["repaired"]) == (0, {result.blob_key: "indexed"})
    with archive.db.read() as conn:
        assert [c.kind for c in changes(conn)] == ["instance.stored"]
    assert fsck(home, "--grace", "0")[0] == 0


CORRECTOR = Source("DIMSE", calling_ae="ADMIN_WS", may_replace=True)


def test_kept_versions_are_referenced_not_orphans(archive: Archive, home: Path) -> None:
    ds = derived()
    old = archive.store(encode(ds), Source("IMPORT"))
    ds.PatientName = "New^Version"
    new = archive.store(encode(ds), CORRECTOR)
    code, report = fsck(home, "--grace", "0")
    assert (code, report["consistent"], report["orphans"]) == (0, True, [])
    assert (report["indexed"], report["versions"], report["blobs"]) == (1, 1, 2)
    # A kept version's bytes are checked like an instance's.
    path = home / "storage" / old.blob_key
    rotten = bytearray(path.read_bytes())
    rotten[-1] ^= 0xFF
    path.write_bytes(bytes(rotten))
    code, report = fsck(home, "--grace", "0")
    assert (code, report["mismatched"]) == (1, [old.blob_key])
    assert archive.blobs.exists(new.blob_key)


def test_kept_version_with_its_blob_missing_loses_its_row(archive: Archive, home: Path) -> None:
    ds = derived()
    old = archive.store(encode(ds), Source("IMPORT"))
    ds.SeriesDescription = "corrected"
    new = archive.store(encode(ds), CORRECTOR)
    archive.blobs.delete(old.blob_key)
    code, report = fsck(home, "--repair")
    assert (code, report["missing"]) == (0, [old.blob_key])
    assert report["repaired"] == {old.blob_key: "removed kept version row (blob missing)"}
    code, report = fsck(home)
    assert (code, report["indexed"], report["versions"]) == (0, 1, 0)
    assert archive.blobs.exists(new.blob_key)


def test_purged_orphan_and_stray_files_are_removed(archive: Archive, home: Path) -> None:
    ds = derived()
    old_bytes = encode(ds)
    archive.store(old_bytes, Source("IMPORT"))
    ds.PatientName = "New^Version"
    archive.store(encode(ds), CORRECTOR)
    # The old version's row was purged but its blob deletion was interrupted; a temp file too.
    with archive.db.write() as conn:
        conn.exec_driver_sql("DELETE FROM instance_version")
    old_key = blob_key(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        hashlib.sha256(old_bytes).hexdigest(),
    )
    assert archive.blobs.exists(old_key)
    stray = home / "storage" / ds.StudyInstanceUID / ".tmp-deadbeef"
    stray.write_bytes(b"partial")
    code, report = fsck(home, "--grace", "0", "--repair")
    assert code == 0
    assert report["repaired"] == {
        old_key: "deleted superseded or unacknowledged version",
        f"{ds.StudyInstanceUID}/.tmp-deadbeef": "removed stray file",
    }
    assert not stray.exists()
    assert not archive.blobs.exists(old_key)


def test_missing_blob_is_reported_and_its_row_removed_on_repair(
    archive: Archive, home: Path
) -> None:
    kept = archive.store(CT_SMALL.read_bytes(), Source("IMPORT"))
    lost = archive.store(MR_SMALL.read_bytes(), Source("IMPORT"))
    archive.blobs.delete(lost.blob_key)
    code, report = fsck(home)
    assert (code, report["missing"]) == (1, [lost.blob_key])
    code, report = fsck(home, "--repair")
    assert code == 0
    with archive.db.read() as conn:
        assert changes(conn)[-1].kind == "instance.deleted"
    code, report = fsck(home)
    assert (code, report["indexed"]) == (0, 1)
    assert archive.blobs.exists(kept.blob_key)


def test_checksum_mismatch_is_never_repaired(archive: Archive, home: Path) -> None:
    result = archive.store(CT_SMALL.read_bytes(), Source("IMPORT"))
    path = home / "storage" / result.blob_key
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit-rotten byte
    path.write_bytes(bytes(data))
    for args in ((), ("--repair",)):
        code, report = fsck(home, *args)
        assert (code, report["mismatched"], report["consistent"]) == (1, [result.blob_key], False)
    code, report = fsck(home, "--no-verify")  # sizes alone cannot see it
    assert code == 0


def test_orphan_renaming_a_stored_patient_is_not_indexed(archive: Archive, home: Path) -> None:
    archive.store(encode(derived(PatientName="Doe^Jane")), Source("IMPORT"))
    # An unacknowledged store that would rename the patient (its commit never happened).
    ds = derived(PatientName="Someone^Else")
    data = encode(ds)
    key = blob_key(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        hashlib.sha256(data).hexdigest(),
    )
    archive.blobs.put(key, data)
    code, report = fsck(home, "--grace", "0", "--repair")
    assert code == 0
    assert str(report["repaired"][key]).startswith("deleted refused blob (PatientName")
    assert not archive.blobs.exists(key)
    code, report = fsck(home)
    assert (code, report["indexed"], report["blobs"]) == (0, 1, 1)
