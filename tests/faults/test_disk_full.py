"""A full disk under the filesystem store (a 20 MB tmpfs, mounted as root): every instance is
refused with 0xA700 Out of Resources, nothing half-written stays behind, and once there is
room again the same sends succeed."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from pacs.storage import open_store
from tests.dicom import dataset_bytes
from tests.faults.harness import fill
from tests.faults.site import START_TIMEOUT, pacs_send, storescu_send, write_studies
from tests.pacs.test_dimse_server import stored
from tests.servers import PacsServer

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_store_refuses_with_out_of_resources_and_recovers(
    tmp_path: Path, small_disk: Path
) -> None:
    studies = write_studies(tmp_path / "studies", 2, seed=7)
    files = [sorted(folder.glob("*.dcm")) for folder in studies]
    storage = small_disk / "storage"
    server = PacsServer(tmp_path / "home", {"PACS_STORAGE_URL": f"file://{storage}"})
    server.start(START_TIMEOUT)
    try:
        filler = fill(small_disk)
        assert storescu_send(server.port, files[0]) == set()
        assert pacs_send(server.port, files[1]) == set()
        refused = server.pacs("send", str(files[0][0]), check=False)
        # 0xA700 Out of Resources, whose comment `pacs send` prints.
        assert refused.returncode == 1 and "storage unavailable" in refused.stderr, refused.stderr
        assert not [p for p in storage.rglob("*") if p.is_file()], "half-written blobs stayed"
        filler.unlink()
        assert storescu_send(server.port, files[0]) == set(files[0])
        assert pacs_send(server.port, files[1]) == set(files[1])
        rows = stored(server)
        blobs = open_store(f"file://{storage}")
        for path in files[0] + files[1]:
            row = rows[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID]
            assert dataset_bytes(blobs.get(str(row["blob_key"]))) == dataset_bytes(
                path.read_bytes()
            )
        report = json.loads(server.pacs("fsck", "--grace", "0", "--json").stdout)
        assert report["consistent"] is True and report["orphans"] == []
    finally:
        server.stop()
