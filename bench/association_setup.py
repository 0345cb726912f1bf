"""What one association costs `pacs serve`: dcmtk's storescu sends one small instance per
association, one after the other, as a modality that associates per image does; storescu
proposes every storage SOP class it knows (128 presentation contexts, 3 transfer syntaxes each),
so set-up and release dominate.

Server CPU per association (user+sys of its process from /proc, less its idle rate measured
just before) and wall per association, median of the repetitions; with ``--baseline PATH`` the
same for another checkout of the repository, alternating with this one in each repetition (the
machine's drift hits both). One receiver process, no inference worker, SQLite and filesystem.

Usage: python bench/association_setup.py [--associations N] [--repetitions N] [--baseline PATH]
Writes bench/results/association_setup.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.machine import cpu_seconds, save, wait_port

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "association_setup.json"
STORESCU = "/usr/bin/storescu"
INSTANCE = REPO / "data" / "edge-cases" / "CT_small.dcm"
PORT = 11497
IDLE_SECONDS = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--associations", type=int, default=50)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    trees = {"this": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for repetition in range(args.repetitions):
        for name, tree in trees.items():
            run = _measure(tree, args.associations)
            runs[name].append(run)
            print(
                f"[{repetition + 1}/{args.repetitions}] {name:>8}: "
                f"{run['cpu_ms_per_association']:6.1f} ms CPU, "
                f"{run['wall_ms_per_association']:6.1f} ms wall per association",
                flush=True,
            )
    summary = {
        name: {
            key: round(statistics.median(run[key] for run in chosen), 1)
            for key in ("cpu_ms_per_association", "wall_ms_per_association")
        }
        for name, chosen in runs.items()
    }
    args.baseline = str(args.baseline) if args.baseline else None
    save(
        RESULTS,
        "association_setup",
        args,
        summary,
        runs=runs,
        trees={k: str(v) for k, v in trees.items()},
    )


def _measure(tree: Path, associations: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pacs-assoc-") as home:
        env = {
            **os.environ,
            "PACS_HOME": home,
            "PACS_DICOM_PORT": str(PORT),
            "PACS_HTTP_PORT": str(PORT + 1),
            "PACS_RECEIVERS": "1",
            "PACS_WORKERS": "0",
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "pacs.cli", "serve"],
            cwd=tree,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(Path(home) / "serve.log").open("wb"),
        )
        try:
            wait_port(PORT, timeout=300.0)
            time.sleep(1.0)
            idle_start = cpu_seconds(server.pid)
            time.sleep(IDLE_SECONDS)
            idle_rate = (cpu_seconds(server.pid) - idle_start) / IDLE_SECONDS
            cpu_start, start = cpu_seconds(server.pid), time.perf_counter()
            for _ in range(associations):
                subprocess.run(
                    [STORESCU, "-aec", "PACS", "127.0.0.1", str(PORT), str(INSTANCE)],
                    env={**os.environ, "TCP_NODELAY": "1"},
                    check=True,
                    capture_output=True,
                )
            wall = time.perf_counter() - start
            cpu = cpu_seconds(server.pid) - cpu_start - idle_rate * wall
        finally:
            server.terminate()
            server.wait(30)
    return {
        "cpu_ms_per_association": 1000 * cpu / associations,
        "wall_ms_per_association": 1000 * wall / associations,
        "idle_cpu_percent": 100 * idle_rate,
    }


if __name__ == "__main__":
    main()
