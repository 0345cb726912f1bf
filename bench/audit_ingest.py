"""What auditing costs ingest: real CT instances stored through Archive.store with the audit
trail (one hash-chained ``store`` event per instance, in the instance's index transaction)
and without it (the append replaced by a no-op, for this measurement only), in the same run.

Each repetition starts on an empty index and blob store; instances are held in memory so only
the archive's own work is timed (parse, blob write with fsync, index transaction with fsync).
1 thread is one association; 4 threads are four parallel associations. Medians of
--repetitions. Writes bench/results/audit_ingest.json.

Usage: python bench/audit_ingest.py [--repetitions 3] [--instances N]
       [--database-url postgresql+psycopg://...]   (default: SQLite, the embedded default)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import pacs.ingest
from bench.machine import machine
from pacs.index import Database, upgrade
from pacs.ingest import Archive, Source
from pacs.storage import open_store

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" if (REPO / "data" / "ct").exists() else Path("/work/shared/data")
SERIES = [DATA / "ct" / "LIDC-IDRI-0001", DATA / "ct" / "LIDC-IDRI-0002"]
RESULTS = REPO / "bench" / "results" / "audit_ingest.json"
SOURCE = Source("DIMSE", calling_ae="BENCH", remote_host="127.0.0.1")


def run_once(files: list[bytes], audited: bool, threads: int, database_url: str | None) -> float:
    """Seconds to store *files* into a fresh archive."""
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as home:
        db = Database(database_url or f"sqlite:///{home}/index.db")
        if database_url:
            _reset(db)
        upgrade(db)
        archive = Archive(db, open_store(f"file://{home}/storage", None, None))
        original = pacs.ingest.append_event
        if not audited:
            pacs.ingest.append_event = lambda conn, event: None  # type: ignore[assignment,return-value]
        try:
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda data: archive.store(data, SOURCE), files))
            seconds = time.perf_counter() - started
        finally:
            pacs.ingest.append_event = original
        db.dispose()
        return seconds


def _reset(db: Database) -> None:
    with db.write() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--instances", type=int, default=0, help="0: the whole series")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    paths = sorted(p for folder in SERIES for p in folder.rglob("*.dcm"))
    if args.instances:
        paths = paths[: args.instances]
    files = [p.read_bytes() for p in paths]
    backend = "postgresql" if args.database_url else "sqlite"
    scenarios: dict[str, Any] = {}
    for threads in (1, 4):
        seconds: dict[str, list[float]] = {"audited": [], "not_audited": []}
        for _ in range(args.repetitions):
            for audited in (True, False):  # interleaved: drift hits both alike
                key = "audited" if audited else "not_audited"
                seconds[key].append(run_once(files, audited, threads, args.database_url))
        medians = {k: statistics.median(v) for k, v in seconds.items()}
        scenarios[f"{backend}_{threads}thread"] = {
            "instances": len(files),
            "seconds": seconds,
            "instances_per_second": {k: len(files) / m for k, m in medians.items()},
            "audited_over_not_audited": medians["not_audited"] / medians["audited"],
        }
        print(
            backend,
            threads,
            json.dumps(scenarios[f"{backend}_{threads}thread"]["instances_per_second"]),
        )
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    previous.setdefault("scenarios", {}).update(scenarios)
    previous["machine"] = machine()
    previous["at"] = datetime.now(UTC).isoformat(timespec="seconds")
    names = "+".join(folder.name for folder in SERIES)
    previous["data"] = f"{names}: {len(files)} CT instances, {sum(map(len, files)) // 2**20} MiB"
    RESULTS.write_text(json.dumps(previous, indent=2) + "\n")


if __name__ == "__main__":
    main()
