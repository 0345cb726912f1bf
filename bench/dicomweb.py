"""DICOMweb retrieval benchmark: this archive against Orthanc's DICOMweb plugin, in one run.

Both servers get the same 300-instance 512x512 int16 CT series (bench/generate.py, ~158 MB) over
DIMSE (dcmtk storescu), then each case is timed on its HTTP API after one warm-up request, on
persistent connections, and the median of the repetitions is reported:

  series_metadata   GET .../series/{uid}/metadata (DICOM JSON of all 300 instances)
  study_qido        GET /studies?PatientID=...
  instance_qido     GET .../series/{uid}/instances?limit=1000 (300 matches)
  series_wado       GET .../series/{uid}, multipart/related application/dicom as stored, with
                    curl (a Python client would be the bottleneck); MB/s
  viewer            what a browser viewer does on opening the series: its metadata, then all 300
                    frames (.../instances/{uid}/frames/1) over 6 concurrent connections; time to
                    the last frame

Orthanc 1.10 and its DICOMweb plugin come from Debian (orthanc, orthanc-dicomweb), run with
TCP_NODELAY=1 inside a network namespace that has only loopback, like bench/ingest.py. Ours is
`pacs serve` with its defaults (SQLite, filesystem store). Writes bench/results/dicomweb.json.

Usage: python bench/dicomweb.py [--repetitions N] [--keep]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.generate import write_study
from bench.ingest import NETNS_FLAG, ORTHANC, STORESCU, _rerun_in_netns, _wait_port
from bench.machine import machine, wait_log_lines

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "dicomweb.json"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
PATIENT_ID = "DWEB300"
INSTANCES = 300
VIEWER_CONNECTIONS = 6
JSON = "application/dicom+json"
DICOM_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
CASES = ("series_metadata", "study_qido", "instance_qido", "series_wado", "viewer")


class Server:
    """One server's HTTP side: where its DICOMweb root is and what a request must carry."""

    def __init__(self, name: str, port: int, root: str, headers: dict[str, str]) -> None:
        self.name, self.port, self.root, self.headers = name, port, root, headers

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def get(self, conn: http.client.HTTPConnection, path: str, accept: str) -> bytes:
        conn.request("GET", self.root + path, headers={**self.headers, "Accept": accept})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{self.name} GET {path}: {response.status} {body[:300]!r}")
        return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the servers' homes")
    parser.add_argument(
        "--http-processes", type=int, default=1, help="our HTTP processes (PACS_HTTP_PROCESSES)"
    )
    args = parser.parse_args()
    if os.environ.get(NETNS_FLAG) is None:
        sys.exit(_rerun_in_netns())

    work = Path(tempfile.mkdtemp(prefix="pacs-bench-dicomweb-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        print("generating the series ...", flush=True)
        folder = work / "ct300"
        write_study(folder, INSTANCES, PATIENT_ID, seed=7)
        os.sync()
        pacs_process, pacs = _start_pacs(work / "pacs-home", args.http_processes)
        processes.append(pacs_process)
        orthanc_process, orthanc = _start_orthanc(work / "orthanc-home")
        processes.append(orthanc_process)
        for port, aet in ((11112, "PACS"), (4242, "ORTHANC")):
            _store(folder, port, aet)
        _write_results(_measure([pacs, orthanc], args.repetitions), args)
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _start_pacs(home: Path, http_processes: int) -> tuple[subprocess.Popen[bytes], Server]:
    home.mkdir(parents=True)
    env = {
        **os.environ,
        "PACS_HOME": str(home),
        "PACS_DICOM_PORT": "11112",
        "PACS_HTTP_PORT": "8000",
        "PACS_WORKERS": "0",
        "PACS_HTTP_PROCESSES": str(http_processes),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pacs.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(home / "serve.log").open("wb"),
    )
    _wait_port(11112, process)
    _wait_port(8000, process)
    wait_log_lines(home / "serve.log", "HTTP API listening", http_processes, process)
    token = subprocess.run(
        [sys.executable, "-m", "pacs.cli", "token", "create", "--role", "radiologist"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return process, Server("pacs", 8000, "/dicom-web", {"Authorization": f"Bearer {token}"})


def _start_orthanc(home: Path) -> tuple[subprocess.Popen[bytes], Server]:
    home.mkdir(parents=True)
    config = {
        "Name": "bench",
        "StorageDirectory": str(home / "storage"),
        "IndexDirectory": str(home / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": 4242,
        "HttpPort": 8042,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "StorageCompression": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (home / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [ORTHANC, str(home / "orthanc.json")],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=(home / "orthanc.log").open("wb"),
    )
    _wait_port(4242, process)
    _wait_port(8042, process)
    return process, Server("orthanc", 8042, "/dicom-web", {})


def _store(folder: Path, port: int, aet: str) -> None:
    subprocess.run(
        [STORESCU, "-aet", "BENCH", "-aec", aet, "+sd", "+r", "127.0.0.1", str(port), str(folder)],
        env={**os.environ, "TCP_NODELAY": "1"},
        check=True,
        capture_output=True,
    )


def _measure(servers: list[Server], repetitions: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of each case on each server: the servers take turns, repetition by repetition
    (first one, then the other, then the other way round), so that the load the machine
    has at one moment weighs on both."""
    cases = {server.name: _cases(server) for server in servers}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in cases}
    for case in CASES:
        for server in servers:
            cases[server.name][case]()  # warm-up: caches built, files in the page cache
            results[server.name][case] = []
        for repetition in range(repetitions):
            for server in servers if repetition % 2 == 0 else servers[::-1]:
                results[server.name][case].append(cases[server.name][case]())
        for server in servers:
            median = statistics.median(results[server.name][case])
            print(f"{server.name:>7} {case:>15}: {1000 * median:8.1f} ms", flush=True)
    for server in servers:
        results[server.name]["series_mb"] = [cases[server.name]["series_mb"]()]
    return results


def _cases(server: Server) -> dict[str, Callable[[], float]]:
    """The cases on *server*, each a function that runs it once and returns its seconds."""

    def fetch(path: str, accept: str = JSON) -> bytes:
        conn = server.connect()  # one each: a slow answer may outlast a keep-alive
        try:
            return server.get(conn, path, accept)
        finally:
            conn.close()

    [study] = json.loads(fetch(f"/studies?PatientID={PATIENT_ID}"))
    study_uid = study["0020000D"]["Value"][0]
    [series] = json.loads(fetch(f"/studies/{study_uid}/series"))
    series_path = f"/studies/{study_uid}/series/{series['0020000E']['Value'][0]}"
    # Every instance's metadata, then their frames; a viewer's frame URLs come from it too.
    instance_uids = [
        document["00080018"]["Value"][0]
        for document in json.loads(fetch(series_path + "/metadata"))
    ]
    if len(instance_uids) != INSTANCES:
        raise RuntimeError(f"{server.name} holds {len(instance_uids)} instances")
    frame_paths = [f"{series_path}/instances/{uid}/frames/1" for uid in instance_uids]
    series_bytes = len(fetch(series_path, DICOM_AS_STORED))

    def timed(path: str, accept: str) -> Callable[[], float]:
        def run() -> float:
            conn = server.connect()
            conn.connect()  # outside the time, as a browser's open connection would be
            start = time.perf_counter()
            server.get(conn, path, accept)
            seconds = time.perf_counter() - start
            conn.close()
            return seconds

        return run

    return {
        "series_metadata": timed(series_path + "/metadata", JSON),
        "study_qido": timed(f"/studies?PatientID={PATIENT_ID}", JSON),
        "instance_qido": timed(series_path + "/instances?limit=1000", JSON),
        "series_wado": lambda: _curl(server, series_path, DICOM_AS_STORED, series_bytes),
        "viewer": lambda: _viewer(server, series_path, frame_paths),
        "series_mb": lambda: series_bytes / 1e6,
    }


def _curl(server: Server, path: str, accept: str, size: int) -> float:
    """Seconds curl takes to fetch *path* (a C client: Python's would be the bottleneck)."""
    headers = [
        part for name, value in server.headers.items() for part in ("-H", f"{name}: {value}")
    ]
    url = f"http://127.0.0.1:{server.port}{server.root}{path}"
    command = ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total} %{size_download}"]
    result = subprocess.run(
        [*command, *headers, "-H", f"Accept: {accept}", url],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, downloaded = result.stdout.split()
    if int(downloaded) != size:
        raise RuntimeError(f"{server.name} sent {downloaded} bytes of {path}, not {size}")
    return float(seconds)


def _viewer(server: Server, series_path: str, frame_paths: list[str]) -> float:
    """Seconds from asking for the series metadata to the last of its frames, the frames
    fetched over VIEWER_CONNECTIONS connections, each taking the next frame when done."""
    pending: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    errors: list[BaseException] = []
    go = threading.Event()

    def worker() -> None:
        conn = server.connect()
        conn.connect()  # open before the clock starts, as a viewer's page has them
        go.wait()
        try:
            while (path := pending.get()) is not None:
                server.get(conn, path, FRAMES)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(VIEWER_CONNECTIONS)]
    for thread in threads:
        thread.start()
    conn = server.connect()
    conn.connect()
    start = time.perf_counter()
    server.get(conn, series_path + "/metadata", JSON)
    for path in frame_paths:
        pending.put(path)
    for _ in threads:
        pending.put(None)
    go.set()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    conn.close()
    if errors:
        raise errors[0]
    return seconds


def _write_results(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    summary: dict[str, dict[str, float]] = {}
    for case in CASES:
        ours = statistics.median(results["pacs"][case])
        theirs = statistics.median(results["orthanc"][case])
        summary[case] = {
            "pacs_ms": round(1000 * ours, 1),
            "orthanc_ms": round(1000 * theirs, 1),
            "ratio_pacs_over_orthanc": round(ours / theirs, 3),
        }
    megabytes = results["pacs"]["series_mb"][0]
    wado = summary["series_wado"]
    wado["pacs_mb_per_s"] = round(megabytes / (wado["pacs_ms"] / 1000), 1)
    theirs = results["orthanc"]["series_mb"][0]
    wado["orthanc_mb_per_s"] = round(theirs / (wado["orthanc_ms"] / 1000), 1)
    wado["throughput_ratio_pacs_over_orthanc"] = round(
        wado["pacs_mb_per_s"] / wado["orthanc_mb_per_s"], 2
    )
    result = {
        "benchmark": "dicomweb",
        "command": "python bench/dicomweb.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "repetitions": args.repetitions,
            "instances": INSTANCES,
            "viewer_connections": VIEWER_CONNECTIONS,
            "pacs_http_processes": args.http_processes,
        },
        "medians": summary,
        "runs_ms": {
            server: {case: [round(1000 * s, 2) for s in results[server][case]] for case in CASES}
            for server in results
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
