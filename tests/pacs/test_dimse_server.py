"""The real DICOM server (`pacs serve` in its own process) against real clients: dcmtk's
storescu/echoscu and pynetdicom."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pydicom
import pytest
from sqlalchemy import select

from pacs.dimse import status
from pacs.index import Database
from pacs.index.schema import instance, patient, series, study
from pacs.part10 import locate
from pacs.storage import open_store
from tests.dicom import LIDC_0001, dataset_bytes, derived, dicom_files, encode, store_statuses
from tests.servers import DATA, PacsServer, PostgresServer, S3Server, dcmtk, wait_for

NODELAY = {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PacsServer]:
    pacs = PacsServer(tmp_path / "home").start()
    yield pacs
    pacs.stop()


def stored(server: PacsServer, database_url: str | None = None) -> dict[str, dict[str, object]]:
    """Index rows by SOP Instance UID, joined with their series, study and patient."""
    db = Database(database_url or f"sqlite:///{server.home / 'index.db'}")
    query = (
        select(instance, series, study, patient)
        .join(series, series.c.id == instance.c.series_fk)
        .join(study, study.c.id == series.c.study_fk)
        .join(patient, patient.c.id == study.c.patient_fk)
    )
    with db.read() as conn:
        found = {row.sop_instance_uid: dict(row._mapping) for row in conn.execute(query)}
    db.dispose()
    return found


def assert_stored_as_sent(server: PacsServer, files: list[Path]) -> None:
    """Every file is indexed with its attributes and its data set stored byte for byte.

    Where two files share a SOP Instance UID (the corpus has such variants), the archive keeps
    the one that arrived last: the stored bytes must be one of them.
    """
    rows = stored(server)
    blobs = open_store(f"file://{server.home / 'storage'}")
    sent: dict[str, list[Path]] = {}
    for path in files:
        sent.setdefault(pydicom.dcmread(path, force=True).SOPInstanceUID, []).append(path)
    assert set(sent) <= set(rows)
    for sop_uid, paths in sent.items():
        row = rows[sop_uid]
        stored_bytes = dataset_bytes(blobs.get(str(row["blob_key"])))
        matches = [p for p in paths if dataset_bytes(p.read_bytes()) == stored_bytes]
        assert matches, f"{paths[0].name}: stored data set differs from what was sent"
        path = matches[0]
        ds = pydicom.dcmread(path, force=True)
        assert row["transfer_syntax_uid"] == locate(path.read_bytes()).transfer_syntax_uid
        assert row["sop_class_uid"] == ds.SOPClassUID
        assert row["series_instance_uid"] == ds.SeriesInstanceUID
        assert row["study_instance_uid"] == ds.StudyInstanceUID
        assert row["patient_id"] == ds.get("PatientID", "")
        assert row["modality"] == ds.Modality
        assert row["rows"] == ds.get("Rows")
        assert row["instance_number"] == (
            int(ds.InstanceNumber) if "InstanceNumber" in ds else None
        )
        assert row["calling_ae"]


def test_echo_from_dcmtk_and_pacs(server: PacsServer) -> None:
    subprocess.run(
        [dcmtk("echoscu"), "-aec", "PACS", "127.0.0.1", str(server.port)],
        check=True,
        env=NODELAY,
        timeout=30,
    )
    assert "status 0x0000" in server.pacs("echo", "--port", str(server.port)).stdout
    server.stop()  # SIGTERM: a clean shutdown
    assert server.process is not None
    assert server.process.returncode == 0


@pytest.mark.slow
def test_lidc_ct_from_storescu_is_stored_byte_identical(server: PacsServer) -> None:
    files = dicom_files(LIDC_0001)
    assert len(files) == 133
    storescu = [dcmtk("storescu"), "-aet", "CT_SCANNER", "-aec", "PACS", "+sd", "+r"]
    subprocess.run(
        [*storescu, "127.0.0.1", str(server.port), str(LIDC_0001)],
        check=True,
        env=NODELAY,
        timeout=300,
    )
    assert_stored_as_sent(server, files)
    rows = stored(server)
    assert {r["calling_ae"] for r in rows.values()} == {"CT_SCANNER"}
    counts = json.loads(server.pacs("stats", "--json").stdout)
    assert (counts["patients"], counts["studies"], counts["series"], counts["instances"]) == (
        1,
        1,
        1,
        133,
    )
    assert json.loads(server.pacs("fsck", "--json").stdout)["consistent"] is True


@pytest.mark.slow
def test_cr_and_mr_from_pacs_send_over_four_associations(server: PacsServer) -> None:
    # Two files of the corpus are versions of one SOP instance: the sender may replace.
    server.pacs("ae", "add", "PACS_SCU", "127.0.0.1", "104", "--permit", "store,replace")
    folders = [DATA / "cxr", DATA / "mr"]
    result = server.pacs(
        "send", *map(str, folders), "--port", str(server.port), "--associations", "4"
    )
    assert "failed 0" in result.stdout
    files = [p for folder in folders for p in dicom_files(folder)]
    assert len(files) == 156  # 150 GE EPI + 1 enhanced MR + 5 chest radiographs
    assert_stored_as_sent(server, files)


def test_every_transfer_syntax_is_stored_as_received(server: PacsServer) -> None:
    # Most of these files are one CT slice (one SOP Instance UID) in another encoding: each
    # send replaces the stored version, which must then be exactly the file just sent (the
    # sender has the replace permission; without it, see test_dimse_access).
    server.pacs("ae", "add", "TEST_SCU", "127.0.0.1", "104", "--permit", "store,replace")
    files = dicom_files(DATA / "transfer-syntaxes")
    assert len(files) == 16
    for path in files:
        assert store_statuses(server.port, [path]) == {path.name: status.SUCCESS}
        assert_stored_as_sent(server, [path])


# What the archive does with pydicom's corpus of odd and broken files.
EDGE_OUTCOMES = {
    "MR_truncated.dcm": status.CANNOT_UNDERSTAND,  # pixel data cut short
    "rtplan_truncated.dcm": status.CANNOT_UNDERSTAND,  # sequence cut short
    "JPEGLSNearLossless_08.dcm": status.CANNOT_UNDERSTAND_INVALID_UID,  # no Study Instance UID
    "SC_rgb_jls_lossy_line.dcm": status.CANNOT_UNDERSTAND_INVALID_UID,  # no Study Instance UID
    # Its File Meta Information names another SOP Instance UID than its data set.
    "badVR.dcm": status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    "ExplVR_BigEnd.dcm": status.SUCCESS,  # retired big endian transfer syntax
    "image_dfl.dcm": status.SUCCESS,  # deflated
    "MR_small_padded.dcm": status.SUCCESS,  # trailing padding
    "JPEG2000-embedded-sequence-delimiter.dcm": status.SUCCESS,
    "SC_rgb_rle_32bit_2frame.dcm": status.SUCCESS,
    "waveform_ecg.dcm": status.SUCCESS,
    "test-SR.dcm": status.SUCCESS,
    "rtdose.dcm": status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,  # the same disagreement
    "rtdose_rle_1frame.dcm": status.SUCCESS,
    "examples_palette.dcm": status.SUCCESS,
}


def test_edge_cases_get_their_documented_outcome(server: PacsServer) -> None:
    edge = DATA / "edge-cases"
    statuses = store_statuses(server.port, [edge / name for name in EDGE_OUTCOMES])
    assert statuses == EDGE_OUTCOMES
    rows = stored(server)
    stored_names = {name for name, code in EDGE_OUTCOMES.items() if code == status.SUCCESS}
    assert len(rows) == len(stored_names)
    # The server keeps serving after bad input.
    assert store_statuses(server.port, [DATA / "edge-cases" / "CT_small.dcm"]) == {
        "CT_small.dcm": status.SUCCESS
    }


def test_files_without_sop_class_are_reported_not_sent(server: PacsServer) -> None:
    result = server.pacs(
        "send", str(DATA / "edge-cases" / "priv_SQ.dcm"), "--port", str(server.port), check=False
    )
    assert result.returncode == 1
    assert "skipped 1" in result.stdout
    assert "no SOP Class UID" in result.stderr.replace("\n", " ")


def test_instance_names_in_any_character_set(server: PacsServer, tmp_path: Path) -> None:
    names = {
        "ISO_IR 192": "Nguyễn^Văn An",
        "ISO_IR 100": "Müller^Jürgen",
        "\\ISO 2022 IR 87": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    }
    files = []
    for i, (charset, name) in enumerate(names.items()):
        ds = derived(
            SpecificCharacterSet=charset.split("\\") if "\\" in charset else charset,
            PatientName=name,
            PatientID=f"CHARSET-{i}",
            StudyInstanceUID=pydicom.uid.generate_uid(),
            SeriesInstanceUID=pydicom.uid.generate_uid(),
        )
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(encode(ds))
        files.append(path)
    assert set(store_statuses(server.port, files).values()) == {status.SUCCESS}
    assert {r["patient_name"] for r in stored(server).values()} == set(names.values())


def test_storage_outage_refuses_with_out_of_resources(tmp_path: Path) -> None:
    s3 = S3Server()
    url = s3.url()
    pacs = PacsServer(
        tmp_path / "home",
        {
            "PACS_STORAGE_URL": url,
            "PACS_S3_ACCESS_KEY": s3.access_key,
            "PACS_S3_SECRET_KEY": s3.secret_key,
        },
    ).start()
    ct = DATA / "edge-cases" / "CT_small.dcm"
    mr = DATA / "edge-cases" / "MR_small.dcm"
    try:
        s3.stop()
        assert store_statuses(pacs.port, [ct]) == {"CT_small.dcm": status.OUT_OF_RESOURCES}
        assert stored(pacs) == {}  # nothing half-stored
        assert "status 0x0000" in pacs.pacs("echo", "--port", str(pacs.port)).stdout
        s3.start()  # same port, fresh (empty) endpoint: the bucket is made again on demand
        open_store(url, s3.access_key, s3.secret_key)
        assert store_statuses(pacs.port, [ct, mr]) == {
            "CT_small.dcm": status.SUCCESS,
            "MR_small.dcm": status.SUCCESS,
        }
        # A frame of a blob in S3: cut out in a worker thread, not on the event loop.
        ds = pydicom.dcmread(ct)
        frame = httpx.get(
            f"{pacs.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/1",
            headers={
                "Authorization": f"Bearer {pacs.token('radiologist')}",
                "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            },
        )
        assert frame.status_code == 200, frame.text
        assert ds.PixelData in frame.content
    finally:
        pacs.stop()
        s3.stop()


def test_index_outage_refuses_with_out_of_resources(tmp_path: Path) -> None:
    postgres = PostgresServer()
    url = postgres.new_database()
    pacs = PacsServer(tmp_path / "home", {"PACS_DATABASE_URL": url})
    ct = DATA / "edge-cases" / "CT_small.dcm"
    try:
        pacs.pacs("db", "upgrade")
        pacs.start()
        postgres._run(*postgres.pg_ctl, "-m", "fast", "stop")
        assert store_statuses(pacs.port, [ct]) == {"CT_small.dcm": status.OUT_OF_RESOURCES}
        assert "status 0x0000" in pacs.pacs("echo", "--port", str(pacs.port)).stdout
        options = f"-h 127.0.0.1 -p {postgres.port} -k {postgres.root}"
        postgres._run(
            *postgres.pg_ctl, "-w", "-l", str(postgres.root / "log"), "-o", options, "start"
        )
        assert store_statuses(pacs.port, [ct]) == {"CT_small.dcm": status.SUCCESS}
        assert len(stored(pacs, url)) == 1
    finally:
        pacs.stop()
        postgres.close()


def test_several_receiver_processes_share_the_port(tmp_path: Path) -> None:
    pacs = PacsServer(tmp_path / "home", {"PACS_RECEIVERS": "2"}).start()
    try:
        result = pacs.pacs(
            "send", str(DATA / "mr" / "ge-epi"), "--port", str(pacs.port), "--associations", "4"
        )
        assert "sent 150" in result.stdout
        assert len(stored(pacs)) == 150
        children = psutil.Process(pacs.process.pid).children()  # type: ignore[union-attr]
        receivers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(receivers) == 1  # the second receiver; the first is the parent itself
    finally:
        pacs.stop()
    assert pacs.process is not None
    assert pacs.process.returncode == 0
    _, alive = psutil.wait_procs(receivers, timeout=5)
    assert alive == []


def _receiver_of(pacs: PacsServer, peer_port: int) -> int:
    """The pid of the receiver process holding our connection from *peer_port*."""
    root = psutil.Process(pacs.process.pid)  # type: ignore[union-attr]
    for process in [root, *root.children()]:
        for connection in process.net_connections("tcp"):
            if (
                connection.laddr.port == pacs.port
                and connection.raddr
                and (connection.raddr.port == peer_port)
            ):
                return process.pid
    raise AssertionError(f"no receiver holds the connection from port {peer_port}")


def test_receivers_take_associations_in_turn(tmp_path: Path) -> None:
    # One shared listening socket, the least busy receiver accepting first: six associations
    # opened one after another land 3-3. (Bound each with SO_REUSEPORT, the kernel's hash of
    # the peer's port decided, and 3-3 came up in 20 of 64 cases.)
    from pynetdicom import AE

    pacs = PacsServer(tmp_path / "home", {"PACS_RECEIVERS": "2"}).start()
    ae = AE(ae_title="TURNS")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = []
    try:
        # Until the second receiver accepts too (it starts after the port opens).
        deadline = time.monotonic() + 60
        while True:
            probe = ae.associate("127.0.0.1", pacs.port, ae_title="PACS")
            assert probe.is_established
            pid = _receiver_of(pacs, probe.dul.socket.socket.getsockname()[1])
            probe.release()
            if pid != pacs.process.pid:  # type: ignore[union-attr]
                break
            assert time.monotonic() < deadline, "the second receiver never accepted"
            time.sleep(0.2)
        time.sleep(0.5)  # the probes' associations end in their receivers
        for _ in range(6):
            assoc = ae.associate("127.0.0.1", pacs.port, ae_title="PACS")
            assert assoc.is_established
            held.append(assoc)
        pids = [_receiver_of(pacs, a.dul.socket.socket.getsockname()[1]) for a in held]
        assert sorted(Counter(pids).values()) == [3, 3], pids
    finally:
        for assoc in held:
            assoc.release()
        pacs.stop()


def test_receivers_split_associations_opened_at_once(tmp_path: Path) -> None:
    # Four modalities starting at the same moment, each proposing 120 contexts as storescu
    # does (association set-up takes tens of ms of CPU): 2-2. With a fixed wait per held
    # association, the receiver busy setting up its first one lost every race: 3-1.
    from pynetdicom import AE, AllStoragePresentationContexts

    pacs = PacsServer(tmp_path / "home", {"PACS_RECEIVERS": "2"}).start()
    ae = AE(ae_title="ATONCE")
    ae.requested_contexts = AllStoragePresentationContexts[:120]
    held: list[Any] = []
    try:
        wait_for(lambda: _both_receivers_accept(pacs, ae), 60, "the second receiver accepting")
        start = threading.Barrier(4)

        def associate() -> None:
            start.wait(10)
            held.append(ae.associate("127.0.0.1", pacs.port, ae_title="PACS"))

        threads = [threading.Thread(target=associate) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(held) == 4 and all(a.is_established for a in held)
        pids = [_receiver_of(pacs, a.dul.socket.socket.getsockname()[1]) for a in held]
        assert sorted(Counter(pids).values()) == [2, 2], pids
    finally:
        for assoc in held:
            assoc.release()
        pacs.stop()


def test_receivers_take_associations_opened_one_after_another_in_turn(tmp_path: Path) -> None:
    # A modality sending study after study, one association each: the receivers alternate.
    # Before ties were broken by who accepted last, whichever the kernel ran first after the
    # wake-up took them all (seen in CI: 40 in a row to one process).
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    pacs = PacsServer(tmp_path / "home", {"PACS_RECEIVERS": "2"}).start()
    ae = AE(ae_title="INTURN")
    ae.add_requested_context(Verification)
    try:
        wait_for(lambda: _both_receivers_accept(pacs, ae), 60, "the second receiver accepting")
        pids = []
        for _ in range(6):
            assoc = ae.associate("127.0.0.1", pacs.port, ae_title="PACS")
            assert assoc.is_established
            pids.append(_receiver_of(pacs, assoc.dul.socket.socket.getsockname()[1]))
            assoc.release()
        # They alternate (unless a receiver is not scheduled within 60 ms on a loaded machine).
        counts = Counter(pids)
        assert len(counts) == 2 and min(counts.values()) >= 2, pids
    finally:
        pacs.stop()


def _both_receivers_accept(pacs: PacsServer, ae: Any) -> bool:
    """Whether an association went to the second receiver (it starts after the port opens);
    the probe's association is over once this returns."""
    probe = ae.associate("127.0.0.1", pacs.port, ae_title="PACS")
    assert probe.is_established
    pid = _receiver_of(pacs, probe.dul.socket.socket.getsockname()[1])
    probe.release()
    time.sleep(0.5)  # its association ends in its receiver
    return pid != pacs.process.pid  # type: ignore[union-attr]
