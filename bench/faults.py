"""Faults under load, the long version of ``tests/faults``: rounds of N small CT studies sent
by several storescu / `pacs send` processes while every fault of
``tests.faults.harness.FAULTS`` (SIGKILL of a receiver, of the API process, of the inference
worker, of the whole server; a PostgreSQL restart; the S3 endpoint gone and back) strikes at
seeded random moments; after each round the harness checks that nothing acknowledged was lost
(byte for byte), index == storage (`pacs fsck`), one AI run per job per `study.stable`, every
job succeeded, the change feed complete for a poller. One site (PostgreSQL, S3, `pacs serve`
with PACS_RECEIVERS receivers, `pacs worker`) lives through all rounds. Writes
bench/results/faults.json.

Usage: nice python bench/faults.py [--studies 6] [--rounds 3] [--faults-per-round 6]
       [--seed 1] [--minutes 20]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import machine
from tests.faults.harness import FAULTS, fault_site
from tests.faults.site import STUDY_INSTANCES, write_studies

RESULTS = Path(__file__).resolve().parent / "results" / "faults.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=6, help="studies sent per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--faults-per-round", type=int, default=len(FAULTS))
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=20, help="stop starting rounds after")
    args = parser.parse_args()
    # SIGTERM (from `timeout`, say) unwinds like Ctrl-C: the servers started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = random.Random(args.seed)
    started = time.monotonic()
    totals: Counter[str] = Counter()
    kills: Counter[str] = Counter()
    restarts: Counter[str] = Counter()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="pacs-faults-") as tmp:
        root = Path(tmp)
        with fault_site(root / "site", args.receivers) as site:
            for number in range(args.rounds):
                if time.monotonic() - started > args.minutes * 60:
                    break
                seed = rng.randrange(1 << 30)
                folders = write_studies(root / f"round-{number}", args.studies, seed)
                schedule = [rng.choice(FAULTS) for _ in range(args.faults_per_round)]
                round_start = time.monotonic()
                site.tally.kills.clear()
                site.tally.restarts.clear()
                before = {k: getattr(site.tally, k) for k in ("instances", "acknowledged")}
                site.run(folders, schedule, seed, budget=1200)
                site.settle(timeout=600)
                tally = site.verify(folders)
                kills.update(tally.kills)
                restarts.update(tally.restarts)
                rounds.append(
                    {
                        "seed": seed,
                        "faults": schedule,
                        "instances": tally.instances - before["instances"],
                        "seconds": round(time.monotonic() - round_start, 1),
                        "verified": True,
                    }
                )
                print(f"round {number}: {schedule} verified", flush=True)
            totals.update(
                instances=site.tally.instances,
                acknowledged_once_or_after_retry=site.tally.acknowledged,
                first_try_failures=site.tally.first_try_failures,
                resent=site.tally.resends,
                jobs=site.tally.jobs,
                ai_runs=site.tally.ai_runs,
                studies_analysed_again=site.tally.reanalysed,
                changes_seen_by_poller=site.tally.changes_seen,
                orphans_repaired=site.tally.orphans_repaired,
            )
    result = {
        "benchmark": "faults",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "parameters": {**vars(args), "instances_per_study": STUDY_INSTANCES},
        "rounds": rounds,
        "kills": dict(kills),
        "restarts": dict(restarts),
        "totals": dict(totals),
        "lost": 0,  # verify() raised otherwise
        "seconds": round(time.monotonic() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
