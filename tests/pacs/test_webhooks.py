"""Change feed reads and webhooks: signed, ordered per study, retried until delivered."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from pacs.changefeed import read_changes
from pacs.index import Database, upgrade
from pacs.index.schema import change
from pacs.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    InvalidSubscription,
    add_subscription,
    sign,
)
from tests.dicom import CT_SMALL, MR_SMALL
from tests.servers import PacsServer, free_port, running, storescu, wait_for


class Receiver:
    """A loopback webhook endpoint that checks signatures; can be stopped and restarted."""

    def __init__(self, secret: str, port: int | None = None) -> None:
        self.secret, self.port = secret, port or free_port()
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = sign(outer.secret, self.headers[TIMESTAMP_HEADER], body)
                if self.headers[SIGNATURE_HEADER] != expected:
                    outer.bad_signatures += 1
                    self.send_response(401)
                else:
                    event = json.loads(body)
                    event["idempotency_key"] = self.headers["Idempotency-Key"]
                    outer.received.append(event)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


def test_read_changes_waits_for_a_gap_to_settle(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
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
        add_subscription(db, "http://127.0.0.1/x", ["study.exploded"])
    with pytest.raises(InvalidSubscription, match="not an http"):
        add_subscription(db, "ftp://x", ["study.stable"])
    db.dispose()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PacsServer]:
    env = {
        "PACS_STABLE_AGE": "1",
        "PACS_WEBHOOK_BACKOFF": "0.2",
        "PACS_WEBHOOK_MAX_BACKOFF": "1",
        "PACS_CHANGE_SETTLE": "1",
    }
    with running(PacsServer(tmp_path / "home", env)) as pacs:
        yield pacs


def test_events_are_signed_ordered_and_redelivered_after_an_outage(server: PacsServer) -> None:
    admin = {"Authorization": f"Bearer {server.token('admin')}"}
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
    created = httpx.post(
        f"{server.url}/api/v1/webhooks",
        json={"url": "http://placeholder/", "events": ["instance.stored", "study.stable"]},
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
    reader = {"Authorization": f"Bearer {server.token('emr')}"}
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
