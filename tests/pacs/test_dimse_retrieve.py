"""C-MOVE and C-GET against the real server, from dcmtk's movescu/getscu and pynetdicom.

The C-MOVE destination is a second archive (`pacs serve` as AE DEST), registered with
`pacs ae add`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role
from pynetdicom.sop_class import CTImageStorage

from pacs.dimse import status
from pacs.dimse.find import STUDY_ROOT_GET, STUDY_ROOT_MOVE
from tests.dicom import LIDC_0001, derived, dicom_files, store_statuses
from tests.pacs.test_dimse_server import NODELAY, stored
from tests.servers import DATA, PacsServer, dcmtk

JPEG = next((DATA / "transfer-syntaxes").glob("*JPEGProcess1TransferSyntax*"))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PacsServer, PacsServer]]:
    home = tmp_path_factory.mktemp("retrieve")
    source = PacsServer(home / "source").start()
    destination = PacsServer(home / "destination", {"PACS_AE_TITLE": "DEST"}).start()
    files = [*dicom_files(LIDC_0001)[:5], JPEG]
    assert set(store_statuses(source.port, files).values()) == {status.SUCCESS}
    source.pacs("ae", "add", "DEST", "127.0.0.1", str(destination.port))
    yield source, destination
    source.stop()
    destination.stop()


def lidc(index: int = 0) -> Dataset:
    return pydicom.dcmread(dicom_files(LIDC_0001)[index])


def test_ae_registry_from_the_command_line(servers: tuple[PacsServer, PacsServer]) -> None:
    source, destination = servers
    assert json.loads(source.pacs("ae", "list", "--json").stdout) == [
        {
            "ae_title": "DEST",
            "host": "127.0.0.1",
            "port": destination.port,
            "permissions": ["destination", "find", "retrieve", "store"],
            "expected_host": None,
            "tls": False,
            "facilities": [],
        }
    ]
    source.pacs("ae", "add", "OTHER", "127.0.0.1", "104")
    assert source.pacs("ae", "remove", "OTHER").returncode == 0
    assert source.pacs("ae", "remove", "OTHER", check=False).returncode == 1
    bad = source.pacs("ae", "add", "WAY_TOO_LONG_AE_TITLE", "h", "1", check=False)
    assert bad.returncode == 2
    assert "not a valid AE title" in bad.stderr


def test_movescu_moves_a_study_to_a_registered_destination(
    servers: tuple[PacsServer, PacsServer],
) -> None:
    source, destination = servers
    study = lidc().StudyInstanceUID
    subprocess.run(
        [
            dcmtk("movescu"),
            *("-S", "-aec", "PACS", "-aem", "DEST"),
            *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"),
            *("127.0.0.1", str(source.port)),
        ],
        check=True,
        env=NODELAY,
        timeout=120,
    )
    moved = {
        uid: row for uid, row in stored(destination).items() if row["study_instance_uid"] == study
    }
    assert len(moved) == 5
    assert {row["calling_ae"] for row in moved.values()} == {"PACS"}
    for path in dicom_files(LIDC_0001)[:5]:
        sent = pydicom.dcmread(path)
        assert sent.SOPInstanceUID in moved


def test_compressed_instance_moves_in_its_own_transfer_syntax(
    servers: tuple[PacsServer, PacsServer],
) -> None:
    source, destination = servers
    original = pydicom.dcmread(JPEG)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = original.StudyInstanceUID
    identifier.SeriesInstanceUID = original.SeriesInstanceUID
    identifier.SOPInstanceUID = original.SOPInstanceUID
    codes = retrieve(source, identifier, STUDY_ROOT_MOVE, move_to="DEST")
    assert codes[-1] == status.SUCCESS
    row = stored(destination)[original.SOPInstanceUID]
    assert row["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.50"


def test_unknown_destination_is_refused(servers: tuple[PacsServer, PacsServer]) -> None:
    source, _ = servers
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = lidc().StudyInstanceUID
    assert retrieve(source, identifier, STUDY_ROOT_MOVE, move_to="NOBODY") == [
        status.MOVE_DESTINATION_UNKNOWN
    ]


def test_getscu_gets_a_series(servers: tuple[PacsServer, PacsServer], tmp_path: Path) -> None:
    source, _ = servers
    first = lidc()
    subprocess.run(
        [
            dcmtk("getscu"),
            *("-S", "-aec", "PACS", "-od", str(tmp_path)),
            *(
                "-k",
                "QueryRetrieveLevel=SERIES",
                "-k",
                f"StudyInstanceUID={first.StudyInstanceUID}",
            ),
            *("-k", f"SeriesInstanceUID={first.SeriesInstanceUID}"),
            *("127.0.0.1", str(source.port)),
        ],
        check=True,
        env=NODELAY,
        timeout=120,
    )
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in tmp_path.iterdir()}
    assert len(received) == 5
    for path in dicom_files(LIDC_0001)[:5]:
        sent = pydicom.dcmread(path)
        assert received[sent.SOPInstanceUID].PixelData == sent.PixelData


EXPLICIT = next((DATA / "transfer-syntaxes").glob("*LittleEndianExplicit*"))


def explicit_instance(source: PacsServer, tmp_path: Path) -> Dataset:
    """A new CT instance stored in Explicit VR Little Endian."""
    ds = derived(EXPLICIT, SeriesInstanceUID=generate_uid())
    path = tmp_path / "explicit.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert list(store_statuses(source.port, [path]).values()) == [status.SUCCESS]
    assert stored(source)[ds.SOPInstanceUID]["transfer_syntax_uid"] == ExplicitVRLittleEndian
    return ds


def getscu_series(source: PacsServer, ds: Dataset, received: Path, *options: str) -> Dataset:
    """The one instance of *ds*'s series, as dcmtk's getscu (with *options*) receives it."""
    received.mkdir()
    subprocess.run(
        [
            dcmtk("getscu"),
            *options,
            *("-S", "-aec", "PACS", "-od", str(received)),
            *("-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}"),
            *("-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}"),
            *("127.0.0.1", str(source.port)),
        ],
        check=True,
        env=NODELAY,
        timeout=120,
    )
    [path] = received.iterdir()
    return pydicom.dcmread(path)


@pytest.mark.parametrize("preference", [None, "+xe", "+xs"])
def test_getscu_receives_the_stored_transfer_syntax(
    servers: tuple[PacsServer, PacsServer], tmp_path: Path, preference: str | None
) -> None:
    # getscu proposes one context per storage class: the preferred syntax first, then others.
    source, _ = servers
    ds = explicit_instance(source, tmp_path)
    got = getscu_series(source, ds, tmp_path / "received", *([preference] if preference else []))
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert got.PixelData == ds.PixelData


def test_movescu_moves_in_the_stored_transfer_syntax(
    servers: tuple[PacsServer, PacsServer], tmp_path: Path
) -> None:
    source, destination = servers
    ds = explicit_instance(source, tmp_path)
    subprocess.run(
        [
            dcmtk("movescu"),
            *("-S", "-aec", "PACS", "-aem", "DEST"),
            *("-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}"),
            *("-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}"),
            *("127.0.0.1", str(source.port)),
        ],
        check=True,
        env=NODELAY,
        timeout=120,
    )
    row = stored(destination)[ds.SOPInstanceUID]
    assert row["transfer_syntax_uid"] == ExplicitVRLittleEndian


def test_invalid_retrieve_identifier_fails_with_a900(
    servers: tuple[PacsServer, PacsServer],
) -> None:
    source, _ = servers
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"  # not a level of the Study Root model
    identifier.PatientID = "x"
    codes = retrieve(source, identifier, STUDY_ROOT_GET)
    assert codes[-1] == status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS


def retrieve(
    server: PacsServer, identifier: Dataset, model: str, move_to: str | None = None
) -> list[int]:
    """Statuses of a C-MOVE (to *move_to*) or C-GET, through pynetdicom."""
    ae = AE(ae_title="RETRIEVE_SCU")
    ae.add_requested_context(model)
    roles = []
    if move_to is None:
        ae.add_requested_context(CTImageStorage)
        roles = [build_role(CTImageStorage, scp_role=True)]
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS", ext_neg=roles)
    assert assoc.is_established
    try:
        if move_to is None:
            responses = assoc.send_c_get(identifier, model)
        else:
            responses = assoc.send_c_move(identifier, move_to, model)
        return [int(s.Status) for s, _ in responses if "Status" in s]
    finally:
        assoc.release()


def test_getscu_without_compressed_proposals_gets_compressed_instances_decompressed(
    servers: tuple[PacsServer, PacsServer], tmp_path: Path
) -> None:
    """getscu proposes only uncompressed syntaxes by default: a JPEG-stored instance then goes
    decompressed (the same SOP Instance) instead of failing its sub-operation."""
    source, _ = servers
    jpeg = next((DATA / "transfer-syntaxes").glob("*JPEGProcess1TransferSyntax*"))
    ds = derived(jpeg, SeriesInstanceUID=generate_uid())
    path = tmp_path / "jpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert list(store_statuses(source.port, [path]).values()) == [status.SUCCESS]
    got = getscu_series(source, ds, tmp_path / "received")
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert got.pixel_array.shape == ds.pixel_array.shape
