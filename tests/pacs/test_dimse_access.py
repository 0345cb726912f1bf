"""DIMSE access control against a real `pacs serve` with unknown AEs refused: each registered
peer gets what its entry permits, from the host it names, and nothing else (pynetdicom and
dcmtk as the peers)."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role
from pynetdicom.sop_class import CTImageStorage, Verification

from pacs.dimse import status
from pacs.dimse.find import STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE
from pacs.settings import PacsSettings
from tests.dicom import LIDC_0001, dicom_files, store_statuses
from tests.pacs.test_dimse_server import NODELAY, stored
from tests.servers import PacsServer, dcmtk

CT = dicom_files(LIDC_0001)[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    pacs = PacsServer(
        tmp_path_factory.mktemp("access") / "home", {"PACS_DIMSE_ALLOW_UNKNOWN": "false"}
    ).start()
    register = [
        ("MODALITY", "--permit", "store"),
        ("VIEWER", "--permit", "find,retrieve"),
        ("NOT_A_DEST", "--permit", "store,find"),
        ("ELSEWHERE", "--permit", "all", "--from", "192.0.2.7"),  # TEST-NET-1: never us
        ("LOCAL", "--permit", "all", "--from", "localhost"),
        ("CORRECTOR", "--permit", "store,replace"),
        ("DEFAULTS",),  # no --permit: everything but replace
    ]
    for title, *options in register:
        pacs.pacs("ae", "add", title, "127.0.0.1", "104", *options)
    assert store_statuses(pacs.port, [CT], calling_aet="MODALITY") == {CT.name: status.SUCCESS}
    yield pacs
    pacs.stop()


def associate(server: PacsServer, calling: str, *contexts: str) -> Any:
    ae = AE(ae_title=calling)
    for context in contexts or (Verification,):
        ae.add_requested_context(context, ExplicitVRLittleEndian)  # LIDC's transfer syntax
    # C-GET sends back over its own association: the requestor is a CT storage SCP on it.
    roles = [build_role(CTImageStorage, scp_role=True)] if STUDY_ROOT_GET in contexts else []
    return ae.associate("127.0.0.1", server.port, ae_title="PACS", ext_neg=roles)


def study_query() -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = pydicom.dcmread(CT, stop_before_pixels=True).StudyInstanceUID
    return query


@pytest.mark.parametrize("calling", ["STRANGER", "ELSEWHERE"])
def test_unknown_ae_or_wrong_host_is_rejected(server: PacsServer, calling: str) -> None:
    """Rejected-permanent by the service user, calling AE title not recognized (PS3.8 9.3.4)."""
    assoc = associate(server, calling)
    assert assoc.is_rejected
    rejection = assoc.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 3)


def test_dcmtk_is_told_why(server: PacsServer) -> None:
    echo = subprocess.run(
        [dcmtk("echoscu"), "-aet", "STRANGER", "-aec", "PACS", "127.0.0.1", str(server.port)],
        capture_output=True,
        text=True,
        env=NODELAY,
        timeout=60,
    )
    assert echo.returncode != 0
    assert "Calling AE Title Not Recognized" in echo.stdout + echo.stderr
    known = subprocess.run(
        [dcmtk("echoscu"), "-aet", "LOCAL", "-aec", "PACS", "127.0.0.1", str(server.port)],
        env=NODELAY,
        timeout=60,
    )
    assert known.returncode == 0  # LOCAL is expected from "localhost", which is 127.0.0.1


def test_store_only_peer_stores_and_may_not_query_or_retrieve(server: PacsServer) -> None:
    assoc = associate(server, "MODALITY", CTImageStorage, STUDY_ROOT_FIND)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(CT).Status == status.SUCCESS
        [(reply, match)] = list(assoc.send_c_find(study_query(), STUDY_ROOT_FIND))
        assert (reply.Status, match) == (status.NOT_AUTHORIZED, None)
        assert reply.ErrorComment == "this AE is not permitted to find"
    finally:
        assoc.release()
    assoc = associate(server, "MODALITY", STUDY_ROOT_GET, CTImageStorage)
    assert assoc.is_established
    try:
        replies = list(assoc.send_c_get(study_query(), STUDY_ROOT_GET))
        assert replies[-1][0].Status == status.NOT_AUTHORIZED
        assert all(r.Status != status.PENDING for r, _ in replies)
    finally:
        assoc.release()
    # C-MOVE is not even negotiated for it (pynetdicom's C-MOVE SCP cannot refuse otherwise).
    move = associate(server, "MODALITY", STUDY_ROOT_MOVE, STUDY_ROOT_FIND)
    assert move.is_established
    try:
        accepted = {str(c.abstract_syntax) for c in move.accepted_contexts}
        assert accepted == {STUDY_ROOT_FIND}
    finally:
        move.release()


def test_query_peer_may_not_store_and_moves_only_to_destinations(
    server: PacsServer, tmp_path: Path
) -> None:
    other = Path(str(dicom_files(LIDC_0001)[1]))
    sop = pydicom.dcmread(other, stop_before_pixels=True).SOPInstanceUID
    assoc = associate(server, "VIEWER", CTImageStorage, STUDY_ROOT_FIND, STUDY_ROOT_MOVE)
    assert assoc.is_established
    try:
        reply = assoc.send_c_store(other)
        assert reply.Status == status.NOT_AUTHORIZED
        assert reply.ErrorComment == "this AE is not permitted to store"
        assert sop not in stored(server)
        found = list(assoc.send_c_find(study_query(), STUDY_ROOT_FIND))
        assert [r.Status for r, _ in found] == [status.PENDING, status.SUCCESS]
        # NOT_A_DEST is registered, but not as a destination: unknown to C-MOVE.
        [(moved, _)] = list(assoc.send_c_move(study_query(), "NOT_A_DEST", STUDY_ROOT_MOVE))
        assert moved.Status == status.MOVE_DESTINATION_UNKNOWN
    finally:
        assoc.release()


def test_registry_lists_permissions_and_refuses_unknown_ones(server: PacsServer) -> None:
    listed = server.pacs("ae", "list").stdout
    assert "MODALITY         127.0.0.1:104 store\n" in listed
    assert (
        "ELSEWHERE        127.0.0.1:104 store,find,retrieve,destination,replace from 192.0.2.7"
        in listed
    )  # all is all
    assert "DEFAULTS         127.0.0.1:104 store,find,retrieve,destination\n" in listed
    assert "CORRECTOR        127.0.0.1:104 store,replace\n" in listed
    # Changing a known peer's port keeps what it may do and where it must call from.
    server.pacs("ae", "add", "ELSEWHERE", "127.0.0.1", "105")
    listed = server.pacs("ae", "list").stdout
    assert (
        "ELSEWHERE        127.0.0.1:105 store,find,retrieve,destination,replace from 192.0.2.7"
        in listed
    )
    server.pacs("ae", "add", "ELSEWHERE", "127.0.0.1", "105", "--permit", "find", "--from", "any")
    assert "ELSEWHERE        127.0.0.1:105 find\n" in server.pacs("ae", "list").stdout
    server.pacs(
        "ae", "add", "ELSEWHERE", "127.0.0.1", "104", "--permit", "all", "--from", "192.0.2.7"
    )
    bad = server.pacs("ae", "add", "X", "127.0.0.1", "104", "--permit", "stor", check=False)
    assert bad.returncode == 2
    assert "unknown permission(s) stor" in bad.stderr


def test_replacing_an_instance_needs_the_replace_permission(server: PacsServer) -> None:
    original = pydicom.dcmread(CT)  # as a study of its own, of a patient with a name
    original.update(
        {
            "PatientID": "REPLACE-1",
            "PatientName": "Doe^Jane",
            "StudyInstanceUID": generate_uid(),
            "SeriesInstanceUID": generate_uid(),
            "SOPInstanceUID": generate_uid(),
        }
    )
    zeroed = copy.deepcopy(original)
    zeroed.PixelData = bytes(len(original.PixelData))
    renamed = copy.deepcopy(original)
    renamed.SOPInstanceUID = generate_uid()
    renamed.PatientName = "Someone^Else"

    def send(calling: str, ds: Dataset) -> Dataset:
        assoc = associate(server, calling, CTImageStorage)
        assert assoc.is_established
        try:
            return assoc.send_c_store(ds)
        finally:
            assoc.release()

    assert send("MODALITY", original).Status == status.SUCCESS
    for calling in ("MODALITY", "DEFAULTS"):  # neither was given replace
        refused = send(calling, zeroed)
        assert refused.Status == status.NOT_AUTHORIZED
        assert refused.ErrorComment == (
            "instance already stored; replacing needs the replace permission"
        )
    refused = send("MODALITY", renamed)  # a new instance renaming the study's patient
    assert refused.Status == status.NOT_AUTHORIZED
    assert refused.ErrorComment == "PatientName differs from stored: needs replace permission"

    assert send("CORRECTOR", zeroed).Status == status.SUCCESS
    listed = server.pacs("versions", original.SOPInstanceUID).stdout.splitlines()
    assert len(listed) == 2
    assert listed[0].endswith("DIMSE CORRECTOR@127.0.0.1  current")
    assert "DIMSE MODALITY@127.0.0.1  superseded" in listed[1]
    assert "by DIMSE CORRECTOR@127.0.0.1, kept until" in listed[1]
    # The renamed instance was never stored; the study's patient keeps its name.
    missing = server.pacs("versions", renamed.SOPInstanceUID, check=False)
    assert missing.returncode == 1


def test_unknown_aes_default_by_environment() -> None:
    assert PacsSettings(environment="development").allows_unknown_aes
    assert not PacsSettings(environment="production").allows_unknown_aes
    assert not PacsSettings(dimse_allow_unknown=False).allows_unknown_aes
    with pytest.raises(ValueError, match="PACS_DIMSE_ALLOW_UNKNOWN=true is refused"):
        PacsSettings(environment="production", dimse_allow_unknown=True)
