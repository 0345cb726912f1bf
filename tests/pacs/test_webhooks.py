"""Change feed reads and webhooks: signed, ordered per study, retried until delivered."""

from __future__ import annotations

import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import select

from pacs.changefeed import read_changes, read_visible_changes
from pacs.egress import EgressPolicy, IPAddress
from pacs.facilities import Scope
from pacs.index import Database, upgrade
from pacs.index.schema import change, webhook_delivery
from pacs.ingest import Archive
from pacs.secretbox import SecretBox
from pacs.sharing import share_study
from pacs.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Dispatcher,
    InvalidSubscription,
    add_subscription,
    fill_outbox,
    list_subscriptions,
    remove_subscription,
    sign,
)
from tests.conftest import database_url, make_archive
from tests.dicom import CT_SMALL, MR_SMALL
from tests.servers import PacsServer, free_port, running, storescu, wait_for
from tests.studies import Study, store_study

BOX = SecretBox(b"k" * 32)  # the key the subscriptions of the in-process tests are sealed with


class Receiver:
    """A loopback webhook endpoint that checks signatures, answering after *delay* seconds;
    can be stopped and restarted."""

    def __init__(
        self,
        secret: str,
        port: int | None = None,
        tls: ssl.SSLContext | None = None,
        delay: float = 0.0,
    ) -> None:
        self.secret, self.port, self.tls, self.delay = secret, port or free_port(), tls, delay
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(outer.delay)
                expected = sign(outer.secret, self.headers[TIMESTAMP_HEADER], body)
                if self.headers[SIGNATURE_HEADER] != expected:
                    outer.bad_signatures += 1
                    self.send_response(401)
                else:
                    event = json.loads(body)
                    event["idempotency_key"] = self.headers["Idempotency-Key"]
                    event["host"] = self.headers["Host"]
                    outer.received.append(event)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_read_changes_waits_for_a_gap_to_settle(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    db = Database(database_url(kind, tmp_path, request))
    upgrade(db)
    now = datetime.now(UTC)
    with db.write() as conn:
        for seq in (1, 2, 4):  # 3: a transaction that has not committed (or never will)
            conn.execute(
                change.insert().values(
                    seq=seq, created_at=now, kind="study.stable", study_instance_uid="1.2.3"
                )
            )
    with db.read() as conn:
        assert [c.seq for c in read_changes(conn, 0, 10, timedelta(seconds=5), now)] == [1, 2]
        assert [c.seq for c in read_changes(conn, 2, 10, timedelta(seconds=5), now)] == []
        later = now + timedelta(seconds=6)  # nothing filled it: it was a rollback
        assert [c.seq for c in read_changes(conn, 2, 10, timedelta(seconds=5), later)] == [4]
    db.dispose()


def test_subscriptions_are_validated(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade(db)
    with pytest.raises(InvalidSubscription, match="unknown event"):
        add_subscription(db, "http://127.0.0.1/x", ["study.exploded"], box=BOX)
    with pytest.raises(InvalidSubscription, match="not an http"):
        add_subscription(db, "ftp://x", ["study.stable"], box=BOX)
    with pytest.raises(InvalidSubscription, match=r"refused: 127\.0\.0\.1 is loopback"):
        add_subscription(db, "http://127.0.0.1/x", ["study.stable"], egress=EgressPolicy(), box=BOX)
    db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PacsServer]:
    """On SQLite and on PostgreSQL (which `pacs serve` does not migrate by itself)."""
    url = database_url(request.param, tmp_path, request)
    db = Database(url)
    upgrade(db)
    db.dispose()
    env = {
        "PACS_DATABASE_URL": url,
        "PACS_STABLE_AGE": "1",
        "PACS_WEBHOOK_BACKOFF": "0.2",
        "PACS_WEBHOOK_MAX_BACKOFF": "1",
        "PACS_CHANGE_SETTLE": "1",
        "PACS_WEBHOOK_ALLOW": '["127.0.0.1"]',  # the loopback receivers of these tests
    }
    with running(PacsServer(tmp_path / "home", env)) as pacs:
        yield pacs


def test_events_are_signed_ordered_and_redelivered_after_an_outage(server: PacsServer) -> None:
    admin = {"Authorization": f"Bearer {server.token('admin', facilities=('*',))}"}
    forbidden = httpx.post(
        f"{server.url}/api/v1/webhooks",
        json={"url": "http://127.0.0.1:1/", "events": ["study.stable"]},
        headers={"Authorization": f"Bearer {server.token('emr')}"},
    )
    assert forbidden.status_code == 403
    invalid = httpx.post(
        f"{server.url}/api/v1/webhooks", json={"url": "http://x/", "events": ["x"]}, headers=admin
    )
    assert invalid.status_code == 400
    # An allow-list admits only what it lists, and never the archive's own ports.
    for url, reason in [
        ("http://10.0.0.1/", "10.0.0.1 is not in PACS_WEBHOOK_ALLOW"),
        (f"http://127.0.0.1:{server.http_port}/", f"own port {server.http_port}"),
        (f"http://127.0.0.1:{server.port}/", f"own port {server.port}"),
    ]:
        refused = httpx.post(
            f"{server.url}/api/v1/webhooks",
            json={"url": url, "events": ["study.stable"]},
            headers=admin,
        )
        assert refused.status_code == 400 and reason in refused.json()["detail"], refused.text
    refused_cli = server.pacs("webhook", "add", "http://169.254.169.254/latest/", check=False)
    assert refused_cli.returncode == 2
    assert "169.254.169.254 is a cloud metadata address" in " ".join(refused_cli.stderr.split())
    created = httpx.post(
        f"{server.url}/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/", "events": ["instance.stored", "study.stable"]},
        headers=admin,
    )
    assert created.status_code == 201 and created.json()["secret"]
    # The CLI makes the real one (the API-made one points nowhere and must not hold others up).
    receiver = Receiver("s3cr3t-key-for-tests").start()
    added = json.loads(
        server.pacs(
            "webhook",
            "add",
            receiver.url,
            "--events",
            "instance.stored,study.stable",
            "--secret",
            receiver.secret,
        ).stdout
    )
    assert added["events"] == ["instance.stored", "study.stable"]

    ct = pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    storescu(server, CT_SMALL)
    wait_for(
        lambda: [e["event"] for e in receiver.received] == ["instance.stored", "study.stable"],
        timeout=30,
        what="both events of the first study",
    )
    assert receiver.bad_signatures == 0
    assert {e["StudyInstanceUID"] for e in receiver.received} == {str(ct.StudyInstanceUID)}

    # The endpoint goes down; the archive keeps taking images; events wait in the outbox.
    receiver.stop()
    mr = pydicom.dcmread(MR_SMALL, stop_before_pixels=True)
    storescu(server, MR_SMALL)
    reader = {"Authorization": f"Bearer {server.token('radiologist')}"}
    wait_for(
        lambda: (
            "study.stable"
            in [
                c["kind"]
                for c in httpx.get(f"{server.url}/api/v1/changes", headers=reader).json()["changes"]
                if c["StudyInstanceUID"] == str(mr.StudyInstanceUID)
            ]
        ),
        timeout=30,
        what="the second study to become stable",
    )
    restarted = Receiver(receiver.secret, receiver.port).start()
    try:
        wait_for(
            lambda: (
                [
                    e["event"]
                    for e in restarted.received
                    if e["StudyInstanceUID"] == str(mr.StudyInstanceUID)
                ]
                == ["instance.stored", "study.stable"]
            ),
            timeout=30,
            what="the held events after the endpoint came back",
        )
    finally:
        restarted.stop()
    assert restarted.bad_signatures == 0
    keys = [e["idempotency_key"] for e in receiver.received + restarted.received]
    assert len(keys) == len(set(keys))  # each event once here (at least once in general)

    # The change feed: everything in order, each once; polling from "last" gives nothing new.
    feed = httpx.get(f"{server.url}/api/v1/changes", params={"since": 0}, headers=reader).json()
    seqs = [c["seq"] for c in feed["changes"]]
    assert seqs == sorted(seqs) and feed["last"] == seqs[-1]
    again = httpx.get(
        f"{server.url}/api/v1/changes", params={"since": feed["last"]}, headers=reader
    )
    assert again.json() == {"changes": [], "last": feed["last"]}
    listed = httpx.get(f"{server.url}/api/v1/webhooks", headers=admin).json()
    assert len(listed) == 2 and all("secret" not in w for w in listed)
    assert (
        httpx.delete(
            f"{server.url}/api/v1/webhooks/{created.json()['id']}", headers=admin
        ).status_code
        == 204
    )


class Redirector:
    """A loopback endpoint that answers every POST with 302 to *location*, counting them."""

    def __init__(self, location: str) -> None:
        outer = self
        self.posts = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    upgrade(db)
    yield db
    db.dispose()


def _change(db: Database, seq: int, study: str) -> None:
    with db.write() as conn:
        conn.execute(
            change.insert().values(
                seq=seq, created_at=datetime.now(UTC), kind="study.stable", study_instance_uid=study
            )
        )


def _close(dispatcher: Dispatcher) -> None:
    """Release what a dispatcher driven by run_once (its thread never started) holds."""
    dispatcher.pool.shutdown(wait=True)
    dispatcher.client.close()


def _deliveries(db: Database) -> list[Any]:
    with db.read() as conn:
        return list(conn.execute(select(webhook_delivery).order_by(webhook_delivery.c.id)))


def test_a_redirect_is_not_followed_and_is_retried(outbox: Database) -> None:
    target = Receiver("secret").start()  # where the redirect points: must never be reached
    redirector = Redirector(target.url)
    loopback = EgressPolicy.parse(["127.0.0.1"])
    add_subscription(outbox, redirector.url, ["study.stable"], "secret", True, loopback, box=BOX)
    _change(outbox, 1, "1.2.3")
    dispatcher = Dispatcher(
        outbox, backoff=timedelta(0), settle=timedelta(0), egress=loopback, box=BOX
    )
    try:
        assert dispatcher.run_once() == 1
        [row] = _deliveries(outbox)
        assert (row.status, row.attempts) == ("pending", 1)
        assert row.last_error == "HTTP 302 (redirects are not followed)"
        assert dispatcher.run_once() == 1  # a failure like any other: tried again
        [row] = _deliveries(outbox)
        assert (row.status, row.attempts, redirector.posts) == ("pending", 2, 2)
        assert target.received == []
    finally:
        _close(dispatcher)
        redirector.stop()
        target.stop()


def test_each_delivery_checks_the_address_again_and_goes_there(outbox: Database) -> None:
    receiver = Receiver("secret").start()
    # hook.test is in no DNS: the request reaches the receiver only by the address checked.
    answers = {"hook.test": ["127.0.0.1"]}

    def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in answers[host]]

    policy = EgressPolicy.parse(["127.0.0.0/8"], resolver=resolver)
    url = f"http://hook.test:{receiver.port}/hook"
    add_subscription(outbox, url, ["study.stable"], "secret", True, policy, box=BOX)
    dispatcher = Dispatcher(
        outbox, backoff=timedelta(0), settle=timedelta(0), egress=policy, box=BOX
    )
    try:
        _change(outbox, 1, "1.2.3")
        assert dispatcher.run_once() == 1
        assert [(e["seq"], e["host"]) for e in receiver.received] == [
            (1, f"hook.test:{receiver.port}")
        ]

        # The name now points at the metadata service (DNS rebinding): nothing is sent.
        answers["hook.test"] = ["127.0.0.1", "169.254.169.254"]
        _change(outbox, 2, "1.2.3")
        assert dispatcher.run_once() == 1
        row = _deliveries(outbox)[-1]
        assert (row.status, row.attempts) == ("pending", 1)
        assert row.last_error == (
            "refused by the egress policy: hook.test resolves to 169.254.169.254, "
            "which is a cloud metadata address: never allowed"
        )
        assert len(receiver.received) == 1

        answers["hook.test"] = ["127.0.0.1"]  # back to normal: the held event goes out
        assert dispatcher.run_once() == 1
        assert [e["seq"] for e in receiver.received] == [1, 2]
        assert [r.status for r in _deliveries(outbox)] == ["delivered", "delivered"]
    finally:
        _close(dispatcher)
        receiver.stop()


def _tls_files(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) PEM files; the server's is for *name*."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, signer: Any
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if issuer is None:
            builder = builder.add_extension(x509.BasicConstraints(True, None), critical=True)
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            ).add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = certificate("Test webhook CA", ca_key, None, ca_key)
    server = certificate(name, server_key, ca.subject, ca_key)
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_https_goes_to_the_checked_address_and_verifies_the_name(
    outbox: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = _tls_files(tmp_path, "hook.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    receiver = Receiver("secret", tls=context).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the dispatcher trusts the test's CA

    def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]  # hook.test, in no DNS

    policy = EgressPolicy.parse(["127.0.0.1"], resolver=resolver)
    by_name = f"https://hook.test:{receiver.port}/hook"
    by_address = receiver.url  # https://127.0.0.1:port: the certificate does not name it
    for url in (by_name, by_address):
        add_subscription(outbox, url, ["study.stable"], "secret", True, policy, box=BOX)
    dispatcher = Dispatcher(
        outbox, backoff=timedelta(0), settle=timedelta(0), egress=policy, box=BOX
    )
    try:
        _change(outbox, 1, "1.2.3")
        assert dispatcher.run_once() == 2
        assert [(e["seq"], e["host"]) for e in receiver.received] == [
            (1, f"hook.test:{receiver.port}")
        ]
        refused = [r for r in _deliveries(outbox) if r.status == "pending"]
        assert len(refused) == 1 and "CERTIFICATE_VERIFY_FAILED" in refused[0].last_error
    finally:
        _close(dispatcher)
        receiver.stop()


def _facility_archive(tmp_path: Path) -> Archive:
    return make_archive(f"sqlite:///{tmp_path / 'index.db'}", f"file://{tmp_path / 'storage'}")


def _delivered_studies(db: Database, subscription_id: int) -> set[str]:
    with db.read() as conn:
        rows = conn.execute(
            select(webhook_delivery.c.study_instance_uid).where(
                webhook_delivery.c.webhook_fk == subscription_id
            )
        )
        return set(rows.scalars())


def test_a_subscription_is_sent_only_its_facility_s_studies(tmp_path: Path) -> None:
    archive = _facility_archive(tmp_path)
    db, loopback = archive.db, EgressPolicy.parse(["127.0.0.1"])
    north = Study("N^ONE", "PN", "20240101", facility="north")
    south = Study("S^ONE", "PS", "20240101", facility="south")
    referred = Study("S^TWO", "PR", "20240101", facility="south")
    for study in (north, south, referred):
        store_study(archive, study)
    with db.write() as conn:
        share_study(conn, Scope.everything(), referred.StudyInstanceUID, "north", "test")
    url = "http://127.0.0.1:9/"
    subs = {
        name: add_subscription(
            db, url, ["instance.stored"], None, True, loopback, box=BOX, facility=facility
        ).id
        for name, facility in [("north", "north"), ("south", "south"), ("every", None)]
    }
    with pytest.raises(InvalidSubscription, match="no facility 'west'"):
        add_subscription(db, url, ["instance.stored"], egress=loopback, box=BOX, facility="west")
    fill_outbox(db, settle=timedelta(0))
    uids = {s: s.StudyInstanceUID for s in (north, south, referred)}
    assert _delivered_studies(db, subs["north"]) == {uids[north], uids[referred]}
    assert _delivered_studies(db, subs["south"]) == {uids[south], uids[referred]}
    assert _delivered_studies(db, subs["every"]) == set(uids.values())
    # A later study of south's is not north's; north's cursor moves past it all the same.
    later = Study("S^THREE", "PL", "20240101", facility="south")
    store_study(archive, later)
    fill_outbox(db, settle=timedelta(0))
    assert later.StudyInstanceUID not in _delivered_studies(db, subs["north"])
    assert later.StudyInstanceUID in _delivered_studies(db, subs["south"])
    with db.read() as conn:
        last = conn.execute(select(change.c.seq).order_by(change.c.seq.desc())).scalars().first()
        listed = {s.id: s for s in list_subscriptions(conn, Scope.everything())}
        assert listed[subs["north"]].cursor_seq == last
        # Each facility lists its own subscriptions; only a global scope sees the global one.
        assert [s.id for s in list_subscriptions(conn, Scope.of(["north"]))] == [subs["north"]]
        assert len(list_subscriptions(conn, Scope.of(["north", "south"]))) == 2
    assert not remove_subscription(db, Scope.of(["south"]), subs["north"])
    assert not remove_subscription(db, Scope.of(["south"]), subs["every"])
    assert remove_subscription(db, Scope.of(["north"]), subs["north"])
    db.dispose()


def test_a_facility_reads_its_changes_and_its_cursor_moves_past_others(tmp_path: Path) -> None:
    archive = _facility_archive(tmp_path)
    db = archive.db
    north = Study("N^ONE", "PN", "20240101", facility="north")
    south = [Study(f"S^{n}", f"PS{n}", "20240101", facility="south") for n in range(3)]
    for study in (north, *south):
        store_study(archive, study)
    settle, scope = timedelta(0), Scope.of(["north"])
    with db.read() as conn:
        everything = read_changes(conn, 0, 100, settle)
        page = read_visible_changes(conn, scope, 0, 100, settle)
        assert [c.StudyInstanceUID for c in page.changes] == [north.StudyInstanceUID]
        assert page.last == everything[-1].seq
        # A page of south's changes only: nothing for north, and the cursor still advances.
        tail = read_visible_changes(conn, scope, everything[0].seq, 2, settle)
        assert (tail.changes, tail.last) == ([], everything[2].seq)
        assert read_visible_changes(conn, scope, page.last, 100, settle).last == page.last
        assert read_visible_changes(conn, Scope.everything(), 0, 100, settle).changes == everything
    with db.write() as conn:
        share_study(conn, Scope.everything(), south[1].StudyInstanceUID, "north", "test")
    with db.read() as conn:
        shared = read_visible_changes(conn, scope, 0, 100, settle).changes
    assert [c.StudyInstanceUID for c in shared] == [
        north.StudyInstanceUID,
        south[1].StudyInstanceUID,
    ]
    db.dispose()
