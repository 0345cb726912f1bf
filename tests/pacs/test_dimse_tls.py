"""DICOM over TLS (PS3.15 B.1) against a real `pacs serve`: dcmtk and pynetdicom peers with
certificates made here (a CA, the server's, a client's, an expired client's, and another CA's),
mutual TLS refusing every client it should, the plain port beside TLS or closed, and C-MOVE
to a TLS destination (a second archive listening on TLS only)."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from pacs.dimse import status
from pacs.dimse.find import STUDY_ROOT_FIND, STUDY_ROOT_MOVE
from pacs.dimse.tls import client_context, server_context
from pacs.errors import TLSConfigError
from pacs.settings import PacsSettings
from tests.dicom import LIDC_0001, dicom_files, store_statuses
from tests.pacs.test_dimse_server import NODELAY, stored
from tests.servers import PacsServer, dcmtk, free_port

CT, OTHER_CT = dicom_files(LIDC_0001)[:2]
NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


class CA:
    """A certificate authority issuing the test's certificates."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(self.name, self.key.public_key(), NOW - DAY, NOW + DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = folder / f"{name}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(
        self,
        subject: x509.Name,
        public_key: rsa.RSAPublicKey,
        not_before: datetime.datetime,
        not_after: datetime.datetime,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
        )

    def issue(self, name: str, expired: bool = False) -> Issued:
        """A leaf certificate for 127.0.0.1/localhost, for servers and clients alike (our
        server's certificate is also its client certificate on C-MOVE sub-associations)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        valid = (NOW - 3 * DAY, NOW - 2 * DAY) if expired else (NOW - DAY, NOW + DAY)
        addresses = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = (
            self._builder(subject, key.public_key(), *valid)
            .add_extension(x509.SubjectAlternativeName(addresses), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        issued = Issued(self.folder / f"{name}.pem", self.folder / f"{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


@dataclass(frozen=True)
class PKI:
    ca: CA
    server: Issued
    client: Issued
    expired: Issued
    stranger: Issued  # issued by another CA


@dataclass(frozen=True)
class Archives:
    """The archive requiring client certificates (plain port open beside TLS), and the
    C-MOVE destination DEST, on TLS only, asking for no client certificate."""

    mutual: PacsServer
    mutual_tls_port: int
    dest: PacsServer
    dest_plain_port: int


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    ca = CA(folder, "test-ca")
    other = CA(folder, "other-ca")
    return PKI(
        ca,
        ca.issue("server"),
        ca.issue("client"),
        ca.issue("expired", expired=True),
        other.issue("stranger"),
    )


def tls_env(pki: PKI, port: int) -> dict[str, str]:
    return {
        "PACS_DICOM_TLS_PORT": str(port),
        "PACS_DICOM_TLS_CERT": str(pki.server.cert),
        "PACS_DICOM_TLS_KEY": str(pki.server.key),
    }


@pytest.fixture(scope="module")
def archives(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archives]:
    home = tmp_path_factory.mktemp("tls")
    mutual_tls_port, dest_tls_port = free_port(), free_port()
    mutual = PacsServer(
        home / "mutual",
        {
            **tls_env(pki, mutual_tls_port),
            "PACS_DICOM_TLS_CA": str(pki.ca.path),
            "PACS_DICOM_TLS_REQUIRE_CLIENT_CERT": "true",
        },
    ).start()
    dest = PacsServer(
        home / "dest",
        {**tls_env(pki, dest_tls_port), "PACS_AE_TITLE": "DEST", "PACS_DICOM_PLAIN": "false"},
    )
    dest_plain_port, dest.port = dest.port, dest_tls_port  # start() waits for dest.port
    dest.start()
    assert store_statuses(mutual.port, [CT]) == {CT.name: status.SUCCESS}
    mutual.pacs("ae", "add", "DEST", "127.0.0.1", str(dest_tls_port), "--tls")
    yield Archives(mutual, mutual_tls_port, dest, dest_plain_port)
    mutual.stop()
    dest.stop()


def tls_command(pki: PKI, client: Issued | None = None) -> list[str]:
    """dcmtk's TLS options: our client certificate (or none), the server's verified by CA."""
    identity = ["+tls", str(client.key), str(client.cert)] if client else ["+tla"]
    return [*identity, "+cf", str(pki.ca.path)]


def test_dcmtk_echo_and_store_over_tls(archives: Archives, pki: PKI) -> None:
    port = str(archives.mutual_tls_port)
    subprocess.run(
        [dcmtk("echoscu"), *tls_command(pki, pki.client), "-aec", "PACS", "127.0.0.1", port],
        check=True,
        env=NODELAY,
        timeout=60,
    )
    sent = subprocess.run(
        [
            dcmtk("storescu"),
            *tls_command(pki, pki.client),
            "-aet",
            "CT_SCANNER",
            "-aec",
            "PACS",
            "127.0.0.1",
            port,
            str(OTHER_CT),
        ],
        capture_output=True,
        text=True,
        env=NODELAY,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    uid = pydicom.dcmread(OTHER_CT, stop_before_pixels=True).SOPInstanceUID
    assert uid in stored(archives.mutual)


def client_ssl(pki: PKI, client: Issued | None) -> ssl.SSLContext:
    return client_context(pki.ca.path, *((client.cert, client.key) if client else ()))


def find_study(port: int, context: ssl.SSLContext | None) -> list[str]:
    """The StudyInstanceUIDs a study-level C-FIND answers, over TLS when *context* is given;
    raises AssertionError when the association is not established."""
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(STUDY_ROOT_FIND, ExplicitVRLittleEndian)
    tls_args = None if context is None else (context, "127.0.0.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", tls_args=tls_args)
    if not assoc.is_established:
        # A refused client certificate is told by an alert read after the handshake; the
        # socket's shutdown() then fails, and pynetdicom skips its close() (transport.py
        # _shutdown_socket).
        sock = getattr(assoc.dul.socket, "socket", None)
        if sock is not None:
            sock.close()
        raise AssertionError("association not established")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    try:
        return [
            str(identifier.StudyInstanceUID)
            for reply, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND)
            if reply.Status == status.PENDING and identifier is not None
        ]
    finally:
        assoc.release()


def test_pynetdicom_find_over_tls_and_the_plain_port_beside_it(
    archives: Archives, pki: PKI
) -> None:
    study_uid = str(pydicom.dcmread(CT, stop_before_pixels=True).StudyInstanceUID)
    over_tls = find_study(archives.mutual_tls_port, client_ssl(pki, pki.client))
    assert study_uid in over_tls
    assert find_study(archives.mutual.port, None) == over_tls


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        ("stranger", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        (None, "peer did not return a certificate"),
    ],
)
def test_mutual_tls_refuses_clients_without_a_valid_certificate(
    archives: Archives, pki: PKI, client: str | None, reason: str
) -> None:
    identity = None if client is None else getattr(pki, client)
    with pytest.raises(AssertionError, match="not established"):
        find_study(archives.mutual_tls_port, client_ssl(pki, identity))
    echo = subprocess.run(
        [
            dcmtk("echoscu"),
            *tls_command(pki, identity),
            "-aec",
            "PACS",
            "127.0.0.1",
            str(archives.mutual_tls_port),
        ],
        capture_output=True,
        env=NODELAY,
        timeout=60,
    )
    assert echo.returncode != 0
    log = archives.mutual.log.read_text()
    assert "TLS handshake with 127.0.0.1 failed" in log
    assert reason in log


def test_tls_1_1_is_refused(archives: Archives) -> None:
    with warnings.catch_warnings():
        # Making a TLS 1.1 client is the point; Python deprecates the constant.
        warnings.simplefilter("ignore", DeprecationWarning)
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # Debian's OpenSSL refuses TLS 1.1 otherwise
    with (
        socket.create_connection(("127.0.0.1", archives.mutual_tls_port), 10) as sock,
        pytest.raises(ssl.SSLError, match=r"(?i)protocol version|unsupported protocol"),
    ):
        old.wrap_socket(sock)


def test_tls_only_leaves_the_plain_port_closed(archives: Archives, pki: PKI) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", archives.dest_plain_port), 5).close()
    # No client certificate asked for: the anonymous dcmtk client is let in.
    subprocess.run(
        [
            dcmtk("echoscu"),
            *tls_command(pki),
            "-aec",
            "DEST",
            "127.0.0.1",
            str(archives.dest.port),
        ],
        check=True,
        env=NODELAY,
        timeout=60,
    )


def test_c_move_to_a_tls_destination(archives: Archives, pki: PKI) -> None:
    listed = archives.mutual.pacs("ae", "list").stdout
    assert f"DEST             127.0.0.1:{archives.dest.port} tls " in listed
    ds = pydicom.dcmread(CT, stop_before_pixels=True)
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(STUDY_ROOT_MOVE, ExplicitVRLittleEndian)
    tls_args = (client_ssl(pki, pki.client), "127.0.0.1")
    assoc = ae.associate("127.0.0.1", archives.mutual_tls_port, ae_title="PACS", tls_args=tls_args)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ds.StudyInstanceUID
    try:
        replies = [int(r.Status) for r, _ in assoc.send_c_move(query, "DEST", STUDY_ROOT_MOVE)]
    finally:
        assoc.release()
    assert replies[-1] == status.SUCCESS
    assert ds.SOPInstanceUID in stored(archives.dest)


def test_tls_settings_must_agree() -> None:
    with pytest.raises(ValueError, match="needs PACS_DICOM_TLS_CERT"):
        PacsSettings(dicom_tls_port=2762)
    with pytest.raises(ValueError, match="PACS_DICOM_TLS_CA"):
        PacsSettings(
            dicom_tls_port=2762,
            dicom_tls_cert=Path("c.pem"),
            dicom_tls_key=Path("k.pem"),
            dicom_tls_require_client_cert=True,
        )
    with pytest.raises(ValueError, match="PACS_DICOM_PLAIN=false needs"):
        PacsSettings(dicom_plain=False)
    with pytest.raises(ValueError, match="must differ"):
        PacsSettings(dicom_tls_port=11112, dicom_tls_cert=Path("c"), dicom_tls_key=Path("k"))
    assert PacsSettings().dicom_tls_port is None  # no TLS unless asked for


def test_unloadable_tls_files_are_named(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match=f"certificate or key {tmp_path / 'none.pem'}"):
        server_context(tmp_path / "none.pem", pki.server.key)
    with pytest.raises(TLSConfigError, match="CA bundle"):
        server_context(pki.server.cert, pki.server.key, pki.server.key, require_client_cert=True)
    server = PacsServer(tmp_path / "home", tls_env(pki, free_port()))
    server.env["PACS_DICOM_TLS_KEY"] = str(pki.client.key)  # not the certificate's key
    refused = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "serve"],
        env={**server.env, "COLUMNS": "500"},  # rich wraps at 80 otherwise
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert f"cannot load the TLS certificate or key {pki.server.cert}" in refused.stderr
