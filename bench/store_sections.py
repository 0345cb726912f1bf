"""Where `Archive.store()` spends its CPU per instance, part by part, in process (no network):
the bare data sets of a generated 300-instance CT study stored as a C-STORE hands them over,
into SQLite and the filesystem, each part timed with the thread's CPU clock around the call
(so a part includes what it calls; fsync and commit waits are not CPU and do not show).

A sampling profiler cannot run on this machine (py-spy crashes); this names the parts the
ingest path is made of instead. Median of the repetitions of each part's mean after the first
10 instances (warm-up).

Usage: python bench/store_sections.py [--instances N] [--repetitions N]
Writes bench/results/store_sections.json.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import pacs.ingest as ingest
from bench.generate import write_study
from bench.machine import save
from pacs import part10
from pacs.index import Database, upgrade
from pacs.instance import ParsedInstance
from pacs.storage import open_store

RESULTS = Path(__file__).resolve().parent / "results" / "store_sections.json"
WARM_UP = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pacs-sections-"))
    write_study(work / "study", args.instances, "SECTIONS", seed=5)
    bare = []
    for path in sorted((work / "study").iterdir()):
        data = path.read_bytes()
        located = part10.locate(data)
        bare.append((data[located.dataset_offset :], located.transfer_syntax_uid))
    parts: dict[str, list[float]] = {}
    for repetition in range(args.repetitions):
        means = _one_run(work / f"run{repetition}", bare)
        for name, value in means.items():
            parts.setdefault(name, []).append(value)
        print(f"[{repetition + 1}/{args.repetitions}] store {means['store (all)']:.2f} ms/inst")
    summary = {name: round(statistics.median(values), 3) for name, values in parts.items()}
    save(RESULTS, "store_sections", args, {"ms_cpu_per_instance": summary})


def _one_run(home: Path, bare: list[tuple[bytes, str]]) -> dict[str, float]:
    db = Database(f"sqlite:///{home / 'index.db'}")
    upgrade(db)
    archive = ingest.Archive(db, open_store(f"file://{home / 'storage'}"))
    source = ingest.Source("DIMSE", calling_ae="STORESCU", remote_host="127.0.0.1")
    times: dict[str, list[float]] = {}
    saved = _instrument(archive, times)
    try:
        total = []
        for data, syntax in bare:
            started = time.thread_time()
            archive.store(data, source, syntax)
            total.append(time.thread_time() - started)
    finally:
        saved()
        db.dispose()
    means = {name: 1000 * statistics.mean(values[WARM_UP:]) for name, values in times.items()}
    # The parts are disjoint: the rest is the write transaction's begin and commit, metrics,
    # the checks between the statements.
    means["other: transaction, checks, metrics"] = 1000 * statistics.mean(total[WARM_UP:]) - sum(
        means.values()
    )
    means["store (all)"] = 1000 * statistics.mean(total[WARM_UP:])
    return means


def _instrument(archive: ingest.Archive, times: dict[str, list[float]]) -> Callable[[], None]:
    """Wrap the parts of the ingest path in CPU timers; return what undoes it."""

    def timed(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return call(*args, **kwargs)
            finally:
                times.setdefault(name, []).append(time.thread_time() - started)

        return wrapper

    originals: list[tuple[object, str, object]] = []

    def patch(owner: object, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)
        originals.append((owner, attribute, original))
        setattr(owner, attribute, timed(name, original))

    patch(ingest, "locate", "locate: frame, walk headers")
    patch(part10.Located, "wanted_dataset", "pydicom: the index elements as raw elements")
    patch(ParsedInstance, "from_dataset", "index attributes from pydicom")
    patch(ingest, "_part10_blob", "File Meta Information")
    patch(archive.blobs, "put", "blob: write, fsync, rename, fsync dir")
    patch(ingest, "stored_version", "SQL: stored version")
    patch(ingest, "study_facility", "SQL: study facility")
    patch(ingest, "record_instance", "SQL: rows and change feed")
    patch(ingest, "append_event", "SQL: audit chain")
    digest = hashlib.sha256

    class _Hashlib:
        sha256 = staticmethod(timed("SHA-256", digest))

    originals.append((ingest, "hashlib", getattr(ingest, "hashlib")))  # noqa: B009
    setattr(ingest, "hashlib", _Hashlib)  # noqa: B010

    def undo() -> None:
        for owner, attribute, original in reversed(originals):
            setattr(owner, attribute, original)

    return undo


if __name__ == "__main__":
    main()
