"""Several webhook dispatchers on one outbox (one per `pacs serve` node): each delivery is sent
once, because a claimed delivery is sent before its lease runs out."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from pacs.egress import EgressPolicy
from pacs.index import Database, upgrade
from pacs.webhooks import Dispatcher, add_subscription
from tests.conftest import database_url
from tests.pacs.test_webhooks import BOX, Receiver, _change, _close

EVENTS = 32  # what one dispatcher used to claim at once
LEASE = timedelta(seconds=2)
ANSWER = 0.5  # seconds the subscriber takes per event: well inside the lease


def test_two_dispatchers_send_each_event_once_to_a_slow_subscriber(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = Database(database_url("postgresql", tmp_path, request))
    upgrade(db)
    receiver = Receiver("secret", delay=ANSWER).start()
    loopback = EgressPolicy.parse(["127.0.0.1"])
    add_subscription(db, receiver.url, ["study.stable"], "secret", True, loopback, box=BOX)
    for seq in range(1, EVENTS + 1):  # one study each: none waits for another's event
        _change(db, seq, f"1.2.{seq}")
    dispatchers = [
        Dispatcher(db, settle=timedelta(0), egress=loopback, box=BOX, lease=LEASE) for _ in range(2)
    ]
    done = threading.Event()

    def node(dispatcher: Dispatcher) -> None:
        while not done.is_set():
            dispatcher.run_once()
            if len(receiver.received) >= EVENTS:
                done.set()
            done.wait(0.1)

    threads = [threading.Thread(target=node, args=(d,)) for d in dispatchers]
    try:
        for thread in threads:
            thread.start()
        done.wait(120)  # ends as soon as every event arrived
    finally:
        done.set()
        for thread in threads:
            thread.join()
        for dispatcher in dispatchers:
            _close(dispatcher)
        receiver.stop()
        db.dispose()
    # Before, one dispatcher claimed 32 and sent them 4 at a time: the last ones waited past
    # their lease (8 x 0.5 s > 2 s), the other dispatcher claimed them too, both sent them.
    sent = Counter(event["idempotency_key"] for event in receiver.received)
    assert len(sent) == EVENTS and max(sent.values()) == 1, sent.most_common(3)
