"""Inference benchmark: one study at a time with MONAI's sliding-window inferer (a) against our
cross-study batcher (b), same model, same device, end to end.

Each study is measured from the archive's blobs to findings: fetch, parse, decode, volume,
resample, model, stitching, NMS. The studies are real chest CTs from data/ (LIDC-IDRI-0001 and
-0002, alternating), stored as N separate studies (new UIDs) in a scratch archive. Each mode runs
in its own process (so peak memory is its own), --repetitions times; medians are reported.

(a) baseline: for each study in turn: fetch + decode on the same thread pool, build the volume,
    resample, then monai.inferers.sliding_window_inference over the whole volume (patch and
    overlap from the model card, sw_batch_size = --batch-size), decode peaks, NMS.
(b) ours: --concurrency studies in flight through inference.pipeline.NoduleDetection sharing
    one Batcher (batch size --batch-size), as `pacs worker` runs them.

Usage: python bench/inference.py [--studies N] [--repetitions R] [--device cpu|cuda] [--model NAME]
Writes bench/results/inference[-DEVICE][-MODEL].json (MODEL when not the demo model).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import machine  # noqa: E402

DEFAULT_MODEL = "demo-nodule-centernet"
SERIES = [
    REPO / "data" / "ct" / "LIDC-IDRI-0001",
    REPO / "data" / "ct" / "LIDC-IDRI-0002",
]


def build_archive(root: Path, studies: int) -> list[str]:
    """Store ``studies`` copies of the sample CTs (alternating) with fresh UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    from pacs.index import Database, upgrade
    from pacs.ingest import Archive, Source
    from pacs.storage import open_store
    from tests.dicom import dicom_files, encode

    db = Database(f"sqlite:///{root / 'index.db'}")
    upgrade(db)
    archive = Archive(db, open_store(f"file://{root / 'storage'}", None, None))
    sources = [s for s in SERIES if s.is_dir() and dicom_files(s)]
    uids = []
    for n in range(studies):
        study, series = str(generate_uid()), str(generate_uid())
        for path in dicom_files(sources[n % len(sources)]):
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientID = f"BENCH-{n}"
            archive.store(encode(ds), Source("IMPORT"))
        uids.append(study)
    db.dispose()
    return uids


def run_mode(mode: str, root: Path, studies: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One repetition of one mode, in this process."""
    import torch

    from inference.batcher import Batcher
    from inference.loading import build_volume, read_series
    from inference.pipeline import NoduleDetection
    from inference.selection import SelectionRules, select_series
    from models.detector import load_detector
    from models.registry import BUILTIN, Registry
    from models.sliding import prepare, rescored, to_candidates
    from pacs.index import Database, series_of_study
    from pacs.ingest import Archive
    from pacs.jobs import Job, JobStatus
    from pacs.storage import open_store

    torch.set_num_threads(args.threads) if args.threads else None
    from pacs.settings import PacsSettings

    registry = Registry([BUILTIN, PacsSettings().home / "models"])  # site models too
    detector = load_detector(registry.get(args.model), args.device)
    spec = detector.spec
    db = Database(f"sqlite:///{root / 'index.db'}")
    blobs = open_store(f"file://{root / 'storage'}", None, None)
    rules = SelectionRules()
    latencies: list[float] = []
    found: list[int] = []
    # One-time costs outside both timings: MONAI's inferer import (mode a's path alone) and, on
    # a GPU, the first forward pass (CUDA context, kernels). Without this the first study of
    # mode a took ~16 s on an H200 against ~0.55 s for each next one (causes not separated).
    from monai.inferers.utils import sliding_window_inference  # noqa: F401

    if args.device.startswith("cuda"):
        detector.predict(torch.zeros((args.batch_size, 1, *spec.patch_size), device=args.device))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    if mode == "a":
        pool = ThreadPoolExecutor(4)
        for study in studies:
            t0 = time.perf_counter()
            with db.read() as conn:
                entries = series_of_study(conn, study)
            read = [read_series(e, blobs.get, pool) for e in entries]
            selection = select_series([h for h, _ in read], rules)
            assert selection.chosen is not None, selection.rejections
            chosen = selection.chosen.SeriesInstanceUID
            datasets = {h.SeriesInstanceUID: d for h, d in read}[chosen]
            volume = build_volume(datasets, pool)
            prepared = prepare(volume, spec, args.device)
            detections = detector.detect_volume(prepared.image, args.batch_size)
            candidates = rescored(detector, volume, to_candidates(prepared.grid, detections, spec))
            found.append(len(candidates))
            latencies.append(time.perf_counter() - t0)
        pool.shutdown()
    else:
        batcher = Batcher(detector, args.batch_size, args.batch_wait_ms / 1000)
        # Same stages as (a): no SR/SEG written back.
        handler = NoduleDetection(Archive(db, blobs), detector, batcher, rules, dicom_results=False)

        def one(item: tuple[int, str]) -> float:
            t0 = time.perf_counter()
            handler(Job(item[0], "nodule-detection", item[1], {}, JobStatus.RUNNING, 1, 3))
            return time.perf_counter() - t0

        with ThreadPoolExecutor(args.concurrency) as pool:
            latencies = list(pool.map(one, enumerate(studies, start=1)))
        stats = batcher.stats()
        batcher.close()
        handler.close()
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "mode": mode,
        "studies": len(studies),
        "seconds": round(elapsed, 3),
        "studies_per_minute": round(60 * len(studies) / elapsed, 2),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(sorted(latencies)[max(0, round(0.95 * len(latencies)) - 1)], 3),
        "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if mode == "b":
        result["batches"] = stats.batches
        result["mixed_batches"] = stats.mixed_batches
        result["model_seconds"] = round(stats.model_seconds, 3)
    else:
        result["candidates_per_study"] = found
    if args.device.startswith("cuda"):
        result["peak_device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    db.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batch-wait-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "ROOT"), help=argparse.SUPPRESS)
    parser.add_argument("--uids", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, root = args.child
        print(json.dumps(run_mode(mode, Path(root), args.uids.split(","), args)))
        return
    with tempfile.TemporaryDirectory(prefix="pacs-bench-inference-") as scratch:
        root = Path(scratch)
        uids = build_archive(root, args.studies)
        runs: list[dict[str, Any]] = []
        for repetition in range(args.repetitions):
            for mode in ("a", "b"):
                command = [
                    sys.executable,
                    __file__,
                    "--child",
                    mode,
                    str(root),
                    "--uids",
                    ",".join(uids),
                    "--device",
                    args.device,
                    "--model",
                    args.model,
                    "--batch-size",
                    str(args.batch_size),
                    "--batch-wait-ms",
                    str(args.batch_wait_ms),
                    "--concurrency",
                    str(args.concurrency),
                    "--threads",
                    str(args.threads),
                ]
                child = subprocess.run(command, capture_output=True, text=True)
                if child.returncode != 0:
                    sys.exit(f"mode {mode} failed (exit {child.returncode}):\n{child.stderr}")
                run = json.loads(child.stdout.strip().splitlines()[-1])
                run["repetition"] = repetition
                runs.append(run)
                print(json.dumps(run), flush=True)
    summary = {}
    for mode in ("a", "b"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("studies_per_minute", "latency_p50_s", "latency_p95_s", "peak_host_rss_mb")
        }
    ratios = [
        b["studies_per_minute"] / a["studies_per_minute"]
        for a, b in zip(
            [r for r in runs if r["mode"] == "a"],
            [r for r in runs if r["mode"] == "b"],
            strict=True,
        )
    ]
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/inference.py", *sys.argv[1:]]),
        "machine": machine(processor=platform.processor(), device=args.device),
        "model": args.model,
        "studies": args.studies,
        "series": [s.name for s in SERIES if s.is_dir()],
        "summary": summary,
        "throughput_ratio_b_over_a_median": round(statistics.median(ratios), 3),
        "runs": runs,
    }
    name = "inference" if args.device == "cpu" else f"inference-{args.device.replace(':', '')}"
    if args.model != DEFAULT_MODEL:
        name += f"-{args.model}"
    out = REPO / "bench" / "results" / f"{name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {"summary": summary, "ratio": report["throughput_ratio_b_over_a_median"]}, indent=2
        )
    )


if __name__ == "__main__":
    main()
