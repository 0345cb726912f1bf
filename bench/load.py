"""Load: many associations storing while many HTTP clients read, against one `pacs serve`.

16 dcmtk storescu processes each send a study of 300 fresh CT instances at once (one
association each), while wrk (Debian's HTTP load generator) keeps 50 connections busy on
DICOMweb reads of an already stored series: QIDO-RS study searches, series metadata, and
frames, each kind with its own wrk process and connections. Bounded: the reads last as long
as the ingest (plus a few seconds), never longer than ``--max-seconds``.

    nice .venv/bin/python bench/load.py --associations 16 --instances 300 --connections 50

writes ``bench/results/load.json``: ingest throughput, per read kind requests/s, p50/p90/p99
latency and error counts (connect/read/write/timeout and non-2xx answers), the stored count
checked against what was acknowledged, and the server's peak RSS. ``--database postgresql``
runs the index on a throw-away PostgreSQL cluster instead of the embedded SQLite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psutil

from bench.generate import write_study
from bench.ingest import STORESCU
from bench.machine import save
from tests.servers import PacsServer, PostgresServer

RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
REPO = Path(__file__).resolve().parent.parent
READ_SERIES = REPO / "data" / "ct" / "LIDC-IDRI-0001"
JSON = "application/dicom+json"
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
WRK = "wrk"
TO_PACS = ["-aec", "PACS", "+sd", "+r", "127.0.0.1"]

# wrk's Lua hooks: each request a random path of the list, and at the end the figures as one
# JSON line on stdout (latency in microseconds).
LUA = """
local paths = {%(paths)s}
local headers = {%(headers)s}
math.randomseed(%(seed)d)
request = function()
  return wrk.format("GET", paths[math.random(#paths)], headers)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "bytes": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "timeout": %%d, "status": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.timeout, e.status, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--associations", type=int, default=16)
    parser.add_argument("--instances", type=int, default=300, help="per association")
    parser.add_argument("--size", type=int, default=256, help="rows = columns of each slice")
    parser.add_argument("--connections", type=int, default=50, help="HTTP, over 3 read kinds")
    parser.add_argument("--receivers", type=int, default=2, help="PACS_RECEIVERS")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--max-seconds", type=int, default=600)
    args = parser.parse_args()
    if shutil.which(WRK) is None:
        sys.exit("wrk not found: apt-get install wrk (scripts/install-system-deps.sh)")

    work = Path(tempfile.mkdtemp(prefix="pacs-load-"))
    postgres = PostgresServer() if args.database == "postgresql" else None
    try:
        print(f"writing {args.associations} x {args.instances} instances ...", flush=True)
        folders = []
        for n in range(args.associations):
            folder = work / f"study{n}"
            write_study(folder, args.instances, f"LOAD{n}", seed=n, size=args.size)
            folders.append(folder)
        env = {
            "PACS_RECEIVERS": str(args.receivers),
            "PACS_STABLE_AGE": "86400",
            # Every sender here is 127.0.0.1, where a site's modalities each have their own
            # address: the per-address limit (8 per receiver) would refuse some, as designed.
            "PACS_MAX_ASSOCIATIONS_PER_PEER": str(args.associations),
        }
        if postgres is not None:
            url = postgres.new_database(migrated=True)
            env["PACS_DATABASE_URL"] = url
        server = PacsServer(work / "home", env).start()
        try:
            result = run(server, folders, work, args)
        finally:
            server.stop()
        write_results(result, args)
    finally:
        if postgres is not None:
            postgres.close()
        shutil.rmtree(work, ignore_errors=True)


def run(
    server: PacsServer, folders: list[Path], work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    send([READ_SERIES], server)  # the series the readers read
    token = server.token("radiologist")
    paths = read_paths(server, token)
    assert server.process is not None
    process = psutil.Process(server.process.pid)
    before = stored_count(server, token)

    share = [args.connections // 3 + (k < args.connections % 3) for k in range(3)]
    readers = []
    for (kind, accept, kind_paths), connections in zip(paths, share, strict=True):
        script = work / f"{kind}.lua"
        script.write_text(wrk_script(kind_paths, {"Accept": accept}, token, seed=len(kind)))
        command = [WRK, "-t1", f"-c{connections}", f"-d{args.max_seconds}s", "--timeout", "30s"]
        command += ["-s", str(script), server.url]
        readers.append((kind, subprocess.Popen(command, stdout=subprocess.PIPE, text=True)))

    rss = [0.0]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [STORESCU, "-aet", f"LOAD{n}", *TO_PACS, str(server.port), str(folder)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for n, folder in enumerate(folders)
    ]
    failures = []
    while any(s.poll() is None for s in senders):
        rss.append(_tree_rss_mb(process))
        if time.perf_counter() - started > args.max_seconds:
            break
        time.sleep(0.5)
    for sender in senders:
        _, err = sender.communicate(timeout=60)
        if sender.returncode != 0:
            failures.append(err.decode()[-300:])
    ingest_seconds = time.perf_counter() - started
    time.sleep(3)  # the readers go on a moment after the last store
    reads = {}
    for kind, reader in readers:
        reader.send_signal(2)  # SIGINT: wrk stops and reports what it measured
        out, _ = reader.communicate(timeout=60)
        line = next((x for x in out.splitlines() if x.startswith("{")), None)
        reads[kind] = read_figures(json.loads(line)) if line else {"error": out[-500:]}
    stored = stored_count(server, token) - before
    sent = args.associations * args.instances
    return {
        "ingest": {
            "instances": sent,
            "stored": stored,
            "sender_failures": failures,
            "seconds": round(ingest_seconds, 2),
            "instances_per_second": round(sent / ingest_seconds, 1),
        },
        "reads": reads,
        "server_peak_rss_mb": round(max(rss), 1),
        "server_rss_after_mb": round(_tree_rss_mb(process), 1),
    }


def wrk_script(paths: list[str], headers: dict[str, str], token: str, seed: int) -> str:
    """The Lua script of one wrk reader: *paths* at random, with *headers* and the token."""
    table = {"Authorization": f"Bearer {token}", **headers}
    return LUA % {
        "paths": ", ".join(json.dumps(p) for p in paths),
        "headers": ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in table.items()),
        "seed": seed,
    }


def send(folders: list[Path], server: PacsServer) -> None:
    subprocess.run(
        [STORESCU, "-aet", "LOADPREP", *TO_PACS, str(server.port), *map(str, folders)],
        env={**os.environ, "TCP_NODELAY": "1"},
        check=True,
        capture_output=True,
        timeout=600,
    )


def read_paths(server: PacsServer, token: str) -> list[tuple[str, str, list[str]]]:
    """(kind, Accept, paths) of each read kind, from the stored read series."""
    headers = {"Authorization": f"Bearer {token}", "Accept": JSON}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        [study] = client.get("/dicom-web/studies", params={"PatientID": "LIDC-IDRI-0001"}).json()
        study_uid = study["0020000D"]["Value"][0]
        [series] = client.get(f"/dicom-web/studies/{study_uid}/series").json()
        series_path = f"/dicom-web/studies/{study_uid}/series/{series['0020000E']['Value'][0]}"
        metadata = client.get(series_path + "/metadata").json()
    instances = [document["00080018"]["Value"][0] for document in metadata]
    return [
        (
            "qido_studies",
            JSON,
            ["/dicom-web/studies?PatientID=LIDC-IDRI-0001", "/dicom-web/studies?limit=100"],
        ),
        ("series_metadata", JSON, [series_path + "/metadata"]),
        ("frames", FRAMES, [f"{series_path}/instances/{uid}/frames/1" for uid in instances]),
    ]


def stored_count(server: PacsServer, token: str) -> int:
    """Instances the index holds, by QIDO (studies' NumberOfStudyRelatedInstances)."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        response = client.get(
            "/dicom-web/studies",
            params={"limit": "1000"},
            headers={"Authorization": f"Bearer {token}", "Accept": JSON},
        )
    if response.status_code == 204:
        return 0
    return sum(int(s["00201208"]["Value"][0]) for s in response.json())


def read_figures(raw: dict[str, int]) -> dict[str, Any]:
    seconds = raw["duration_us"] / 1e6
    errors = {k: raw[k] for k in ("connect", "read", "write", "timeout", "status")}
    return {
        "requests": raw["requests"],
        "requests_per_second": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "megabytes_per_second": round(raw["bytes"] / 1e6 / seconds, 1) if seconds else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
        "error_count": sum(errors.values()),
    }


def _tree_rss_mb(process: psutil.Process) -> float:
    """The server's resident memory with its receiver processes."""
    try:
        members = [process, *process.children(recursive=True)]
        return float(sum(p.memory_info().rss for p in members)) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def write_results(result: dict[str, Any], args: argparse.Namespace) -> None:
    reads = result["reads"]
    summary = {
        "ingest_instances_per_second": result["ingest"]["instances_per_second"],
        "stored_equals_sent": result["ingest"]["stored"] == result["ingest"]["instances"],
        "read_p50_p99_ms": {k: [v.get("p50_ms"), v.get("p99_ms")] for k, v in reads.items()},
        "read_requests_per_second": {k: v.get("requests_per_second") for k, v in reads.items()},
        "errors": sum(v.get("error_count", 1) for v in reads.values())
        + len(result["ingest"]["sender_failures"]),
        "median_read_p50_ms": round(
            statistics.median(v["p50_ms"] for v in reads.values() if "p50_ms" in v), 2
        ),
    }
    save(RESULTS, "load", args, summary, **result)


if __name__ == "__main__":
    main()
