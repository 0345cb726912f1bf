"""Scale-out on one machine, the long version of ``tests/faults/test_scale_out.py``: two
`pacs serve` nodes and two `pacs worker` processes (each its own PACS_HOME) on one PostgreSQL
database and one S3 bucket (moto), with a webhook subscriber on loopback.

Each round sends ``--studies`` fresh CT studies twice, once all through node A and once spread
over both nodes (one study split across them, half its instances each), one dcmtk storescu
association per study, all at once; the site settles (every study stable and analysed) between
the two, and the order of the two alternates by round. Then the site's invariants are checked
(tests.faults.site: every instance byte for byte, `pacs fsck` clean, one job and one SR per
stable study, the change feed complete) and every webhook event must have arrived exactly once
(by idempotency key) and in order per study.

    nice .venv/bin/python bench/scaleout.py --studies 8 --instances 40 --rounds 2

writes ``bench/results/scaleout.json``: instances/s through one node and through both (the same
site, the same run), jobs per worker, webhook deliveries per node, and the latencies from a
study's `study.stable` to its AI result and from a change to its webhook delivery (p50/p90).
On a 2-core machine both nodes share the same cores: read the two-node figure as "no loss from
spreading", not as a speed-up a second machine would give.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select

from bench.machine import save
from pacs.index import Database, as_utc
from pacs.index.schema import ai_run, job, webhook_delivery
from tests.faults.site import (
    WEBHOOK_ENV,
    Sender,
    Site,
    in_order_per_study,
    running_site,
    send_at_once,
    storescu_send,
    write_studies,
)
from tests.pacs.test_webhooks import Receiver
from tests.servers import PostgresServer, S3Server

RESULTS = Path(__file__).resolve().parent / "results" / "scaleout.json"


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p90 of *values* in seconds (None when there are too few)."""
    if len(values) < 2:
        return {"p50_s": None, "p90_s": None}
    deciles = statistics.quantiles(values, n=10)
    return {"p50_s": round(statistics.median(values), 2), "p90_s": round(deciles[8], 2)}


def send_phase(site: Site, folders: list[Path], spread: bool) -> dict[str, Any]:
    """Send *folders* at once, one storescu association each: all to node A, or (*spread*)
    alternately to A and B with the last study split across both. Timed to the last
    acknowledgement; every instance must be acknowledged (what failed is sent again, and
    counted)."""
    a, b = site.nodes
    files = [sorted(folder.glob("*.dcm")) for folder in folders]
    sends: list[tuple[Sender, int, list[Path]]] = []
    for n, study in enumerate(files):
        if spread and n == len(files) - 1:
            sends += [(storescu_send, a.port, study[0::2]), (storescu_send, b.port, study[1::2])]
        else:
            sends.append((storescu_send, (b if spread and n % 2 else a).port, study))
    started = time.monotonic()
    acknowledged, first_failures = send_at_once(sends)
    seconds = time.monotonic() - started
    sent = sum(len(study) for study in files)
    assert len(acknowledged) == sent, f"{sent - len(acknowledged)} instances not acknowledged"
    return {
        "nodes": 2 if spread else 1,
        "instances": sent,
        "seconds": round(seconds, 2),
        "instances_per_s": round(sent / seconds, 1),
        "failed_first_send": first_failures,
    }


def latencies(site: Site, subscription: int) -> dict[str, Any]:
    """From `study.stable` (its job's creation) to the AI result, and from a change to its
    webhook delivery, in seconds."""
    db = Database(site.database_url)
    try:
        with db.read() as conn:
            results = conn.execute(
                select(job.c.created_at, ai_run.c.created_at).join(
                    ai_run, ai_run.c.job_id == job.c.id
                )
            ).all()
            deliveries = conn.execute(
                select(webhook_delivery.c.body, webhook_delivery.c.delivered_at).where(
                    webhook_delivery.c.webhook_fk == subscription
                )
            ).all()
    finally:
        db.dispose()
    to_result = [(as_utc(done) - as_utc(stable)).total_seconds() for stable, done in results]
    to_delivery = [
        (as_utc(delivered) - datetime.fromisoformat(json.loads(body)["created_at"])).total_seconds()
        for body, delivered in deliveries
        if delivered is not None
    ]
    return {
        "stable_to_result": percentiles(to_result),
        "change_to_webhook_delivery": percentiles(to_delivery),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=8, help="studies sent per phase")
    parser.add_argument("--instances", type=int, default=40, help="slices per study (64x64)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--receivers", type=int, default=2, help="PACS_RECEIVERS per node")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    # SIGTERM (from `timeout`, say) unwinds like Ctrl-C: the servers started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    phases: list[dict[str, Any]] = []
    receiver = Receiver("bench-scaleout-webhook-secret").start()
    try:
        with tempfile.TemporaryDirectory(prefix="pacs-scaleout-") as tmp:
            root = Path(tmp)

            def make(postgres: PostgresServer, s3: S3Server) -> Site:
                return Site(
                    root / "site",
                    postgres,
                    s3,
                    nodes=2,
                    workers=2,
                    receivers=args.receivers,
                    settings=WEBHOOK_ENV,
                )

            with running_site(make) as site:
                print(f"site up after {time.monotonic() - started:.0f} s", flush=True)
                subscription = site.subscribe(receiver.url, receiver.secret)
                # Warm-up, not timed: each node's first association, bucket and model loads.
                everything = write_studies(root / "warm-up", 2, args.seed, 12)
                send_phase(site, everything, spread=True)
                site.settle(timeout=900)
                for number in range(args.rounds):
                    order = (False, True) if number % 2 == 0 else (True, False)
                    for spread in order:
                        seed = args.seed * 1000 + len(phases)
                        folders = write_studies(
                            root / f"phase-{len(phases)}", args.studies, seed, args.instances
                        )
                        phase = send_phase(site, folders, spread)
                        site.settle(timeout=900)
                        phases.append({"round": number, **phase})
                        everything += folders
                        print(phase, flush=True)
                tally = site.verify(everything)
                owed = site.wait_delivered(subscription, 300)
                figures = latencies(site, subscription)
                for node in site.nodes:  # their dispatchers' deliveries in flight end here
                    node.stop()
                by_node = site.deliveries_by_node(receiver.url)
                received = list(receiver.received)
    finally:
        receiver.stop()
    keys = Counter(event["idempotency_key"] for event in received)
    assert set(keys) == owed, f"{len(owed - set(keys))} webhook events never arrived"
    assert receiver.bad_signatures == 0
    assert in_order_per_study(received)
    duplicates = sum(count - 1 for count in keys.values())
    one = [p["instances_per_s"] for p in phases if p["nodes"] == 1]
    two = [p["instances_per_s"] for p in phases if p["nodes"] == 2]
    summary = {
        "instances_per_s_one_node": round(statistics.median(one), 1),
        "instances_per_s_two_nodes": round(statistics.median(two), 1),
        "two_nodes_over_one": round(statistics.median(two) / statistics.median(one), 2),
        "studies": len(everything),
        "jobs": tally.jobs,
        "jobs_by_worker": dict(tally.jobs_by_worker),
        "studies_analysed_again": tally.reanalysed,
        "webhook_events": len(owed),
        "webhook_deliveries_by_node": dict(by_node),
        "webhook_duplicates": duplicates,
        "changes_seen_by_poller": tally.changes_seen,
        **figures,
        "lost": 0,  # verify() raised otherwise
    }
    save(
        RESULTS, "scaleout", args, summary, phases=phases, seconds=round(time.monotonic() - started)
    )


if __name__ == "__main__":
    main()
