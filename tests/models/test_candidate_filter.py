"""The detector's second stage: features of a candidate's surroundings, the filter network,
its loading, and where detection applies it (models.candidate_features, candidate_filter)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.candidate_features import FEATURES, HALF, cube, features
from models.candidate_filter import CandidateFilter
from models.candidate_recipe import labelled_candidates
from models.detections import Candidate
from models.detector import load_detector
from models.errors import ChecksumMismatch, InvalidModel
from models.evaluate import Case
from models.froc import Sphere, inside
from models.registry import BUILTIN, Registry, sha256_of
from models.sliding import detect
from models.volume import Volume, axis_aligned_affine, thick_slices
from tests.models.tiny import save_tiny

DEMO = "demo-nodule-centernet"
SHAPE = (80, 80, 80)  # z, y, x at 1 mm
NODULE = (40.0, 40.0, 40.0)  # x, y, z mm (the voxel grid's origin is at 0 mm)
VESSEL = (40.0, 20.0, 40.0)


def _lung() -> Volume:
    """Lung (-850 HU, noise) with a 10 mm solid ball at NODULE and a 4 mm vessel running
    along z through VESSEL, out of any box around it."""
    rng = np.random.default_rng(7)
    hu = rng.normal(-850, 15, SHAPE).astype(np.float32)
    z, y, x = np.indices(SHAPE)
    ball = (x - NODULE[0]) ** 2 + (y - NODULE[1]) ** 2 + (z - NODULE[2]) ** 2 <= 5.0**2
    tube = (x - VESSEL[0]) ** 2 + (y - VESSEL[1]) ** 2 <= 2.0**2
    hu[ball | tube] = 30.0
    return Volume(hu, axis_aligned_affine((1.0, 1.0, 1.0)))


def _features(volume: Volume, centre: tuple[float, float, float], diameter: float) -> dict:
    return dict(zip(FEATURES, features(cube(volume, centre), 0.6, diameter), strict=True))


def test_the_cube_follows_the_patient_axes_whatever_the_slices() -> None:
    volume = _lung()
    around = cube(volume, NODULE)
    assert around.shape == (2 * HALF + 1,) * 3
    assert around[HALF, HALF, HALF] == pytest.approx(30.0)
    assert around[HALF, HALF, HALF + 8] < -700  # 8 mm along x: lung
    # 2 mm slices (two averaged) give about the same cube at 1 mm: the ball still 10 mm across.
    thick = cube(thick_slices(volume, 2), NODULE)
    assert (
        abs(float((thick > -400).sum()) - float((around > -400).sum()))
        < 0.2 * (around > -400).sum()
    )
    # Outside the volume: air.
    assert cube(volume, (-100.0, 40.0, 40.0)).max() == pytest.approx(-1000.0)


def test_a_ball_and_a_vessel_differ_where_the_features_say() -> None:
    volume = _lung()
    ball, tube = _features(volume, NODULE, 10.0), _features(volume, VESSEL, 4.0)
    # A ball stays inside the cube; a vessel runs out of it, long in one direction.
    assert ball["structure_on_faces"] == 0 < tube["structure_on_faces"]
    assert ball["structure_elongation"] < 1.0 < tube["structure_elongation"]
    # Hessian at its own scale: alike in all three directions for a ball, one small for a tube.
    assert ball["hessian_own_low"] > 0.6 > 0.2 > tube["hessian_own_low"]
    assert ball["core_hu"] == pytest.approx(0.03, abs=0.02)


def test_the_bundled_filter_ranks_a_ball_above_a_vessel_the_detector_scored_alike() -> None:
    detector = load_detector(Registry([BUILTIN]).get(DEMO))
    assert detector.candidate_filter is not None
    volume = _lung()
    scored = detector.candidate_filter.rescore(
        volume, [Candidate(VESSEL, 4.0, 0.6), Candidate(NODULE, 10.0, 0.6)]
    )
    assert [c.centre for c in scored] == [NODULE, VESSEL]  # best first
    assert scored[0].probability > 0.5 > scored[1].probability
    # The geometric mean of the filter's p and the detector's 0.6.
    for candidate, diameter in zip(scored, (10.0, 4.0), strict=True):
        row = features(cube(volume, candidate.centre), 0.6, diameter)
        p = float(detector.candidate_filter.nodule_probability(row[None])[0])
        assert candidate.probability == pytest.approx(np.sqrt(p * 0.6))
    assert detector.candidate_filter.rescore(volume, []) == []


def test_the_filter_fits_and_is_stored_with_its_checksum(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, len(FEATURES)))
    nodule = x[:, 0] + 0.5 * x[:, 1] > 0
    network = CandidateFilter.fit(x, nodule)
    assert ((network.nodule_probability(x) > 0.5) == nodule).mean() > 0.95
    path = tmp_path / "filter.json"
    path.write_text(network.to_json())
    loaded = CandidateFilter.load(path, sha256_of(path))
    np.testing.assert_allclose(
        loaded.nodule_probability(x), network.nodule_probability(x), atol=1e-4
    )
    with pytest.raises(ChecksumMismatch, match="refusing"):
        CandidateFilter.load(path, "0" * 64)
    stored = json.loads(path.read_text())
    stored["features"] = stored["features"][:-1]
    path.write_text(json.dumps(stored))
    with pytest.raises(ChecksumMismatch, match="other classes or features"):
        CandidateFilter.load(path, sha256_of(path))


def test_detection_applies_the_second_stage_its_spec_names(tmp_path: Path) -> None:
    """The same weights with and without a filter: detect() rescores with it, and leaves the
    first stage's candidates alone without it or when told to (the recipe's input)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, len(FEATURES)))
    network = CandidateFilter.fit(x, x[:, 0] > 0)
    folder = save_tiny(tmp_path, seed=1)
    (folder / "filter.json").write_text(network.to_json())
    plain = load_detector(Registry([tmp_path]).get("tiny"))
    assert plain.candidate_filter is None
    save_tiny(
        tmp_path,
        seed=1,
        candidate_filter="filter.json",
        candidate_filter_sha256=sha256_of(folder / "filter.json"),
    )
    filtered = load_detector(Registry([tmp_path]).get("tiny"))
    assert filtered.candidate_filter is not None
    volume = _lung()
    first = detect(plain, volume)
    assert first, "the tiny network's random weights find something (score threshold 0)"
    assert detect(filtered, volume, second_stage=False) == first
    expected = filtered.candidate_filter.rescore(volume, first)
    assert detect(filtered, volume) == expected != first

    save_tiny(tmp_path, seed=1, candidate_filter="filter.json")
    with pytest.raises(InvalidModel, match="candidate_filter_sha256"):
        load_detector(Registry([tmp_path]).get("tiny"))
    save_tiny(tmp_path, seed=1, candidate_filter="filter.json", candidate_filter_sha256="1" * 64)
    with pytest.raises(ChecksumMismatch):
        load_detector(Registry([tmp_path]).get("tiny"))


def test_the_recipes_label_candidates_by_luna16s_hit_rule_and_skip_excluded_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What both second-stage recipes train on (models.candidate_recipe.labelled_candidates):
    every first-stage candidate with its cube, a nodule when its centre lies in a nodule's
    sphere, none from an excluded region."""
    save_tiny(tmp_path, seed=1)
    detector = load_detector(Registry([tmp_path]).get("tiny"))
    volume = _lung()
    first = detect(detector, volume, second_stage=False)
    nodule = Sphere(first[0].centre, 20.0)  # around the best candidate: it and its neighbours
    excluded = Sphere(first[-1].centre, 1.0)
    found = list(labelled_candidates(detector, [Case(volume, [nodule], [excluded])]))
    expected = [c for c in first if not inside(c.centre, excluded)]
    assert [c for _, c, _ in found] == expected and len(expected) < len(first)
    assert [label for *_, label in found] == [inside(c.centre, nodule) for c in expected]
    assert found[0][2] is True
    np.testing.assert_array_equal(found[0][0], cube(volume, first[0].centre))
    assert f"scan 1: {len(expected)} candidates" in capsys.readouterr().out
