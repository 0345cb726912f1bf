"""Reads alone: one kind of DICOMweb read at a time against an idle `pacs serve`.

The server holds LIDC-IDRI-0001 (stored over DIMSE, nothing else ingesting); wrk (Debian's
HTTP load generator) keeps ``--connections`` connections busy on one read kind for
``--seconds``, then the next kind: QIDO-RS study searches, series metadata (identity, and
again with ``Accept-Encoding: gzip`` as browsers send it), and frames. The read paths and
wrk's Lua script are bench/load.py's. What a request costs the server with nothing else
running: the figures that bench/load.py's readers lose under full ingest.

``--baseline DIR`` runs a second server from another checkout (e.g. ``git worktree add
/tmp/base main``) beside this one, both holding the series, and measures them in turns, each
read kind ``--rounds`` times (one server first, then the other, then the other way round), so
that the load the machine has at one moment weighs on both; figures are the medians of the
rounds, and ``ratio`` this checkout's over the baseline's.

    nice .venv/bin/python bench/reads.py --connections 16 --seconds 10 --rounds 3 \\
        [--baseline /tmp/base]

writes ``bench/results/reads.json``: per server and read kind requests/s, p50/p90/p99 latency,
error counts, and the server's CPU time per request. ``--database postgresql`` runs the index
on a throw-away PostgreSQL cluster.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import WRK, read_figures, read_paths, send, wrk_script
from bench.machine import save
from tests.servers import PacsServer, PostgresServer

RESULTS = Path(__file__).resolve().parent / "results" / "reads.json"
REPO = Path(__file__).resolve().parent.parent
READ_SERIES = REPO / "data" / "ct" / "LIDC-IDRI-0001"
FIGURES = ("requests_per_second", "p50_ms", "p99_ms", "server_cpu_ms_per_request", "error_count")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10, help="per read kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="a checkout whose `pacs serve` to compare with")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--kinds", nargs="*", help="read kinds to run (default: every kind)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    if shutil.which(WRK) is None:
        sys.exit("wrk not found: apt-get install wrk (scripts/install-system-deps.sh)")

    work = Path(tempfile.mkdtemp(prefix="pacs-reads-"))
    postgres = PostgresServer() if args.database == "postgresql" else None
    checkouts = {"this": REPO}
    if args.baseline:
        checkouts["baseline"] = Path(args.baseline).resolve()
    servers: dict[str, PacsServer] = {}
    try:
        for name, checkout in checkouts.items():
            # The checkout's code, not the one in the working directory (PYTHONSAFEPATH).
            env = {"PYTHONPATH": str(checkout), "PYTHONSAFEPATH": "1"}
            if postgres is not None:
                url = postgres.new_database(migrated=True)
                env["PACS_DATABASE_URL"] = url
            servers[name] = PacsServer(work / name, env).start()
        runs = measure(servers, work, args)
        summary = {
            name: {
                kind: {k: _median(figures, k) for k in FIGURES} for kind, figures in kinds.items()
            }
            for name, kinds in runs.items()
        }
        if "baseline" in summary:
            summary["ratio"] = {
                kind: {k: _ratio(this[k], summary["baseline"][kind][k]) for k in FIGURES[:-1]}
                for kind, this in summary["this"].items()
            }
        save(Path(args.output), "reads", args, summary, runs=runs)
    finally:
        for server in servers.values():
            server.stop()
        if postgres is not None:
            postgres.close()
        shutil.rmtree(work, ignore_errors=True)


def measure(
    servers: dict[str, PacsServer], work: Path, args: argparse.Namespace
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Each read kind on each server, ``args.rounds`` times in turns: server -> kind -> runs."""
    kinds: dict[str, dict[str, tuple[dict[str, str], list[str]]]] = {}
    tokens = {}
    for name, server in servers.items():
        send([READ_SERIES], server)
        tokens[name] = server.token("radiologist")
        kinds[name] = {}
        for kind, accept, paths in read_paths(server, tokens[name]):
            kinds[name][kind] = ({"Accept": accept}, paths)
            if kind == "series_metadata":
                gzip = {"Accept": accept, "Accept-Encoding": "gzip"}
                kinds[name][kind + "_gzip"] = (gzip, paths)
    names = list(servers)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in names}
    for kind in kinds[names[0]]:
        if args.kinds and kind not in args.kinds:
            continue
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                headers, paths = kinds[name][kind]
                script = work / f"{name}-{kind}.lua"
                script.write_text(wrk_script(paths, headers, tokens[name], seed=round_))
                figures = run_wrk(servers[name], script, args)
                runs[name].setdefault(kind, []).append(figures)
                print(name, kind, json.dumps(figures), flush=True)
    return runs


def run_wrk(server: PacsServer, script: Path, args: argparse.Namespace) -> dict[str, Any]:
    """wrk's figures of one run, with the server's CPU time per request."""
    assert server.process is not None
    process = psutil.Process(server.process.pid)
    cpu_before = _tree_cpu_seconds(process)
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
        return {"error": out[-500:]}
    figures = read_figures(json.loads(line))
    cpu = _tree_cpu_seconds(process) - cpu_before
    figures["server_cpu_ms_per_request"] = round(1000 * cpu / max(figures["requests"], 1), 2)
    return figures


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if key in run]
    return round(statistics.median(values), 2) if values else None


def _ratio(this: float | None, baseline: float | None) -> float | None:
    return round(this / baseline, 3) if this is not None and baseline else None


def _tree_cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds the server and its receiver processes have used."""
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total


if __name__ == "__main__":
    main()
