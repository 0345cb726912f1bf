"""Facilities over DIMSE against a real `pacs serve`: each facility's AE title on the one port,
C-STOREs belonging to the facility of the AE title they were sent to, and C-FIND, C-MOVE and
C-GET seeing only the peer's facilities (plus studies shared with them), from pynetdicom and
dcmtk as the peers."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from pacs.dimse import status
from pacs.dimse.find import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from pacs.facilities import Scope
from pacs.index import Database
from pacs.index.schema import facility, instance, patient, series, study
from pacs.sharing import revoke_share, share_study
from tests.dicom import derived
from tests.pacs.test_dimse_server import NODELAY
from tests.servers import PacsServer, dcmtk, free_port

#: The facility isolation matrix, DIMSE rows: per service, what a peer of facility north
#: gets for a study of its own, for one of facility south, and for one south shared with it,
#: and the tests here that show it (a generated matrix reads this).
ISOLATION_MATRIX: dict[str, dict[str, str]] = {
    "C-STORE": {
        "own": "stored into the facility of the called AE title",
        "other": "refused 0xC002 with an ErrorComment, nothing stored",
        "shared": "refused 0xC002 (a grant shares reading, not writing)",
        "tests": "test_stores_belong_to_the_called_ae_titles_facility, "
        "test_store_into_another_facilitys_study_is_refused",
    },
    "C-FIND": {
        "own": "matches",
        "other": "no match (never 'forbidden'), at every level and model",
        "shared": "matches while the grant lives",
        "tests": "test_find_sees_only_the_peers_facility, test_sharing_and_revoking",
    },
    "C-MOVE": {
        "own": "moved",
        "other": "success with 0 sub-operations, as for a study that does not exist",
        "shared": "moved while the grant lives",
        "tests": "test_retrieve_of_another_facilitys_study_matches_nothing, "
        "test_sharing_and_revoking",
    },
    "C-GET": {
        "own": "sent back",
        "other": "success with 0 sub-operations, as for a study that does not exist",
        "shared": "sent back while the grant lives",
        "tests": "test_retrieve_of_another_facilitys_study_matches_nothing, "
        "test_sharing_and_revoking",
    },
}


@dataclass(frozen=True)
class Sent:
    """A one-instance study C-STOREd to the archive."""

    StudyInstanceUID: str
    SOPInstanceUID: str
    PatientID: str


class Destination:
    """A pynetdicom storage SCP in this process, registered as a C-MOVE destination."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.port = free_port()
        ae = AE(ae_title="DEST")
        ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_supported_context(Verification)
        self.lock = threading.Lock()
        server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )
        assert server is not None  # not blocking: the server is returned
        self.server = server

    def _store(self, event: Any) -> int:
        with self.lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def take(self) -> list[str]:
        with self.lock:
            taken, self.received = self.received, []
        return taken


@dataclass
class Site:
    server: PacsServer
    destination: Destination
    north: Sent
    south: Sent

    def db(self) -> Database:
        return Database(f"sqlite:///{self.server.home / 'index.db'}")


PATIENT_ID = "SAME-ID-1"  # the same patient ID at both facilities: two patients


def store(
    server: PacsServer, calling: str, called: str, StudyInstanceUID: str | None = None
) -> tuple[Sent, Dataset]:
    """C-STORE CT_small to *called* as a new series of a new study (or of *StudyInstanceUID*)."""
    ds = derived(
        StudyInstanceUID=StudyInstanceUID or generate_uid(),
        SeriesInstanceUID=generate_uid(),
        PatientID=PATIENT_ID,
    )
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=called)
    assert assoc.is_established
    try:
        reply = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return Sent(ds.StudyInstanceUID, ds.SOPInstanceUID, ds.PatientID), reply


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    destination = Destination()
    pacs = PacsServer(tmp_path_factory.mktemp("facilities") / "home").start()
    try:
        # Added while the server runs: it answers to the new titles at once.
        pacs.pacs("facility", "add", "north", "--ae-title", "NORTH")
        pacs.pacs("facility", "add", "south", "--ae-title", "SOUTH")
        pacs.pacs("ae", "add", "NORTH_VIEW", "127.0.0.1", "104", "--facility", "north")
        pacs.pacs("ae", "add", "SOUTH_VIEW", "127.0.0.1", "104", "--facility", "south")
        pacs.pacs("ae", "add", "NORTH_MOD", "127.0.0.1", "104", "--permit", "store")
        # --facility on a known entry keeps its permissions.
        pacs.pacs("ae", "add", "NORTH_MOD", "127.0.0.1", "104", "--facility", "north")
        pacs.pacs("ae", "add", "DEST", "127.0.0.1", str(destination.port), "--permit", "all")
        north, reply = store(pacs, "MODALITY", "NORTH")
        assert reply.Status == status.SUCCESS
        south, reply = store(pacs, "MODALITY", "SOUTH")
        assert reply.Status == status.SUCCESS
        yield Site(pacs, destination, north, south)
    finally:
        pacs.stop()
        destination.server.shutdown()


def associate(site: Site, calling: str, called: str, *contexts: str) -> Any:
    ae = AE(ae_title=calling)
    for context in contexts or (Verification,):
        ae.add_requested_context(context, ExplicitVRLittleEndian)
    getting = {STUDY_ROOT_GET, PATIENT_ROOT_GET} & set(contexts)
    roles = [build_role(CTImageStorage, scp_role=True)] if getting else []
    if getting:
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", site.server.port, ae_title=called, ext_neg=roles)


def find(site: Site, calling: str, called: str, identifier: Dataset, model: str) -> list[Dataset]:
    """The matches of a C-FIND, after checking it ended in success."""
    assoc = associate(site, calling, called, model)
    assert assoc.is_established
    try:
        replies = list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()
    assert replies[-1][0].Status == status.SUCCESS
    return [match for reply, match in replies if reply.Status == status.PENDING]


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def facility_of_patient_rows(site: Site, *sent: Sent) -> dict[str, str]:
    """SOP Instance UID -> the facility of its patient row."""
    db = site.db()
    wanted = [s.SOPInstanceUID for s in sent]
    try:
        with db.read() as conn:
            rows = conn.execute(
                select(instance.c.sop_instance_uid, facility.c.name)
                .join(series, series.c.id == instance.c.series_fk)
                .join(study, study.c.id == series.c.study_fk)
                .join(patient, patient.c.id == study.c.patient_fk)
                .join(facility, facility.c.id == patient.c.facility_id)
                .where(instance.c.sop_instance_uid.in_(wanted))
            ).all()
    finally:
        db.dispose()
    return {str(uid): str(name) for uid, name in rows}


def test_stores_belong_to_the_called_ae_titles_facility(site: Site) -> None:
    assert facility_of_patient_rows(site, site.north, site.south) == {
        site.north.SOPInstanceUID: "north",
        site.south.SOPInstanceUID: "south",
    }
    # To the archive's own title: the single facility of the peer's entry, else the default.
    own, reply = store(site.server, "NORTH_MOD", "PACS")
    assert reply.Status == status.SUCCESS
    stranger, reply = store(site.server, "MODALITY", "PACS")
    assert reply.Status == status.SUCCESS
    assert facility_of_patient_rows(site, own, stranger) == {
        own.SOPInstanceUID: "north",
        stranger.SOPInstanceUID: "default",
    }


def test_store_into_another_facilitys_study_is_refused(site: Site) -> None:
    sent, reply = store(
        site.server, "MODALITY", "SOUTH", StudyInstanceUID=site.north.StudyInstanceUID
    )
    assert reply.Status == status.CANNOT_UNDERSTAND_CONFLICT
    assert reply.ErrorComment
    assert facility_of_patient_rows(site, sent) == {}  # nothing stored


@pytest.mark.parametrize(
    ("model", "level"),
    [
        (STUDY_ROOT_FIND, "STUDY"),
        (PATIENT_ROOT_FIND, "STUDY"),
        (PATIENT_ROOT_FIND, "PATIENT"),
    ],
)
def test_find_sees_only_the_peers_facility(site: Site, model: str, level: str) -> None:
    both = f"{site.north.StudyInstanceUID}\\{site.south.StudyInstanceUID}"
    queries = [identifier(level, PatientName="*", PatientID="", StudyInstanceUID="")]
    if level == "STUDY":
        queries.append(identifier(level, PatientID=PATIENT_ID, StudyInstanceUID=both))
        if model == PATIENT_ROOT_FIND:
            for query in queries:
                query.PatientID = PATIENT_ID
    else:
        queries = [identifier(level, PatientName="*", PatientID=PATIENT_ID)]
    for query in queries:
        # The registered peer of north, on our own title or on north's.
        for called in ("PACS", "NORTH"):
            matches = find(site, "NORTH_VIEW", called, query, model)
            found = [m.get("StudyInstanceUID") for m in matches if m.PatientID == PATIENT_ID]
            if level == "STUDY":
                assert site.north.StudyInstanceUID in found
                assert site.south.StudyInstanceUID not in found
            else:
                assert len(found) == 1  # one patient SAME-ID-1: north's
            assert {m.RetrieveAETitle for m in matches} == {called}
        # An unknown peer sees the facility of the AE title it called.
        matches = find(site, "STRANGER", "SOUTH", query, model)
        found = [m.get("StudyInstanceUID") for m in matches if m.PatientID == PATIENT_ID]
        if level == "STUDY":
            assert found == [site.south.StudyInstanceUID]
        else:
            assert len(found) == 1


def test_findscu_on_a_facility_title(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "found"
    out.mkdir()
    run = subprocess.run(
        [
            dcmtk("findscu"),
            *("-S", "-aet", "SOUTH_VIEW", "-aec", "SOUTH", "-X", "-od", str(out)),
            *("-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientName=*"),
            *("127.0.0.1", str(site.server.port)),
        ],
        env=NODELAY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    found = {pydicom.dcmread(path).StudyInstanceUID for path in out.iterdir()}
    assert site.south.StudyInstanceUID in found
    assert site.north.StudyInstanceUID not in found


def retrieve(site: Site, calling: str, study_uid: str, model: str) -> tuple[Dataset, list[str]]:
    """C-MOVE (to DEST) or C-GET a study; the final status and the SOP Instance UIDs that
    arrived."""
    level = identifier("STUDY", StudyInstanceUID=study_uid)
    if model in (PATIENT_ROOT_MOVE, PATIENT_ROOT_GET):
        level.PatientID = PATIENT_ID
    assoc = associate(site, calling, "PACS", model)
    assert assoc.is_established
    received: list[str] = []

    def receive(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    if model in (STUDY_ROOT_GET, PATIENT_ROOT_GET):
        assoc.bind(evt.EVT_C_STORE, receive)
    try:
        if model in (STUDY_ROOT_MOVE, PATIENT_ROOT_MOVE):
            replies = list(assoc.send_c_move(level, "DEST", model))
            received = site.destination.take()
        else:
            replies = list(assoc.send_c_get(level, model))
    finally:
        assoc.release()
    return replies[-1][0], received


@pytest.mark.parametrize(
    "model", [STUDY_ROOT_MOVE, PATIENT_ROOT_MOVE, STUDY_ROOT_GET, PATIENT_ROOT_GET]
)
def test_retrieve_of_another_facilitys_study_matches_nothing(site: Site, model: str) -> None:
    final, received = retrieve(site, "NORTH_VIEW", site.south.StudyInstanceUID, model)
    # Not "forbidden": success with nothing done, as for a study that does not exist.
    assert final.Status == status.SUCCESS
    assert final.get("NumberOfCompletedSuboperations", 0) == 0
    assert final.get("NumberOfFailedSuboperations", 0) == 0
    assert received == []
    final, received = retrieve(site, "NORTH_VIEW", site.north.StudyInstanceUID, model)
    assert final.Status == status.SUCCESS
    assert final.NumberOfCompletedSuboperations == 1
    assert received == [site.north.SOPInstanceUID]


def test_sharing_and_revoking(site: Site) -> None:
    south_study = site.south.StudyInstanceUID
    query = identifier("STUDY", StudyInstanceUID=south_study)
    db = site.db()
    try:
        with db.write() as conn:
            grant = share_study(conn, Scope.of(["south"]), south_study, "north", "test")
        [match] = find(site, "NORTH_VIEW", "PACS", query, STUDY_ROOT_FIND)
        assert match.StudyInstanceUID == south_study
        for model in (STUDY_ROOT_MOVE, STUDY_ROOT_GET):
            final, received = retrieve(site, "NORTH_VIEW", south_study, model)
            assert (final.Status, received) == (status.SUCCESS, [site.south.SOPInstanceUID])
        # Shared for reading: a new instance of it sent to north is still refused.
        _, reply = store(site.server, "MODALITY", "NORTH", StudyInstanceUID=south_study)
        assert reply.Status == status.CANNOT_UNDERSTAND_CONFLICT
        with db.write() as conn:
            revoke_share(conn, Scope.of(["south"]), grant.id, "test")
    finally:
        db.dispose()
    assert find(site, "NORTH_VIEW", "PACS", query, STUDY_ROOT_FIND) == []
    final, received = retrieve(site, "NORTH_VIEW", south_study, STUDY_ROOT_GET)
    assert (final.Status, received) == (status.SUCCESS, [])


def test_unknown_called_ae_title_is_rejected(site: Site) -> None:
    """Rejected-permanent by the service user, called AE title not recognized (PS3.8 9.3.4)."""
    for calling, called in [("STRANGER", "NOWHERE"), ("NORTH_VIEW", "SOUTH")]:
        assoc = associate(site, calling, called)
        assert assoc.is_rejected, (calling, called)
        rejection = assoc.acceptor.primitive
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (1, 1, 7)
    for called in ("PACS", "NORTH"):  # north's own peer may call ours and north's
        assoc = associate(site, "NORTH_VIEW", called)
        assert assoc.is_established
        assoc.release()


def test_a_facility_added_while_running_is_answered(site: Site) -> None:
    assert associate(site, "STRANGER", "EAST").is_rejected
    site.server.pacs("facility", "add", "east", "--ae-title", "EAST")
    assoc = associate(site, "STRANGER", "EAST")
    assert assoc.is_established
    assoc.release()
    sent, reply = store(site.server, "MODALITY", "EAST")
    assert reply.Status == status.SUCCESS
    assert facility_of_patient_rows(site, sent) == {sent.SOPInstanceUID: "east"}


def test_cli_lists_facilities_and_refuses_unknown_ones(site: Site) -> None:
    listed = site.server.pacs("facility", "list").stdout.split("\n")
    assert any(line.split() == ["north", "NORTH"] for line in listed)
    peers = site.server.pacs("ae", "list").stdout
    assert any(
        line.startswith("NORTH_MOD") and line.endswith("store for north")
        for line in peers.splitlines()
    ), peers
    refused = site.server.pacs(
        "ae", "add", "X", "127.0.0.1", "104", "--facility", "nope", check=False
    )
    assert refused.returncode == 2
    assert "unknown facility nope" in refused.stdout + refused.stderr
    own = site.server.pacs("facility", "add", "west", "--ae-title", "PACS", check=False)
    assert own.returncode == 2
    taken = site.server.pacs("facility", "add", "west", "--ae-title", "NORTH", check=False)
    assert taken.returncode == 2
    assert "already belongs to facility north" in taken.stdout + taken.stderr
