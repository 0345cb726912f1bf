"""Replay the C-STORE "hangs" a fuzzing run reported, to tell a server bug from a slow answer.

The mutants are re-derived (``bench/fuzzing/mutate.py`` is seeded): for each reported
(seed file, mutation), every mutant number the run sent of that seed whose mutation matches.
Each goes to a fresh ``pacs serve`` with a generous DIMSE timeout, first one at a time on one
association, then all of them from *concurrency* associations at once (the copies after the
first are the same instances again); every answer's status and latency is printed, and the
server log searched for errors::

    nice python bench/fuzz_replay.py --concurrency 8

(of an earlier run: ``git show e4f4413:bench/results/fuzz.json > /tmp/fuzz.json`` and
``--results /tmp/fuzz.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pynetdicom import AE, _config

from bench.fuzzing.mutate import Mutant, load_seed, mutate, seed_files
from pacs.dimse.scu import guard_responses
from pacs.part10 import with_meta
from tests.servers import DATA, PacsServer

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz.json"


def reported(results: Path) -> list[tuple[Path, str]]:
    """(seed file under data/, mutation) of every C-STORE the run got no response to."""
    bugs = json.loads(results.read_text())["server"]["c_store"]["bugs"]
    return [
        (DATA / b["seed"].split("/data/", 1)[1], b["mutation"])
        for b in bugs
        if b["kind"] == "no C-STORE response"
    ]


def candidates(seed_path: Path, kind: str, inputs: int) -> list[tuple[int, Mutant]]:
    """The mutants of *seed_path* a run of *inputs* sent whose mutation is *kind*."""
    files = seed_files(DATA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seeds = [p for p in files if load_seed(p) is not None]
        seed = load_seed(seed_path)
    assert seed is not None
    index = seeds.index(seed_path)
    share = inputs // len(seeds) + (1 if index < inputs % len(seeds) else 0)
    found = [(n, mutate(seed, n)) for n in range(share)]
    return [(n, m) for n, m in found if m.kind == kind]


def _ae(timeout: float, contexts: set[tuple[str, str]]) -> AE:
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="FUZZ_REPLAY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.maximum_pdu_size = 0
    for context in sorted(contexts):
        ae.add_requested_context(*context)
    return ae


def send_all(
    port: int, mutants: list[tuple[str, Mutant]], timeout: float, spool: Path
) -> list[dict[str, Any]]:
    """C-STORE each mutant on one association; status (None: no answer) and seconds."""
    ae = _ae(timeout, {(m.SOPClassUID, m.TransferSyntaxUID) for _, m in mutants})
    assoc = guard_responses_of(ae.associate("127.0.0.1", port, ae_title="PACS"))
    answers = []
    for name, mutant in mutants:
        if not assoc.is_established:
            assoc = guard_responses_of(ae.associate("127.0.0.1", port, ae_title="PACS"))
        path = spool / f"{uuid.uuid4().hex}.dcm"
        path.write_bytes(
            with_meta(
                mutant.dataset, mutant.SOPClassUID, mutant.SOPInstanceUID, mutant.TransferSyntaxUID
            )
        )
        start = time.monotonic()
        reply = assoc.send_c_store(path)
        seconds = time.monotonic() - start
        path.unlink()
        code = int(reply.Status) if "Status" in reply else None
        answers.append(
            {
                "mutant": name,
                "bytes": len(mutant.dataset),
                "status": None if code is None else f"0x{code:04X}",
                "comment": str(reply.get("ErrorComment", ""))[:120],
                "seconds": round(seconds, 2),
            }
        )
    if assoc.is_established:
        assoc.release()
    return answers


def guard_responses_of(assoc: Any) -> Any:
    """*assoc*, its DIMSE responses left to the send waiting for them (pacs.dimse.scu)."""
    if assoc.is_established:
        guard_responses(assoc)
    return assoc


def _server_errors(server: PacsServer) -> list[str]:
    text = server.log.read_text(errors="replace")
    markers = ("Traceback", "ERROR", "abort", "Abort", "timeout", "Exception")
    return [line for line in text.splitlines() if any(m in line for m in markers)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs of the reported run")
    parser.add_argument("--timeout", type=float, default=300.0, help="client DIMSE timeout")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    mutants: list[tuple[str, Mutant]] = []
    for seed_path, kind in reported(args.results):
        for number, mutant in candidates(seed_path, kind, args.inputs):
            mutants.append((f"{seed_path.parent.name[-6:]}/{seed_path.name}#{number}", mutant))
    print(f"{len(mutants)} mutants re-derived", file=sys.stderr)
    if not mutants:
        return 0  # the run reported none
    report: dict[str, Any] = {"mutants": len(mutants)}
    with tempfile.TemporaryDirectory(prefix="pacs-replay-") as tmp:
        spool = Path(tmp) / "spool"
        spool.mkdir()
        server = PacsServer(Path(tmp) / "alone").start()
        try:
            report["one_association"] = send_all(server.port, mutants, args.timeout, spool)
        finally:
            server.stop()
        report["one_association_log"] = _server_errors(server)
        server = PacsServer(Path(tmp) / "concurrent").start()
        results: list[list[dict[str, Any]]] = [[] for _ in range(args.concurrency)]

        def worker(i: int) -> None:
            results[i] = send_all(server.port, mutants, args.timeout, spool)

        try:
            start = time.monotonic()
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            report["concurrent_seconds"] = round(time.monotonic() - start, 1)
        finally:
            server.stop()
        flat = [answer for answers in results for answer in answers]
        report["concurrent"] = {
            "associations": args.concurrency,
            "answers": len(flat),
            "no_answer": sum(a["status"] is None for a in flat),
            "by_status": _count(a["status"] for a in flat),
            "max_seconds": max(a["seconds"] for a in flat),
            "p50_seconds": sorted(a["seconds"] for a in flat)[len(flat) // 2],
        }
        report["concurrent_log"] = _server_errors(server)
    print(json.dumps(report, indent=2))
    alone_silent = sum(a["status"] is None for a in report["one_association"])
    return 0 if not alone_silent and not report["concurrent"]["no_answer"] else 1


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return dict(sorted(counts.items()))


if __name__ == "__main__":
    sys.exit(main())
