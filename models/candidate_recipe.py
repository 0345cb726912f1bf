"""Recipe for the demo detector's candidate filter (:mod:`models.candidate_filter`).

``python -m models.candidate_recipe --out models/zoo/demo-nodule-centernet/1.1.0`` runs the
detector's first stage (``--version``, 1.0.0's weights) on the training scans below, labels
each candidate a nodule when its centre lies within an inserted nodule's radius (LUNA16's hit
rule; candidates in excluded regions are left out), fits the filter to them and writes
``candidate-filter.json``, printing its SHA-256 for model.yaml. Deterministic: the same scans,
the same candidates, L-BFGS from a fixed start. ~15 minutes on the 2-core development CPU.

Protocol. The training scans come from seeds of their own: phantoms FILTER_PHANTOM_SEED+ on
1.5 mm and (every two slices averaged) 3 mm slices, and LIDC-IDRI-0002 (the detector's
training background) with nodules from FILTER_INSERT_SEED+ on its own 1.25 mm slices and on
2.5 mm ones. Never LIDC-IDRI-0001, nor the validation (80000+, 81000+) or held-out (70000+,
90000+) seeds of :mod:`models.evaluate`. The features, the network's size and weight decay
and the way its score is combined with the detector's were chosen by the CPM on the validation
phantoms (``models.evaluate --data validation`` and ``--data validation-thick``), among ten
variants; the held-out set was run once, after.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.candidate_features import cube, features
from models.candidate_filter import CandidateFilter
from models.detections import Candidate
from models.detector import Detector, load_detector
from models.evaluate import Case, inserted_cases, phantom_cases
from models.froc import inside
from models.registry import BUILTIN, Registry, sha256_of
from models.sliding import detect

FILTER_PHANTOM_SEED = 82_000
FILTER_THICK_PHANTOM_SEED = 82_100
FILTER_INSERT_SEED = 83_000
FILTER_THICK_INSERT_SEED = 83_100
BACKGROUND = Path("data/ct/LIDC-IDRI-0002")
PHANTOMS = 12
COPIES = 8
OUTPUT = "candidate-filter.json"


def training_cases(root: Path) -> Iterator[Case]:
    return chain(
        phantom_cases(FILTER_PHANTOM_SEED, PHANTOMS),
        phantom_cases(FILTER_THICK_PHANTOM_SEED, PHANTOMS, slab=2),
        inserted_cases(root, BACKGROUND, FILTER_INSERT_SEED, COPIES),
        inserted_cases(root, BACKGROUND, FILTER_THICK_INSERT_SEED, COPIES, slab=2),
    )


def nodule_label(centre: tuple[float, float, float], case: Case) -> bool | None:
    """True: *centre* hits one of the case's nodules; None: it lies in an excluded region."""
    if any(inside(centre, sphere) for sphere in case.nodules):
        return True
    if any(inside(centre, sphere) for sphere in case.excluded):
        return None
    return False


def labelled_candidates(
    detector: Detector, cases: Iterable[Case]
) -> Iterator[tuple[npt.NDArray[np.float32], Candidate, bool]]:
    """The first stage's candidates on *cases*, those in excluded regions left out: the CT
    cube around each (:func:`cube`), the candidate, whether it is a nodule. Prints a line per
    scan."""
    count = nodules = 0
    for number, case in enumerate(cases, 1):
        for candidate in detect(detector, case.volume, second_stage=False):
            label = nodule_label(candidate.centre, case)
            if label is None:
                continue
            count, nodules = count + 1, nodules + label
            yield cube(case.volume, candidate.centre), candidate, label
        print(f"scan {number}: {count} candidates, {nodules} nodules", flush=True)


def recipe_arguments(description: str | None) -> argparse.ArgumentParser:
    """The options both second-stage recipes take: the first stage, the repository, the
    folder to write to."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="demo-nodule-centernet")
    parser.add_argument("--version", default="1.0.0", help="the first stage's weights")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write to")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = recipe_arguments(__doc__).parse_args(argv)
    detector = load_detector(Registry([BUILTIN]).get(args.model, args.version))
    started = time.monotonic()
    rows, labels = [], []
    for hu, candidate, label in labelled_candidates(detector, training_cases(args.root)):
        rows.append(features(hu, candidate.probability, candidate.diameter_mm))
        labels.append(label)
    network = CandidateFilter.fit(np.stack(rows), np.asarray(labels))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / OUTPUT
    path.write_text(network.to_json() + "\n")
    print(f"took {time.monotonic() - started:.0f} s; wrote {path}, SHA-256 {sha256_of(path)}")


if __name__ == "__main__":
    main()
