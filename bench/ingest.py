"""Ingest benchmark: this archive against Orthanc, in the same run, with dcmtk's storescu.

Scenarios (3 repetitions each, medians reported):
  ct300_1assoc   one 300-instance 512x512 int16 CT study (~158 MB) over 1 association
  ct300_4assoc   the same over 4 parallel associations (4 storescu processes, 75 files each)
  ct100_1assoc   its first 100 instances (does server memory grow with study size?)
  20x50_1assoc   20 studies x 50 instances (~527 MB) over 1 association
  20x50_4assoc   the same over 4 parallel associations (5 studies each)
  ct100_each     the first 100 instances, one association each, one after the other (a
                 modality that associates per image): association set-up and release dominate

Every repetition starts each server on empty storage, with the files to send read into the page
cache just before its senders start. Everything runs inside a network namespace
that has only loopback (Orthanc 1.10 cannot bind to loopback alone); TCP_NODELAY=1 is set for
Orthanc and storescu, as our server sets it on its own sockets. Writes bench/results/ingest.json.

Each run also records the server's CPU time (user+sys of its processes, from /proc) spent
while receiving, reported per instance.

``--backends postgresql,s3`` adds our archive on PostgreSQL (index; files as usual) and on
S3 (moto on loopback, as the tests use; SQLite index) beside the embedded defaults, each
against the same Orthanc run, so a regression of either shows. Their CPU figure is the
archive's processes only: PostgreSQL's and moto's CPU is not in it.

Usage: python bench/ingest.py [--repetitions N] [--receivers N] [--scenarios NAME,...]
       [--backends postgresql,s3] [--keep]
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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.generate import write_study
from bench.machine import cpu_seconds, machine, wait_log_lines

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "ingest.json"
NETNS_FLAG = "PACS_BENCH_IN_NETNS"
STORESCU = "/usr/bin/storescu"
ORTHANC = "/usr/sbin/Orthanc"


@dataclass
class Run:
    repetition: int
    server: str
    scenario: str
    instances: int
    megabytes: float
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float  # user+sys of the server (all its processes) while receiving
    system_cpu_seconds: float  # the sys part of it (the kernel's work for the server)

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--receivers", type=int, default=2, help="our receiver processes")
    parser.add_argument("--keep", action="store_true", help="keep the generated studies")
    parser.add_argument("--scenarios", help="comma-separated subset of the scenarios to run")
    parser.add_argument(
        "--backends", default="", help="also our archive on: postgresql, s3 (comma-separated)"
    )
    args = parser.parse_args()
    if os.environ.get(NETNS_FLAG) is None:
        sys.exit(_rerun_in_netns())

    work = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
    try:
        print("generating studies ...", flush=True)
        big = work / "ct300"
        mb_big = write_study(big, 300, "BENCH300", seed=0) / 1e6
        small = work / "ct100"
        small.mkdir()
        for path in sorted(big.iterdir())[:100]:
            os.link(path, small / path.name)
        mb_small = sum(p.stat().st_size for p in small.iterdir()) / 1e6
        many = work / "20x50"
        wanted = args.scenarios.split(",") if args.scenarios else ["20x50"]
        mb_many = (
            sum(
                write_study(many / f"study{i:02d}", 50, f"BENCH{i:02d}", seed=i + 1)
                for i in range(20)
            )
            / 1e6
            if any(name.startswith("20x50") for name in wanted)
            else 0.0  # not run: not generated
        )
        os.sync()  # start measuring with the generated files on disk, not being flushed
        ct300 = sorted(big.iterdir())
        studies = [many / f"study{i:02d}" for i in range(20)]
        # name: (groups of paths, one storescu each; instances; MB; storescu at once)
        scenarios = {
            "ct300_1assoc": ([[big]], 300, mb_big, 1),
            "ct300_4assoc": ([ct300[k::4] for k in range(4)], 300, mb_big, 4),
            "ct100_1assoc": ([[small]], 100, mb_small, 1),
            "20x50_1assoc": ([studies], 1000, mb_many, 1),
            "20x50_4assoc": ([studies[k::4] for k in range(4)], 1000, mb_many, 4),
            "ct100_each": ([[path] for path in sorted(small.iterdir())], 100, mb_small, 1),
        }
        if args.scenarios:
            scenarios = {name: scenarios[name] for name in args.scenarios.split(",")}
        runs: list[Run] = []
        backends = _Backends([name for name in args.backends.split(",") if name])
        servers = ["pacs", *(f"pacs-{name}" for name in backends.names), "orthanc"]
        for repetition in range(args.repetitions):
            for scenario, (groups, count, megabytes, at_once) in scenarios.items():
                for server in servers:
                    run = _measure(
                        server,
                        scenario,
                        groups,
                        count,
                        megabytes,
                        work,
                        args.receivers,
                        at_once,
                        backends.environment(server),
                    )
                    run.repetition = repetition
                    runs.append(run)
                    print(
                        f"[{repetition + 1}/{args.repetitions}] {scenario:>13} {server:>7}: "
                        f"{run.per_second:6.1f} inst/s {run.megabytes / run.seconds:6.1f} MB/s "
                        f"peak RSS {run.peak_rss_mb:6.1f} MB "
                        f"CPU {1000 * run.cpu_seconds / run.instances:5.2f} ms/inst "
                        f"(sys {1000 * run.system_cpu_seconds / run.instances:4.2f})",
                        flush=True,
                    )
        _write_results(runs, args, servers)
    finally:
        backends.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _rerun_in_netns() -> int:
    name = f"pacs-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        env = {**os.environ, NETNS_FLAG: name}
        return subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, *sys.argv], env=env, check=False
        ).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _measure(
    server: str,
    scenario: str,
    groups: list[list[Path]],
    count: int,
    megabytes: float,
    work: Path,
    receivers: int,
    at_once: int,
    environment: dict[str, str],
) -> Run:
    # A fresh home each time, all deleted at the end of the run: deleting the previous
    # repetition's ~300 files just before this one made ext4 (without a journal, as here)
    # step over every recently freed inode on each file it created (`recently_deleted` in
    # `find_inode_bit`: ~13% of our server's CPU under perf), a cost of the benchmark's
    # clean-up that no archive receiving a study pays.
    home = Path(tempfile.mkdtemp(prefix=f"{server}-home-", dir=work))
    if server == "orthanc":
        process, port, aet = _start_orthanc(home)
    else:
        process, port, aet = _start_pacs(home, receivers, environment)
    try:
        env = {**os.environ, "TCP_NODELAY": "1"}
        _read_into_page_cache([path for group in groups for path in group])
        cpu_before, system_before = _cpu_seconds(process.pid)
        start = time.perf_counter()
        for first in range(0, len(groups), at_once):
            senders = [
                subprocess.Popen(
                    [STORESCU, "-aet", "BENCH", "-aec", aet, "+sd", "+r", "127.0.0.1", str(port)]
                    + [str(folder) for folder in group],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for group in groups[first : first + at_once]
            ]
            for sender in senders:
                _, err = sender.communicate(timeout=900)
                if sender.returncode != 0:
                    raise RuntimeError(f"storescu to {server} failed: {err.decode()[-500:]}")
        seconds = time.perf_counter() - start
        cpu, system = (after - before for after, before in zip(
            _cpu_seconds(process.pid), (cpu_before, system_before), strict=True
        ))  # fmt: skip
        stored = _count_stored(server, home, environment)
        if stored != count:
            raise RuntimeError(f"{server} stored {stored} of {count} instances")
        peak = _peak_rss_mb(process.pid)
        return Run(0, server, scenario, count, megabytes, seconds, peak, cpu, system)
    finally:
        process.terminate()
        process.wait(30)


def _read_into_page_cache(paths: list[Path]) -> None:
    """Read every file the senders will send, just before they start: this machine's kernel
    reclaims page cache proactively (DAMON: ~10% of a study's pages within 30 s), so the
    sender of whichever server ran first in a repetition read much of the study from disk
    and the next one found it cached."""
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                file.read_bytes()


def _wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 300  # a start on a loaded machine can take minutes
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


class _Backends:
    """PostgreSQL and S3 (moto) for the ``pacs-postgresql`` and ``pacs-s3`` runs: one server
    each for the whole run, a new database or bucket for every run."""

    def __init__(self, names: list[str]) -> None:
        unknown = set(names) - {"postgresql", "s3"}
        if unknown:
            raise SystemExit(f"unknown backends: {', '.join(sorted(unknown))}")
        sys.path.insert(0, str(REPO))
        from tests.servers import PostgresServer, S3Server

        self.names = names
        self.postgres = PostgresServer() if "postgresql" in names else None
        self.s3 = S3Server() if "s3" in names else None

    def environment(self, server: str) -> dict[str, str]:
        if server == "pacs-postgresql" and self.postgres is not None:
            return {"PACS_DATABASE_URL": self.postgres.new_database(migrated=True)}
        if server == "pacs-s3" and self.s3 is not None:
            return {
                "PACS_STORAGE_URL": self.s3.url(),
                "PACS_S3_ACCESS_KEY": self.s3.access_key,
                "PACS_S3_SECRET_KEY": self.s3.secret_key,
            }
        return {}

    def close(self) -> None:
        if self.postgres is not None:
            self.postgres.close()
        if self.s3 is not None:
            self.s3.stop()


def _start_pacs(
    home: Path, receivers: int, environment: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int, str]:
    port = 11112
    env = {
        **os.environ,
        **environment,
        "PACS_HOME": str(home),
        "PACS_DICOM_PORT": str(port),
        "PACS_RECEIVERS": str(receivers),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pacs.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(home / "serve.log").open("wb"),
    )
    _wait_port(port, process)
    # Every receiver says it listens: the port opens with the first, and a connection made
    # before the others run would always go to it.
    wait_log_lines(home / "serve.log", " receiver processes)", receivers, process)
    return process, port, "PACS"


def _start_orthanc(home: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    port = 4242
    config = {
        "Name": "bench",
        "StorageDirectory": str(home / "storage"),
        "IndexDirectory": str(home / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "HttpPort": 8042,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "StorageCompression": False,
        "SyncStorageArea": True,  # fsync each file, its default since 1.7.4, like our store
        "Plugins": [],
    }
    (home / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [ORTHANC, str(home / "orthanc.json")],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=(home / "orthanc.log").open("wb"),
    )
    _wait_port(port, process)
    return process, port, "ORTHANC"


def _count_stored(server: str, home: Path, environment: dict[str, str]) -> int:
    if server != "orthanc":
        result = subprocess.run(
            [sys.executable, "-m", "pacs.cli", "stats", "--json"],
            env={**os.environ, **environment, "PACS_HOME": str(home)},
            capture_output=True,
            text=True,
            check=True,
        )
        return int(json.loads(result.stdout)["instances"])
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:8042/statistics", timeout=30) as response:
        return int(json.load(response)["CountInstances"])


def _peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of the server and its child processes together."""
    total = 0
    process = psutil.Process(pid)
    for member in [process, *process.children(recursive=True)]:
        with Path(f"/proc/{member.pid}/status").open() as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User+system and system CPU time of the server and its child processes."""
    process = psutil.Process(pid)
    members = [process, *process.children(recursive=True)]
    return (
        sum(cpu_seconds(member.pid) for member in members),
        sum(cpu_seconds(member.pid, system_only=True) for member in members),
    )


def _write_results(runs: list[Run], args: argparse.Namespace, servers: list[str]) -> None:
    summary = {}
    for scenario in dict.fromkeys(run.scenario for run in runs):
        medians: dict[str, object] = {}
        for server in servers:
            chosen = [r for r in runs if r.scenario == scenario and r.server == server]
            medians[server] = {
                "instances_per_s": round(statistics.median(r.per_second for r in chosen), 1),
                "mb_per_s": round(statistics.median(r.megabytes / r.seconds for r in chosen), 1),
                "peak_rss_mb": round(statistics.median(r.peak_rss_mb for r in chosen), 1),
                "cpu_ms_per_instance": round(
                    statistics.median(1000 * r.cpu_seconds / r.instances for r in chosen), 2
                ),
                "system_cpu_ms_per_instance": round(
                    statistics.median(1000 * r.system_cpu_seconds / r.instances for r in chosen),
                    2,
                ),
            }
        # Paired by repetition: the two servers of one repetition ran back to back, so their
        # ratio is less exposed to the machine's drift than a ratio of medians.
        pairs: dict[int, dict[str, float]] = {}
        for run in runs:
            if run.scenario == scenario:
                pairs.setdefault(run.repetition, {})[run.server] = run.per_second
        for server in servers[:-1]:  # each of ours against the same repetition's Orthanc
            suffix = server.removeprefix("pacs")
            medians[f"ratio_pacs{suffix.replace('-', '_')}_over_orthanc"] = round(
                statistics.median(p[server] / p["orthanc"] for p in pairs.values()), 2
            )
        summary[scenario] = medians
    result = {
        "benchmark": "ingest",
        "command": "python bench/ingest.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "repetitions": args.repetitions,
            "pacs_receivers": args.receivers,
            "scenarios": args.scenarios or "all",
        },
        "medians": summary,
        "runs": [
            asdict(r)
            | {
                "instances_per_s": round(r.per_second, 1),
                "cpu_ms_per_instance": round(1000 * r.cpu_seconds / r.instances, 2),
                "system_cpu_ms_per_instance": round(1000 * r.system_cpu_seconds / r.instances, 2),
            }
            for r in runs
        ],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
