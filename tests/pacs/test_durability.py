"""Nothing acknowledged is lost: kill -9 the server in the middle of an association."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from pacs.storage import open_store
from tests.dicom import LIDC_0001, dataset_bytes, dicom_files
from tests.pacs.test_dimse_server import stored
from tests.servers import PacsServer

# A modality in its own process: prints the path of each instance acknowledged with 0x0000.
SENDER = """
import sys
from pynetdicom import AE, _config
_config.STORE_SEND_CHUNKED_DATASET = True
port, files = int(sys.argv[1]), sys.argv[2:]
ae = AE("CT_SCANNER")
ae.dimse_timeout = ae.network_timeout = 3  # notice the dead server quickly
ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
for path in files:
    if not assoc.is_established:
        break
    reply = assoc.send_c_store(path)
    if "Status" in reply and reply.Status == 0:
        print(path, flush=True)
"""
KILL_AFTER = 40


@pytest.mark.slow
def test_kill_9_mid_association_loses_nothing_acknowledged(tmp_path: Path) -> None:
    server = PacsServer(tmp_path / "home").start()
    files = dicom_files(LIDC_0001)
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, str(server.port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert sender.stdout is not None
    acknowledged = [sender.stdout.readline().strip() for _ in range(KILL_AFTER)]
    server.stop(signal.SIGKILL)  # mid-association: the sender is still sending
    rest, _ = sender.communicate(timeout=60)
    acknowledged += rest.split()
    assert KILL_AFTER <= len(acknowledged) < len(files)

    server.start()  # restarts on the same index and storage
    try:
        rows = stored(server)
        blobs = open_store(f"file://{server.home / 'storage'}")
        for path in map(Path, acknowledged):
            row = rows[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID]
            assert dataset_bytes(blobs.get(str(row["blob_key"]))) == dataset_bytes(
                path.read_bytes()
            )
        report = json.loads(server.pacs("fsck", "--json").stdout)
        assert report["missing"] == []
        assert report["mismatched"] == []
        # An instance whose blob was written but whose commit the kill prevented is an
        # orphan (in flight within the grace period); repair indexes it.
        repaired = json.loads(server.pacs("fsck", "--repair", "--grace", "0", "--json").stdout)
        assert repaired["consistent"] is True
        assert json.loads(server.pacs("fsck", "--grace", "0", "--json").stdout)["orphans"] == []
    finally:
        server.stop()
