"""LUNA16-style evaluation: ``python -m models.evaluate --model NAME --data DATA``.

``synthetic`` (a): held-out synthetic-in-real scans, the held-out CT (LIDC-IDRI-0001, never a
training background) with nodules inserted from seeds never used in training, plus held-out
phantoms; the scan's real LUNA16 nodule counts as a nodule and its excluded regions are
honoured. ``lidc`` (b): the real LIDC scans and their LUNA16 annotations. ``validation``:
phantoms from seeds used neither in training nor in (a), where operating points such as the
report threshold are chosen (``froc.report_threshold``), so that (a) stays untouched by any
choice; ``validation-thick``: other such phantoms on 3 mm slices (two averaged), the partial
volume of thick-slice CT that (a)'s real scan has and the phantoms otherwise lack. Writes the
curve as JSON and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.dataset import read_series
from models.detector import Detector, load_detector
from models.froc import FP_RATES, Froc, Scan, Scored, Sphere, froc, report_threshold
from models.luna16 import Annotation, read_annotations
from models.registry import BUILTIN, Registry
from models.sliding import detect
from models.synthetic import Background, chest_phantom, insert_nodule, random_nodule
from models.volume import Volume, thick_slices

ANNOTATIONS = Path("data/ct/annotations/luna16_annotations_LIDC0001-0002.csv")
EXCLUDED = Path("data/ct/annotations/luna16_annotations_excluded_LIDC0001-0002.csv")
HELD_OUT_SCAN = Path("data/ct/LIDC-IDRI-0001")
#: Evaluation seeds: training uses 20261126 and phantom seeds from 1000; these never overlap.
SYNTHETIC_SEED = 70_000
PHANTOM_SEED = 90_000
#: Validation phantoms (operating points are chosen here, never on the held-out seeds above).
VALIDATION_PHANTOM_SEED = 80_000
#: Validation on thick slices: phantoms from these seeds with every two 1.5 mm slices averaged
#: into one of 3 mm, as LIDC-IDRI-0001's 2.5 mm slices are (named 2026-12-03 before any use).
VALIDATION_THICK_SEED = 81_000
NODULES_PER_SCAN = 4


def _spheres(rows: list[Annotation], uid: str) -> list[Sphere]:
    return [Sphere(a.centre, a.diameter_mm) for a in rows if a.seriesuid == uid]


@dataclass(frozen=True)
class Case:
    """A scan to detect in and its truth: nodules, and regions whose detections do not count."""

    volume: Volume
    nodules: list[Sphere]
    excluded: list[Sphere]


def _scan(detector: Detector, case: Case) -> Scan:
    candidates = detect(detector, case.volume)
    return Scan(case.nodules, case.excluded, [Scored(c.centre, c.probability) for c in candidates])


def inserted_cases(
    root: Path, folder: Path, seed: int, count: int, slab: int = 1
) -> Iterator[Case]:
    """``count`` copies of the CT in *folder* with nodules inserted (generators seeded ``seed``,
    ``seed + 1``, ...), then every ``slab`` slices averaged into one; its LUNA16 nodules count
    too, and its excluded regions are honoured (and kept clear of inserted nodules)."""
    uid, scan = read_series(root / folder)
    truth = _spheres(read_annotations(root / ANNOTATIONS), uid)
    excluded = _spheres(read_annotations(root / EXCLUDED, excluded=True), uid)
    background = Background.of(scan)
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        volume = Volume(scan.array.copy(), scan.affine)
        inserted = _insert(volume, background, rng, avoid=truth + excluded)
        seen = thick_slices(volume, slab) if slab > 1 else volume
        yield Case(seen, truth + inserted, excluded)


def phantom_cases(seed: int, count: int, slab: int = 1) -> Iterator[Case]:
    """``count`` chest phantoms (seeds ``seed``, ``seed + 1``, ...) with nodules inserted, and
    every ``slab`` slices then averaged into one (thick slices)."""
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        volume = chest_phantom(rng)
        inserted = _insert(volume, Background.of(volume), rng, avoid=[])
        seen = thick_slices(volume, slab) if slab > 1 else volume
        yield Case(seen, inserted, [])


def synthetic_scans(detector: Detector, root: Path, real: int, phantoms: int) -> list[Scan]:
    cases = inserted_cases(root, HELD_OUT_SCAN, SYNTHETIC_SEED, real)
    return [_scan(detector, case) for case in cases] + phantom_scans(
        detector, PHANTOM_SEED, phantoms
    )


def phantom_scans(detector: Detector, seed: int, count: int, slab: int = 1) -> list[Scan]:
    """:func:`phantom_cases`, detected in."""
    return [_scan(detector, case) for case in phantom_cases(seed, count, slab)]


def _insert(
    volume: Volume, background: Background, rng: np.random.Generator, avoid: list[Sphere]
) -> list[Sphere]:
    placed: list[Sphere] = []
    while len(placed) < NODULES_PER_SCAN:
        nodule = random_nodule(background, rng)
        if nodule is None:
            break
        clear = all(
            np.linalg.norm(np.subtract(nodule.centre, s.centre))
            > (nodule.diameter_mm + s.diameter_mm) / 2 + 5
            for s in avoid + placed
        )
        if clear:
            insert_nodule(volume, nodule)
            placed.append(Sphere(nodule.centre, nodule.diameter_mm))
    return placed


def lidc_scans(detector: Detector, root: Path, folders: list[Path]) -> list[Scan]:
    annotations = read_annotations(root / ANNOTATIONS)
    excluded = read_annotations(root / EXCLUDED, excluded=True)
    scans = []
    for folder in folders:
        uid, volume = read_series(folder)
        case = Case(volume, _spheres(annotations, uid), _spheres(excluded, uid))
        scans.append(_scan(detector, case))
    return scans


def write_report(result: Froc, title: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"title": title, **asdict(result)}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(result.fps_per_scan, result.sensitivity, drawstyle="steps-post")
    axes.scatter(list(result.at_rates), list(result.at_rates.values()), color="C3", zorder=3)
    axes.set_xscale("log", base=2)
    axes.set_xlim(1 / 16, 16)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("false positives per scan")
    axes.set_ylabel("sensitivity")
    axes.set_title(f"{title}: CPM {result.cpm:.3f}")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="demo-nodule-centernet")
    parser.add_argument("--version")
    parser.add_argument(
        "--data", choices=["synthetic", "lidc", "validation", "validation-thick"], required=True
    )
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--scans", type=int, default=10, help="synthetic: held-out CT copies")
    parser.add_argument(
        "--phantoms",
        type=int,
        help="synthetic: held-out phantoms (10); validation, validation-thick: phantoms (20)",
    )
    parser.add_argument(
        "--lidc",
        type=Path,
        nargs="*",
        default=[Path("data/ct/LIDC-IDRI-0001"), Path("data/ct/LIDC-IDRI-0002")],
        help="lidc: series folders",
    )
    parser.add_argument("--out", type=Path, help="report path without suffix")
    parser.add_argument("--models", type=Path, nargs="*", default=[], help="extra registry roots")
    args = parser.parse_args()
    entry = Registry([BUILTIN, *args.models]).get(args.model, args.version)
    detector = load_detector(entry)
    started = time.monotonic()
    if args.data == "synthetic":
        scans = synthetic_scans(detector, args.root, args.scans, args.phantoms or 10)
        title = f"{entry.spec.key} on held-out synthetic nodules"
    elif args.data == "validation":
        scans = phantom_scans(detector, VALIDATION_PHANTOM_SEED, args.phantoms or 20)
        title = f"{entry.spec.key} on validation phantoms"
    elif args.data == "validation-thick":
        scans = phantom_scans(detector, VALIDATION_THICK_SEED, args.phantoms or 20, slab=2)
        title = f"{entry.spec.key} on validation phantoms with 3 mm slices"
    else:
        scans = lidc_scans(detector, args.root, [args.root / p for p in args.lidc])
        title = f"{entry.spec.key} on real LIDC annotations"
    result = froc(scans)
    out = args.out or entry.folder / f"froc-{args.data}"
    write_report(result, title, out)
    rates = ", ".join(f"{r:g}: {result.at_rates[r]:.3f}" for r in FP_RATES)
    print(f"{title}: {result.scans} scans, {result.nodules} nodules, {result.detected} ever hit")
    print(f"sensitivity at FP/scan {{{rates}}}; CPM {result.cpm:.3f}")
    print(
        f"score threshold for <= 1 FP/scan: {result.threshold_at_rates[1.0]:.3f} "
        f"(report threshold by the card's rule: {report_threshold(result):.2f}; "
        f"the spec has {entry.spec.report_threshold:.2f})"
    )
    print(f"took {time.monotonic() - started:.0f} s; wrote {out}.json and {out}.png")


if __name__ == "__main__":
    main()
