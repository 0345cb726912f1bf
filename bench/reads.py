"""Reads alone: one kind of DICOMweb read at a time against one idle `pacs serve`.

The server holds LIDC-IDRI-0001 (stored over DIMSE, nothing else ingesting); wrk (Debian's
HTTP load generator) keeps ``--connections`` connections busy on one read kind for
``--seconds``, then the next kind: QIDO-RS study searches, series metadata (identity, and
again with ``Accept-Encoding: gzip`` as browsers send it), and frames. The read paths and
wrk's Lua script are bench/load.py's. What a request costs the server with nothing else
running: the figures that bench/load.py's readers lose under full ingest.

    nice .venv/bin/python bench/reads.py --connections 16 --seconds 15

writes ``bench/results/reads.json``: per read kind requests/s, p50/p90/p99 latency, error
counts, and the server's CPU time per request (on a shared machine the steadier figure).
``--database postgresql`` runs the index on a throw-away PostgreSQL cluster.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import WRK, read_figures, read_paths, send, wrk_script
from bench.machine import save
from pacs.index import Database, upgrade
from tests.servers import PacsServer, PostgresServer

RESULTS = Path(__file__).resolve().parent / "results" / "reads.json"
REPO = Path(__file__).resolve().parent.parent
READ_SERIES = REPO / "data" / "ct" / "LIDC-IDRI-0001"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=15, help="per read kind")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    if shutil.which(WRK) is None:
        sys.exit("wrk not found: apt-get install wrk (scripts/install-system-deps.sh)")

    work = Path(tempfile.mkdtemp(prefix="pacs-reads-"))
    postgres = PostgresServer() if args.database == "postgresql" else None
    try:
        env = {}
        if postgres is not None:
            url = postgres.new_database()
            db = Database(url)
            upgrade(db)
            db.dispose()
            env["PACS_DATABASE_URL"] = url
        server = PacsServer(work / "home", env).start()
        try:
            reads = run(server, work, args)
        finally:
            server.stop()
        summary = {
            kind: {
                k: figures.get(k)
                for k in (
                    "requests_per_second",
                    "p50_ms",
                    "server_cpu_ms_per_request",
                    "error_count",
                )
            }
            for kind, figures in reads.items()
        }
        save(Path(args.output), "reads", args, summary, reads=reads)
    finally:
        if postgres is not None:
            postgres.close()
        shutil.rmtree(work, ignore_errors=True)


def run(server: PacsServer, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    send([READ_SERIES], server)
    token = server.token("radiologist")
    kinds = []
    for kind, accept, paths in read_paths(server, token):
        kinds.append((kind, {"Accept": accept}, paths))
        if kind == "series_metadata":
            kinds.append((kind + "_gzip", {"Accept": accept, "Accept-Encoding": "gzip"}, paths))
    assert server.process is not None
    process = psutil.Process(server.process.pid)
    reads: dict[str, Any] = {}
    for kind, headers, paths in kinds:
        cpu_before = _tree_cpu_seconds(process)
        script = work / f"{kind}.lua"
        script.write_text(wrk_script(paths, headers, token, seed=len(kind)))
        command = [WRK, "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout", "30s"]
        out = subprocess.run(
            [*command, "-s", str(script), server.url],
            capture_output=True,
            text=True,
            check=True,
            timeout=args.seconds + 60,
        ).stdout
        line = next((x for x in out.splitlines() if x.startswith("{")), None)
        if line is None:
            reads[kind] = {"error": out[-500:]}
            continue
        figures = read_figures(json.loads(line))
        cpu = _tree_cpu_seconds(process) - cpu_before
        figures["server_cpu_ms_per_request"] = round(1000 * cpu / max(figures["requests"], 1), 2)
        reads[kind] = figures
        print(kind, json.dumps(reads[kind]), flush=True)
    return reads


def _tree_cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds the server and its receiver processes have used: per request, a figure
    that other work on the machine changes much less than requests/s."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total


if __name__ == "__main__":
    main()
