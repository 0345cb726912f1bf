"""Recipe for the nodule-type classifier, and the check of outline, axes and type on synthetic
nodules against the generator's truth.

Run ``python -m models.character_recipe train`` to remake
``models/zoo/nodule-type/2/parameters.json`` (prints its SHA-256 for
``models.nodule_type.PARAMETERS_SHA256``), ``python -m models.character_recipe
crossvalidate`` for the grouped cross-validation the classifier's features, size and weight
decay were chosen by, ``python -m models.character_recipe validate`` for the figures the
outline's settings were chosen on, and ``python -m models.character_recipe evaluate`` for the
held-out figures (``--fresh`` for the fresh held-out set, ``--seed`` for another unused seed).

Protocol. Training, validation and held-out nodules come from different phantom seeds. Every
choice (features, hidden units, weight decay) is made by ``crossvalidate`` (5-fold, grouped by
phantom, over the training and validation phantoms), with seed 4404 as a secondary check; the
held-out sets are for reporting only. HELD_OUT_SEED (2402) was looked at four times while the
type was worked on, so it no longer judges a new candidate honestly; FRESH_HELD_OUT_SEED was
named (and committed) before any classifier was evaluated on it, and a chosen candidate is
evaluated on it once.
The "detector" the cases simulate is off by up to 1 mm per axis in centre and 20 % in
diameter.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.nodule_type import PARAMETERS, TYPES, TypeClassifier
from models.outline import Outline, axes, outline, volume_mm3
from models.registry import sha256_of
from models.synthetic import (
    Background,
    Density,
    NoduleTruth,
    chest_phantom,
    insert_nodule,
    random_nodule,
)
from models.type_features import features
from models.volume import Volume
from models.volume import thick_slices as thicken

TRAIN_SEED = 1401
#: Nodules for choosing settings and features (never the held-out ones).
VALIDATION_SEED = 3403
HELD_OUT_SEED = 2402
#: A second held-out set, named before any classifier was evaluated on it (seed 2402 had been
#: looked at four times while the type was worked on, so it no longer judges a new candidate
#: honestly). One phantom costs about 3.5 s of CPU with its outlines and features; 60 phantoms
#: give about 400 nodules, a standard error near 0.017 on an accuracy near 0.87.
FRESH_HELD_OUT_SEED = 6606
FRESH_HELD_OUT_PHANTOMS = 60
#: Nodules on thick slices (2.4-3 mm, ``evaluate --thick``), a check only: the training
#: phantoms are isotropic. Seed named before it was first evaluated.
THICK_SEED = 8808
THICK_PHANTOMS = 20
#: Training phantoms (seed TRAIN_SEED): 64 against 32 gained a little in cross-validation.
TRAIN_PHANTOMS = 64
VALIDATION_PHANTOMS = 16
#: Hidden units and weight decay of the classifier, chosen by grouped cross-validation
#: (``crossvalidate``; the card's table): 8 units and 0.01 against 4 / 16 units and
#: 0.003 / 0.03 / 0.1.
HIDDEN = 8
WEIGHT_DECAY = 0.01
#: Generator density -> classifier type.
TYPE_OF = {Density.SOLID: 0, Density.PART_SOLID: 1, Density.GROUND_GLASS: 2}


@dataclass(frozen=True)
class Case:
    """One synthetic nodule, its truth and what the outline step made of it."""

    truth: NoduleTruth
    found: Outline
    spacing: tuple[float, float, float]
    #: Index of the phantom it sits in (cross-validation folds group by phantom).
    phantom: int


def cases(
    seed: int,
    phantoms: int,
    per_phantom: int = 12,
    diameter_range: tuple[float, float] = (4.0, 25.0),
    shape_zyx: tuple[int, int, int] = (112, 160, 192),
    thick_slices: bool = False,
) -> Iterator[Case]:
    """Nodules of all three types (equally likely) in chest phantoms, outlined.

    With ``thick_slices`` the outline is found on the phantom's slices averaged three (0.8,
    1.0 mm) or two (1.25 mm) at a time: 2.4, 3.0 or 2.5 mm slices with their partial volume.
    ``Case.spacing`` is then that volume's, while the truth's mask stays on the generator's
    grid: compare the type only.
    """
    rng = np.random.default_rng(seed)
    for index in range(phantoms):
        spacing = float(rng.choice([0.8, 1.0, 1.25]))
        phantom = chest_phantom(rng, shape_zyx=shape_zyx, spacing_mm=spacing)
        background = Background.of(phantom)
        volume = Volume(phantom.array.copy(), phantom.affine)
        truths: list[NoduleTruth] = []
        for _ in range(per_phantom):
            nodule = random_nodule(background, rng, diameter_range=diameter_range)
            if nodule is None:
                continue
            nodule = dataclasses.replace(nodule, density=Density(rng.choice(list(Density))))
            apart = [
                np.linalg.norm(np.subtract(nodule.centre, t.nodule.centre))
                > nodule.diameter_mm + t.nodule.diameter_mm
                for t in truths
            ]
            if not all(apart):
                continue
            truth = insert_nodule(volume, nodule)
            if truth is not None and truth.mask.any():
                truths.append(truth)
        seen = thicken(volume, 3 if spacing < 1.2 else 2) if thick_slices else volume
        for truth in truths:
            centre = np.asarray(truth.nodule.centre) + rng.uniform(-1.0, 1.0, 3)
            diameter = truth.nodule.diameter_mm * rng.uniform(0.8, 1.2)
            found = outline(seen, (centre[0], centre[1], centre[2]), diameter)
            yield Case(truth, found, seen.spacing, index)


def table(
    seed: int, phantoms: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int_], npt.NDArray[np.float64]]:
    """Features, true types and ``(diameter, true volume, volume, true long, long)`` rows."""
    x, y, measures = [], [], []
    for case in cases(seed, phantoms):
        x.append(features(case.found, case.spacing))
        y.append(TYPE_OF[case.truth.nodule.density])
        true_axes, found_axes = (
            axes(case.truth.mask, case.spacing),
            axes(case.found.mask, case.spacing),
        )
        measures.append(
            [
                case.truth.nodule.diameter_mm,
                volume_mm3(case.truth.mask, case.spacing),
                volume_mm3(case.found.mask, case.spacing),
                true_axes.long_mm,
                found_axes.long_mm,
            ]
        )
    return np.array(x), np.array(y), np.array(measures)


def confusion(
    classifier: TypeClassifier, x: npt.NDArray[np.float64], y: npt.NDArray[np.int_]
) -> npt.NDArray[np.int_]:
    """Counts of true type (rows) against predicted type (columns), TYPES order."""
    counts = np.zeros((len(TYPES), len(TYPES)), dtype=int)
    np.add.at(counts, (y, classifier.probabilities(x).argmax(axis=1)), 1)
    return counts


def summary(
    classifier: TypeClassifier,
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.int_],
    measures: npt.NDArray[np.float64],
) -> dict[str, float]:
    """Type accuracy, median volume error and median long-axis error (nodules >= 6 mm)."""
    predicted = classifier.probabilities(x).argmax(axis=1)
    large = measures[:, 0] >= 6.0
    volume_error = np.abs(measures[:, 2] - measures[:, 1]) / measures[:, 1]
    long_error = np.abs(measures[:, 4] - measures[:, 3])
    accuracy = float((predicted == y).mean())
    return {
        "nodules": float(len(y)),
        "type_accuracy": accuracy,
        "type_accuracy_standard_error": float(np.sqrt(accuracy * (1 - accuracy) / len(y))),
        "volume_error_median": float(np.median(volume_error)),
        "volume_error_median_ge6mm": float(np.median(volume_error[large])),
        "long_axis_error_median_mm_ge6mm": float(np.median(long_error[large])),
    }


def crossvalidate(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.int_],
    groups: npt.NDArray[np.int_],
    hidden: int = HIDDEN,
    weight_decay: float = WEIGHT_DECAY,
    folds: int = 5,
    splits: int = 3,
) -> list[float]:
    """Accuracy of ``TypeClassifier.fit`` by ``folds``-fold cross-validation grouped by
    ``groups`` (the phantom: its nodules share noise, spacing and vessels), once for each of
    ``splits`` random splits of the groups (seeds 0, 1, ...)."""
    accuracies = []
    for split in range(splits):
        order = np.random.default_rng(split).permutation(np.unique(groups))
        fold_of = dict(zip(order.tolist(), (np.arange(len(order)) % folds).tolist(), strict=True))
        fold = np.array([fold_of[g] for g in groups.tolist()])
        predicted = np.zeros(len(y), dtype=int)
        for k in range(folds):
            model = TypeClassifier.fit(
                x[fold != k], y[fold != k], hidden=hidden, weight_decay=weight_decay
            )
            predicted[fold == k] = model.probabilities(x[fold == k]).argmax(axis=1)
        accuracies.append(float((predicted == y).mean()))
    return accuracies


def grouped_table(
    sets: list[tuple[int, int]], thick_slices: bool = False
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int_], npt.NDArray[np.int_]]:
    """Features, true types and phantom groups of the nodules of ``(seed, phantoms)`` sets."""
    x, y, groups = [], [], []
    for number, (seed, phantoms) in enumerate(sets):
        # 114 slices: whole slabs of two and of three.
        shape = (114, 160, 192) if thick_slices else (112, 160, 192)
        for case in cases(seed, phantoms, shape_zyx=shape, thick_slices=thick_slices):
            x.append(features(case.found, case.spacing))
            y.append(TYPE_OF[case.truth.nodule.density])
            groups.append(number * 10_000 + case.phantom)
    return np.array(x), np.array(y), np.array(groups)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["train", "crossvalidate", "validate", "evaluate"])
    parser.add_argument("--phantoms", type=int, default=None)
    parser.add_argument("--out", type=Path, default=PARAMETERS)
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="hidden units (crossvalidate)")
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY, help="(crossvalidate)")
    parser.add_argument(
        "--seed", type=int, default=None, help="another unused phantom seed (evaluate)"
    )
    parser.add_argument(
        "--thick", action="store_true", help="type only, on THICK_SEED's thick slices (evaluate)"
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="evaluate on FRESH_HELD_OUT_SEED, FRESH_HELD_OUT_PHANTOMS (once per candidate)",
    )
    args = parser.parse_args(argv)
    if args.command == "train":
        x, y, _ = table(TRAIN_SEED, args.phantoms or TRAIN_PHANTOMS)
        classifier = TypeClassifier.fit(x, y, hidden=HIDDEN, weight_decay=WEIGHT_DECAY)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(classifier.to_json() + "\n")
        counts = np.bincount(y, minlength=len(TYPES)).tolist()
        accuracy = float((classifier.probabilities(x).argmax(axis=1) == y).mean())
        print(
            f"trained on {len(y)} nodules {dict(zip(TYPES, counts, strict=True))}, "
            f"training accuracy {accuracy:.3f}"
        )
        print(f"{args.out} sha256 {sha256_of(args.out)}")
    elif args.command == "crossvalidate":
        x, y, groups = grouped_table(
            [(TRAIN_SEED, args.phantoms or TRAIN_PHANTOMS), (VALIDATION_SEED, VALIDATION_PHANTOMS)]
        )
        accuracies = crossvalidate(x, y, groups, args.hidden, args.weight_decay)
        splits = ", ".join(f"{a:.3f}" for a in accuracies)
        print(
            f"{len(y)} nodules in {len(np.unique(groups))} phantoms, {args.hidden} hidden, "
            f"weight decay {args.weight_decay}: 5-fold grouped accuracy "
            f"{np.mean(accuracies):.3f} (splits {splits})"
        )
    elif args.thick:
        x, y, _ = grouped_table([(THICK_SEED, args.phantoms or THICK_PHANTOMS)], thick_slices=True)
        classifier = TypeClassifier.load(args.out)
        counts = confusion(classifier, x, y)
        accuracy = float(np.trace(counts)) / len(y)
        print(
            f"{len(y)} nodules on thick slices: type accuracy {accuracy:.3f} "
            f"(standard error {np.sqrt(accuracy * (1 - accuracy) / len(y)):.3f})"
        )
        print(f"confusion (rows true, columns predicted, {', '.join(TYPES)}):")
        print(counts)
    else:
        if args.command == "validate":
            x, y, measures = table(VALIDATION_SEED, args.phantoms or VALIDATION_PHANTOMS)
        elif args.fresh:
            x, y, measures = table(FRESH_HELD_OUT_SEED, args.phantoms or FRESH_HELD_OUT_PHANTOMS)
        else:
            x, y, measures = table(args.seed or HELD_OUT_SEED, args.phantoms or 10)
        classifier = TypeClassifier.load(args.out)
        for key, value in summary(classifier, x, y, measures).items():
            print(f"{key}: {value:.3f}")
        print(f"confusion (rows true, columns predicted, {', '.join(TYPES)}):")
        print(confusion(classifier, x, y))


if __name__ == "__main__":
    main()
