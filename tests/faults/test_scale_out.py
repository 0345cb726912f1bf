"""Scale-out on one machine as on many: two `pacs serve` nodes and two `pacs worker`
processes, each with its own PACS_HOME, on one PostgreSQL database and one S3 bucket, give the
results one process gives: each study stored once, one job and one AI result SR per stable
study, each webhook event delivered once per subscription and in order per study, the change
feed complete (the long version with figures: `bench/scaleout.py`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.faults.site import (
    STUDY_INSTANCES,
    WEBHOOK_ENV,
    Sender,
    Site,
    in_order_per_study,
    pacs_send,
    running_site,
    send_at_once,
    storescu_send,
    write_studies,
)
from tests.pacs.test_dimse_server import stored
from tests.pacs.test_webhooks import Receiver

pytestmark = pytest.mark.slow

SEED = 29


def test_two_nodes_and_two_workers_give_the_results_of_one(tmp_path: Path) -> None:
    folders = write_studies(tmp_path / "studies", 4, SEED)
    files = [sorted(folder.glob("*.dcm")) for folder in folders]
    split = files[3]
    receiver = Receiver("scale-out-webhook-secret").start()

    def make(postgres: Any, s3: Any) -> Site:
        return Site(
            tmp_path / "site", postgres, s3, nodes=2, workers=2, receivers=1, settings=WEBHOOK_ENV
        )

    try:
        with running_site(make) as site:
            a, b = site.nodes
            subscription = site.subscribe(receiver.url, receiver.secret)
            # A token node A's secret signed is node B's too (PACS_JWT_SECRET_FILE).
            with b.client("admin", facilities=("*",)) as api:
                assert [w["id"] for w in api.get("/api/v1/webhooks").json()] == [subscription]
            sends: list[tuple[Sender, int, list[Path]]] = [
                (storescu_send, a.port, files[0]),
                (pacs_send, b.port, files[1]),
                (storescu_send, b.port, files[2]),
                # One study through both nodes at once, half its instances each.
                (pacs_send, a.port, split[0::2]),
                (storescu_send, b.port, split[1::2]),
            ]
            acknowledged, first_failures = send_at_once(sends)
            assert acknowledged == {path for study in files for path in study}
            site.settle(timeout=240)
            tally = site.verify(folders)
            expected = site.wait_delivered(subscription, 60)
            rows = stored(a, site.database_url)
            # Stopping the nodes ends their dispatchers' deliveries in flight: none after this.
            for node in site.nodes:
                node.stop()
            received = list(receiver.received)
            by_node = site.deliveries_by_node(receiver.url)
    finally:
        receiver.stop()

    per_study = Counter(
        str(r["study_instance_uid"]) for r in rows.values() if r["modality"] == "CT"
    )
    uids = {
        str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID) for study in files
    }
    assert per_study == dict.fromkeys(uids, STUDY_INSTANCES)
    assert len({r["series_fk"] for r in rows.values() if r["modality"] == "CT"}) == len(uids)
    assert tally.jobs == tally.ai_runs == len(uids) and tally.reanalysed == 0
    keys = Counter(event["idempotency_key"] for event in received)
    assert receiver.bad_signatures == 0  # every node opened the secret node A sealed
    assert set(keys) == expected and max(keys.values()) == 1, keys.most_common(3)
    assert in_order_per_study(received)
    assert sum(by_node.values()) == len(received)  # each POST once, by one node or the other
    # Which worker ran which job, which node delivered which events: both, most often; the
    # invariants hold either way.
    report = {"jobs": tally.jobs_by_worker, "deliveries": by_node, "resent": first_failures}
    print(json.dumps(report))
