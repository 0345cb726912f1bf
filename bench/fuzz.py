"""The long fuzzing run (tests/fuzz runs a small seeded corpus of the same in ``make test``).

Mutants of every real file in ``data/`` (bit flips, truncation at element boundaries, lengths
0xFFFFFFFF / 0 / odd / past the end, sequences nested 1,000 deep, VR swaps, huge VM, text that
is not valid in its Specific Character Set: ``bench/fuzzing/mutate.py``) go

- ``inprocess``: through ``Archive.store()``, alternately as C-STORE data sets and as STOW-RS
  parts;
- ``server``: by C-STORE (pynetdicom) and STOW-RS (httpx), two clients at once, to a running
  ``pacs serve``; every stored STOW-RS instance is read back (metadata, QIDO-RS); afterwards
  C-ECHO, the server process alive, its RSS, and ``pacs fsck`` must be clean;
- ``parsers``: the Hypothesis properties of ``tests/fuzz/test_parsers.py`` (STOW-RS multipart,
  QIDO-RS and FHIR search parameters, DICOM JSON media types, JWT, Part 10 framing) with
  ``--examples`` examples each.

Counts go to ``bench/results/fuzz.json`` (merged per part, so parts may run separately)::

    nice python bench/fuzz.py --inputs 10000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fuzzing.campaign import Corpus, against_server, in_process
from bench.fuzzing.mutate import MUTATIONS, seed_files
from bench.machine import machine
from tests.servers import DATA, PacsServer

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz.json"
REPO = Path(__file__).resolve().parent.parent
RSS_EVERY = 500  # inputs per interface between two samples of the server's RSS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="mutants per interface")
    parser.add_argument("--examples", type=int, default=1_000, help="Hypothesis examples")
    parser.add_argument(
        "--parts", default="inprocess,server,parsers", help="comma-separated: which parts"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="suffix of the part's key in the results")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    files = seed_files(DATA)
    corpus = Corpus.of(files)
    report["corpus"] = {
        "files": len(files),
        "mutated": len(corpus.seeds),
        "sent_unmutated": len(corpus.unmutable),
        "mutations": sorted(MUTATIONS),
    }
    # Parts run separately are merged into one file: each records its own machine and load.
    report.pop("machine", None)
    with tempfile.TemporaryDirectory(prefix="pacs-fuzz-") as tmp:
        if "inprocess" in parts:
            start, at_start = time.monotonic(), machine()
            tallies = in_process(corpus, args.inputs, Path(tmp))
            report["in_process" + args.tag] = {k: t.as_json() for k, t in tallies.items()} | {
                "machine": at_start,
                "seconds": round(time.monotonic() - start, 1),
                "ok": all(t.ok for t in tallies.values()),
            }
            _write(report, args.out)
        if "server" in parts:
            at_start = machine()
            server = PacsServer(Path(tmp) / "home").start()
            try:
                run = against_server(
                    corpus, server, args.inputs, samples=max(1, args.inputs // RSS_EVERY)
                )
            finally:
                server.stop()
            report["server" + args.tag] = run.as_json() | {
                "machine": at_start,
                "load_average_after": machine()["load_average"],
                "ok": run.ok,
            }
            _write(report, args.out)
        if "parsers" in parts:
            start, at_start = time.monotonic(), machine()
            tested = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "tests/fuzz/test_parsers.py",
                ],
                cwd=REPO,
                env={**os.environ, "PACS_FUZZ_EXAMPLES": str(args.examples)},
                capture_output=True,
                text=True,
                check=False,
            )
            report["parsers"] = {
                "machine": at_start,
                "examples_per_property": args.examples,
                "passed": tested.returncode == 0,
                "summary": tested.stdout.strip().splitlines()[-1:],
                "seconds": round(time.monotonic() - start, 1),
                "ok": tested.returncode == 0,
            }
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    ok = all(value["ok"] for value in report.values() if isinstance(value, dict) and "ok" in value)
    report["ok"] = ok
    _write(report, args.out)
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


def _write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
