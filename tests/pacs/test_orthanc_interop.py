"""Orthanc (Debian's packages) and dcmtk's storescp as real peers: our C-MOVE stores a study in
Orthanc and in storescp, Orthanc C-STOREs to us, and Orthanc's DICOMweb client lists and
retrieves a study from our DICOMweb API. All run in a network namespace with only loopback
(neither Orthanc 1.10 nor storescp can bind to 127.0.0.1 alone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.dicom import LIDC_0001, dicom_files
from tests.pacs.test_dimse_server import stored
from tests.servers import DATA, NetworkNamespace, PacsServer, dcmtk, stop

ORTHANC_DICOM, ORTHANC_HTTP, PACS_PORT, PACS_HTTP, STORESCP = 4242, 8042, 11112, 8000, 11113
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class Peers:
    def __init__(self, namespace: NetworkNamespace, pacs: PacsServer, received: Path) -> None:
        self.namespace = namespace
        self.pacs = pacs
        self.received = received  # where storescp writes what it gets

    def orthanc(self, method: str, path: str, body: str | bytes = b"") -> object:
        """Orthanc's REST API, called from inside the namespace."""
        script = (
            "import sys, urllib.request; "
            f"r = urllib.request.Request('http://127.0.0.1:{ORTHANC_HTTP}{path}', "
            f"data=sys.stdin.buffer.read() or None, method='{method}'); "
            "sys.stdout.write(urllib.request.urlopen(r, timeout=30).read().decode())"
        )
        data = body.encode() if isinstance(body, str) else body
        result = subprocess.run(
            self.namespace.command(sys.executable, "-c", script),
            input=data,
            capture_output=True,
            check=True,
            timeout=60,
        )
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    home = tmp_path_factory.mktemp("orthanc")
    namespace = NetworkNamespace()
    env = {"PACS_DICOM_PORT": str(PACS_PORT), "PACS_HTTP_PORT": str(PACS_HTTP)}
    pacs = PacsServer(home / "pacs", env)
    pacs.port, pacs.http_port = PACS_PORT, PACS_HTTP
    pacs.home.mkdir()
    token = pacs.token("radiologist")  # what an administrator gives Orthanc
    config = {
        "Name": "interop",
        "StorageDirectory": str(home / "orthanc-storage"),
        "IndexDirectory": str(home / "orthanc-index"),
        "DicomAet": "ORTHANC",
        "DicomPort": ORTHANC_DICOM,
        "HttpPort": ORTHANC_HTTP,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": {"PACS": ["PACS", "127.0.0.1", PACS_PORT]},
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {
            "Enable": True,
            "Servers": {
                "pacs": {
                    "Url": f"http://127.0.0.1:{PACS_HTTP}/dicom-web/",
                    "HttpHeaders": {"Authorization": f"Bearer {token}"},
                }
            },
        },
    }
    (home / "orthanc.json").write_text(json.dumps(config))
    env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk and Orthanc stall on Nagle otherwise
    with (home / "orthanc.log").open("wb") as log:
        orthanc = subprocess.Popen(
            namespace.command("/usr/sbin/Orthanc", str(home / "orthanc.json")),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    with pacs.log.open("wb") as log:
        pacs.process = subprocess.Popen(
            namespace.command(sys.executable, "-m", "pacs.cli", "serve"),
            env=pacs.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    received = home / "storescp"
    received.mkdir()
    storescp = subprocess.Popen(
        namespace.command(
            dcmtk("storescp"), "-aet", "STORESCP", "-od", str(received), "+xa", str(STORESCP)
        ),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        namespace.wait_for_port(STORESCP, storescp)
        namespace.wait_for_port(ORTHANC_DICOM, orthanc)
        namespace.wait_for_port(ORTHANC_HTTP, orthanc)
        namespace.wait_for_port(PACS_PORT, pacs.process)
        namespace.wait_for_port(PACS_HTTP, pacs.process)
        pacs.pacs("ae", "add", "ORTHANC", "127.0.0.1", str(ORTHANC_DICOM))
        pacs.pacs("ae", "add", "STORESCP", "127.0.0.1", str(STORESCP))
        yield Peers(namespace, pacs, received)
    finally:
        pacs.stop()
        stop(orthanc)
        stop(storescp)
        namespace.close()


def test_our_c_move_stores_a_study_in_orthanc(peers: Peers) -> None:
    files = dicom_files(LIDC_0001)[:8]
    peers.namespace.run(
        sys.executable, "-m", "pacs.cli", "send", *map(str, files), "--port", str(PACS_PORT)
    )
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    peers.namespace.run(
        dcmtk("movescu"),
        *("-S", "-aec", "PACS", "-aem", "ORTHANC"),
        *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"),
        *("127.0.0.1", str(PACS_PORT)),
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    found = peers.orthanc(
        "POST",
        "/tools/find",
        json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": study}, "Expand": True}),
    )
    assert isinstance(found, list)
    sop_uids = {item["MainDicomTags"]["SOPInstanceUID"] for item in found}
    assert sop_uids == {pydicom.dcmread(p).SOPInstanceUID for p in files}


def test_orthanc_c_stores_to_us(peers: Peers) -> None:
    mr = DATA / "edge-cases" / "MR_small.dcm"
    uploaded = peers.orthanc("POST", "/instances", mr.read_bytes())  # Orthanc's REST upload
    assert isinstance(uploaded, dict)
    orthanc_id = uploaded["ID"]
    result = peers.orthanc("POST", "/modalities/PACS/store", json.dumps([orthanc_id]))
    assert isinstance(result, dict)
    assert result.get("FailedInstancesCount", 0) == 0
    sop_uid = pydicom.dcmread(mr).SOPInstanceUID
    row = stored(peers.pacs)[sop_uid]
    assert row["calling_ae"] == "ORTHANC"
    assert Path(peers.pacs.home / "storage" / str(row["blob_key"])).is_file()


def test_orthanc_dicomweb_client_lists_and_retrieves_from_us(peers: Peers) -> None:
    mr = DATA / "edge-cases" / "MR_small_jp2klossless.dcm"  # compressed, like many modalities
    # The instance Orthanc stored to us (test_orthanc_c_stores_to_us) in another encoding: new
    # bytes for a stored SOP instance, which only a sender with the replace permission may send.
    peers.pacs.pacs("ae", "add", "PACS_SCU", "127.0.0.1", "104", "--permit", "store,replace")
    peers.namespace.run(sys.executable, "-m", "pacs.cli", "send", str(mr), "--port", str(PACS_PORT))
    study = pydicom.dcmread(mr).StudyInstanceUID
    listed = peers.orthanc("POST", "/dicom-web/servers/pacs/get", json.dumps({"Uri": "/studies"}))
    assert isinstance(listed, list)
    assert study in {item["0020000D"]["Value"][0] for item in listed}
    peers.orthanc(
        "POST",
        "/dicom-web/servers/pacs/retrieve",
        json.dumps({"Resources": [{"Study": study}]}),
    )
    found = peers.orthanc(
        "POST",
        "/tools/find",
        json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": study}}),
    )
    assert isinstance(found, list)
    assert len(found) == 1


def test_movescu_moves_to_dcmtk_storescp(peers: Peers) -> None:
    files = dicom_files(LIDC_0001)[8:12]
    peers.namespace.run(
        sys.executable, "-m", "pacs.cli", "send", *map(str, files), "--port", str(PACS_PORT)
    )
    first = pydicom.dcmread(files[0])
    peers.namespace.run(
        dcmtk("movescu"),
        *("-S", "-aec", "PACS", "-aem", "STORESCP"),
        *("-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={first.StudyInstanceUID}"),
        *("-k", f"SeriesInstanceUID={first.SeriesInstanceUID}"),
        *("127.0.0.1", str(PACS_PORT)),
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    received = {pydicom.dcmread(p).SOPInstanceUID for p in peers.received.iterdir()}
    # The series holds these four and the eight an earlier test sent (when it ran first).
    assert {pydicom.dcmread(p).SOPInstanceUID for p in files} <= received
    assert received == {
        uid
        for uid, row in stored(peers.pacs).items()
        if row["series_instance_uid"] == first.SeriesInstanceUID
    }


def test_pacs_send_stores_into_storescp_and_orthanc(peers: Peers) -> None:
    # `pacs send` writes its C-STOREs on the socket itself (pacs.dimse.direct): against two
    # peers that are not pynetdicom, in five transfer syntaxes, every data set arrives as sent.
    files = [
        DATA / "edge-cases" / name
        for name in ("MR_small_bigendian.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm")
    ] + [DATA / "edge-cases" / "CT_small.dcm", dicom_files(LIDC_0001)[12]]
    sent = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in files}
    for port, aet in ((STORESCP, "STORESCP"), (ORTHANC_DICOM, "ORTHANC")):
        result = peers.namespace.run(
            sys.executable, "-m", "pacs.cli", "send", *map(str, files),
            *("--port", str(port), "--called-aet", aet),
        )  # fmt: skip
        assert f"sent {len(files)}" in result.stdout, result.stdout
    received = {
        ds.SOPInstanceUID: ds
        for ds in (pydicom.dcmread(p) for p in peers.received.iterdir())
        if ds.SOPInstanceUID in sent
    }
    assert received.keys() == sent.keys()
    for uid, original in sent.items():
        got = received[uid]
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert got.PixelData == original.PixelData
    for uid in sent:
        query = {"Level": "Instance", "Query": {"SOPInstanceUID": uid}}
        found = peers.orthanc("POST", "/tools/find", json.dumps(query))
        assert isinstance(found, list) and len(found) == 1, uid
