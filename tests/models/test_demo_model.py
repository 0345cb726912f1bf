"""The bundled demo model: its weights match the card, and it finds a clearly visible nodule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.detector import load_detector
from models.froc import Froc, report_threshold
from models.registry import BUILTIN, Registry
from models.sliding import detect, prepare, to_candidates
from models.synthetic import (
    Background,
    Density,
    Nodule,
    Outline,
    Position,
    chest_phantom,
    insert_nodule,
)

DEMO = "demo-nodule-centernet"


def test_the_card_documents_intended_use_and_how_the_weights_were_made() -> None:
    entry = Registry([BUILTIN]).get(DEMO)
    assert entry.verified_weights().stat().st_size < 10 * 2**20  # a few MB, in the repository
    card = entry.card.lower()
    assert "synthetic" in card and "not for clinical use" in card
    assert "python -m models.train --config models/configs/demo.yaml" in entry.card
    assert "python -m models.evaluate" in entry.card


def test_the_report_threshold_was_chosen_on_the_validation_phantoms() -> None:
    """The spec's operating point is the card's rule applied to the committed validation FROC
    (``python -m models.evaluate --data validation``), not to the held-out one."""
    entry = Registry([BUILTIN]).get(DEMO)
    data = json.loads((entry.folder / "froc-validation.json").read_text())
    assert data.pop("title") == f"{entry.spec.key} on validation phantoms"
    for field in ("at_rates", "threshold_at_rates"):
        data[field] = {float(rate): value for rate, value in data[field].items()}
    assert report_threshold(Froc(**data)) == entry.spec.report_threshold
    assert f"**{entry.spec.report_threshold:.2f}**" in entry.card


@pytest.mark.parametrize(
    ("seed", "diameter", "density"), [(4242, 12.0, Density.SOLID), (4343, 9.0, Density.PART_SOLID)]
)
def test_finds_a_clearly_visible_synthetic_nodule(
    seed: int, diameter: float, density: Density
) -> None:
    # Seeds far from the training (20261126, phantoms from 1000) and evaluation (70000+) ones.
    rng = np.random.default_rng(seed)
    phantom = chest_phantom(rng, shape_zyx=(96, 128, 144), spacing_mm=1.5)
    centre = Background.of(phantom).sample_centre(diameter, Position.ISOLATED, rng)
    assert centre is not None
    insert_nodule(phantom, Nodule(centre, diameter, density, Outline.SMOOTH, seed=seed))
    detector = load_detector(Registry([BUILTIN]).get(DEMO))
    found = detect(detector, phantom)
    assert found, "no candidate at all"
    best = found[0]
    assert np.linalg.norm(np.subtract(best.centre, centre)) < diameter / 2
    assert best.probability >= detector.spec.report_threshold
    assert diameter / 2 < best.diameter_mm < diameter * 2
    # MONAI's sliding-window inference over the whole volume (the benchmark's baseline) agrees.
    prepared = prepare(phantom, detector.spec)
    dense = to_candidates(
        prepared.grid, detector.detect_volume(prepared.image, batch_size=2), detector.spec
    )
    assert np.linalg.norm(np.subtract(dense[0].centre, centre)) < diameter / 2
