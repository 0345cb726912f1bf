"""Recipe for a convolutional second stage of the demo detector (:mod:`models.candidate_cnn`).

Not bundled: the network it makes was measured against 1.1.0's feature filter and not kept
(``models/zoo/demo-nodule-centernet/1.1.0/card.md``, "Tried after 1.1.0"). The recipe stays so
that the result can be reproduced and the stage tried again behind a better first stage.

``python -m models.candidate_cnn_recipe --out DIR --cache var/candidates.npz`` runs the
detector's first stage (``--version``, 1.0.0's weights) on the training scans below, keeping
its best :data:`CANDIDATES` per scan, labels each a nodule when its centre lies within an
inserted nodule's radius (LUNA16's hit rule; candidates in excluded regions are left out),
stores each one's features and cube in ``--cache`` (~35 minutes on the 2-core development CPU;
a later run with the same cache skips it), then trains the network (:data:`EPOCHS` epochs,
~12 minutes) and writes ``candidate-cnn.pt``, printing its SHA-256 for model.yaml
(``candidate_filter``, ``candidate_filter_sha256``, ``candidate_filter_kind: cnn``).
Deterministic on the CPU for a given torch build and thread count: the same scans, the same
candidates, seeded initialisation and batches.

Protocol. The training scans are the feature filter's (:func:`models.candidate_recipe.
training_cases`, 40 scans) and more from seeds of their own: phantoms :data:`PHANTOM_SEED`+ on
1.5 mm and 3 mm slices, and LIDC-IDRI-0002 (the detector's training background) with nodules
from :data:`INSERT_SEED`+ on 1.25 mm and 2.5 mm slices; 124 scans in all. Never
LIDC-IDRI-0001, nor the validation (80000+, 81000+) or held-out (70000+, 90000+) seeds of
:mod:`models.evaluate`. The cube's size, the network's widths, the number of candidates, the
epochs and how its score is combined with the detector's were chosen by the CPM on the
validation phantoms (``--data validation`` and ``--data validation-thick``); the held-out set
was run once, after.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.candidate_cnn import CandidateCNN, CandidateNetwork, cube_tensor, stored_cube
from models.candidate_features import features
from models.candidate_recipe import (
    BACKGROUND,
    labelled_candidates,
    recipe_arguments,
    training_cases,
)
from models.detector import load_detector
from models.evaluate import Case, inserted_cases, phantom_cases
from models.registry import BUILTIN, Registry, sha256_of

PHANTOM_SEED = 84_000
THICK_PHANTOM_SEED = 84_100
INSERT_SEED = 85_000
THICK_INSERT_SEED = 85_100
PHANTOMS = 30
COPIES = 12
#: First-stage candidates kept per scan, for training and at test time (model.yaml).
CANDIDATES = 64
EPOCHS = 12
BATCH = 64
LEARNING_RATE = 2e-3
PEAK_LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-3
SEED = 0
OUTPUT = "candidate-cnn.pt"


def all_training_cases(root: Path) -> Iterator[Case]:
    return chain(
        training_cases(root),
        phantom_cases(PHANTOM_SEED, PHANTOMS),
        phantom_cases(THICK_PHANTOM_SEED, PHANTOMS, slab=2),
        inserted_cases(root, BACKGROUND, INSERT_SEED, COPIES),
        inserted_cases(root, BACKGROUND, THICK_INSERT_SEED, COPIES, slab=2),
    )


@dataclass(frozen=True)
class Collected:
    """Labelled candidates: features ``(N, F)``, cubes ``(N, SIDE, SIDE, SIDE)`` int16 HU,
    and whether each is a nodule."""

    features: npt.NDArray[np.float64]
    cubes: npt.NDArray[np.int16]
    labels: npt.NDArray[np.bool_]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, features=self.features, cubes=self.cubes, labels=self.labels)

    @classmethod
    def load(cls, path: Path) -> Collected:
        with np.load(path) as stored:
            return cls(
                stored["features"].astype(np.float64),
                stored["cubes"].astype(np.int16),
                stored["labels"].astype(np.bool_),
            )


def collect(root: Path, model: str, version: str) -> Collected:
    """Every labelled candidate of the training scans."""
    detector = load_detector(Registry([BUILTIN]).get(model, version))
    detector.spec = detector.spec.model_copy(update=dict(max_detections=CANDIDATES))
    rows, cubes, labels = [], [], []
    for hu, candidate, label in labelled_candidates(detector, all_training_cases(root)):
        rows.append(features(hu, candidate.probability, candidate.diameter_mm))
        cubes.append(stored_cube(hu))
        labels.append(label)
    return Collected(np.stack(rows), np.stack(cubes), np.asarray(labels, dtype=np.bool_))


def augment(x: torch.Tensor) -> torch.Tensor:
    """Each cube of the batch mirrored along z, y and x, and x and y swapped, each at random."""
    for dim in (2, 3, 4):
        chosen = torch.rand(x.shape[0]) < 0.5
        x[chosen] = x[chosen].flip(dim)
    chosen = torch.rand(x.shape[0]) < 0.5
    x[chosen] = x[chosen].transpose(3, 4)
    return x


def train(data: Collected, seed: int = SEED) -> CandidateCNN:
    torch.manual_seed(seed)
    np.random.seed(seed)
    rows = data.features.astype(np.float32)
    mean, spread = rows.mean(0), rows.std(0) + 1e-6
    x = cube_tensor(data.cubes)
    f = torch.from_numpy((rows - mean) / spread)
    y = torch.tensor(data.labels.astype(np.float32))
    network = CandidateNetwork(f.shape[1])
    optimiser = torch.optim.AdamW(network.parameters(), LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * ((len(y) + BATCH - 1) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, PEAK_LEARNING_RATE, total_steps=steps)
    positives = y.sum()
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=((len(y) - positives) / positives).sqrt())
    for epoch in range(EPOCHS):
        network.train()
        started, total = time.monotonic(), 0.0
        order = torch.randperm(len(y))
        for start in range(0, len(y), BATCH):
            batch = order[start : start + BATCH]
            loss = loss_fn(network(augment(x[batch].clone()), f[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch}: loss {total / len(y):.4f}, {time.monotonic() - started:.0f} s")
    return CandidateCNN(network, mean, spread)


def main(argv: list[str] | None = None) -> None:
    parser = recipe_arguments(__doc__)
    parser.add_argument("--cache", type=Path, required=True, help="the collected candidates")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.monotonic()
    if args.cache.is_file():
        data = Collected.load(args.cache)
    else:
        data = collect(args.root, args.model, args.version)
        data.save(args.cache)
    print(f"{len(data.labels)} candidates, {int(data.labels.sum())} nodules", flush=True)
    network = train(data)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / OUTPUT
    torch.save(network.state(), path)
    print(f"took {time.monotonic() - started:.0f} s; wrote {path}, SHA-256 {sha256_of(path)}")


if __name__ == "__main__":
    main()
