"""The detector's convolutional second stage: its cube, its training, its file and checksum,
and where detection applies it (models.candidate_cnn, candidate_cnn_recipe)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import candidate_cnn_recipe as recipe
from models.candidate_cnn import SIDE, CandidateCNN, CandidateNetwork, stored_cube, views
from models.candidate_features import FEATURES, HALF, cube
from models.detector import load_detector
from models.errors import ChecksumMismatch, InvalidModel
from models.registry import Registry, sha256_of
from models.sliding import detect
from tests.models.test_candidate_filter import NODULE, _lung
from tests.models.tiny import save_tiny


def _cnn(seed: int) -> CandidateCNN:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    return CandidateCNN(
        CandidateNetwork(),
        rng.normal(size=len(FEATURES)).astype(np.float32),
        rng.uniform(0.5, 2, size=len(FEATURES)).astype(np.float32),
    )


def test_the_cube_is_the_features_cube_cropped_to_its_middle_as_int16_hu() -> None:
    volume = _lung()
    hu = cube(volume, NODULE)
    stored = stored_cube(hu)
    assert stored.shape == (SIDE,) * 3 and stored.dtype == np.int16
    middle = SIDE // 2  # the candidate's centre: HALF in the features' cube
    assert stored[middle, middle, middle] == 30
    assert stored[middle, middle, middle + 8] < -700  # 8 mm along x: lung, as in the big cube
    inner = slice(HALF - middle, HALF - middle + SIDE)
    np.testing.assert_array_equal(stored, hu[inner, inner, inner].astype(np.int16))
    x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    mirrored = views(x)
    assert len(mirrored) == 4 and mirrored[0] is x
    assert torch.equal(mirrored[1][0, 0, 0, 0], torch.tensor([1.0, 0.0]))  # x flipped
    assert torch.equal(mirrored[3][0, 0, 0], x[0, 0, 0].T)  # x and y swapped


def test_the_recipe_trains_a_network_that_tells_balls_from_tubes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recipe's training on cubes it can learn from in a few epochs: a bright ball (nodule)
    or a bright tube along a random axis (vessel) in noisy lung, features carrying nothing."""
    rng = np.random.default_rng(11)
    z, y, x = np.indices((SIDE,) * 3) - SIDE // 2
    ball = z**2 + y**2 + x**2 <= 4**2
    tubes = [y**2 + x**2 <= 2**2, z**2 + x**2 <= 2**2, z**2 + y**2 <= 2**2]
    cubes, labels = [], []
    for i in range(96):
        hu = rng.normal(-850, 30, (SIDE,) * 3)
        hu[ball if i % 2 else tubes[i % 3]] = 20
        cubes.append(hu.astype(np.int16))
        labels.append(bool(i % 2))
    data = recipe.Collected(
        rng.normal(size=(96, len(FEATURES))), np.stack(cubes), np.asarray(labels)
    )
    monkeypatch.setattr(recipe, "BATCH", 16)
    monkeypatch.setattr(recipe, "EPOCHS", 16)
    network = recipe.train(data)
    p = network.nodule_probability(data.cubes, data.features)
    assert ((p > 0.5) == data.labels).mean() > 0.9
    # Seeded: the same data train the same network (one epoch on a third of them, twice).
    monkeypatch.setattr(recipe, "EPOCHS", 1)
    third = recipe.Collected(data.features[:32], data.cubes[:32], data.labels[:32])
    once, twice = (
        recipe.train(third).nodule_probability(third.cubes, third.features) for _ in "ab"
    )
    np.testing.assert_array_equal(once, twice)


def test_the_network_is_stored_with_its_checksum(tmp_path: Path) -> None:
    network = _cnn(seed=3)
    rng = np.random.default_rng(3)
    cubes = rng.integers(-1000, 400, size=(5, SIDE, SIDE, SIDE)).astype(np.int16)
    rows = rng.normal(size=(5, len(FEATURES)))
    path = tmp_path / "candidate-cnn.pt"
    torch.save(network.state(), path)
    loaded = CandidateCNN.load(path, sha256_of(path))
    np.testing.assert_allclose(
        loaded.nodule_probability(cubes, rows), network.nodule_probability(cubes, rows), atol=1e-6
    )
    with pytest.raises(ChecksumMismatch, match="refusing"):
        CandidateCNN.load(path, "0" * 64)
    state = network.state()
    state["feature_mean"] = state["feature_mean"][:-1]
    torch.save(state, path)
    with pytest.raises(InvalidModel, match="features"):
        CandidateCNN.load(path, sha256_of(path))
    torch.save({"something": torch.zeros(2)}, path)
    with pytest.raises(InvalidModel, match="not a candidate network"):
        CandidateCNN.load(path, sha256_of(path))


def test_detection_applies_the_network_its_spec_names(tmp_path: Path) -> None:
    folder = save_tiny(tmp_path, seed=1)
    torch.save(_cnn(seed=5).state(), folder / "cnn.pt")
    save_tiny(
        tmp_path,
        seed=1,
        candidate_filter="cnn.pt",
        candidate_filter_sha256=sha256_of(folder / "cnn.pt"),
        candidate_filter_kind="cnn",
    )
    filtered = load_detector(Registry([tmp_path]).get("tiny"))
    assert isinstance(filtered.candidate_filter, CandidateCNN)
    volume = _lung()
    first = detect(filtered, volume, second_stage=False)
    assert first, "the tiny network's random weights find something (score threshold 0)"
    expected = filtered.candidate_filter.rescore(volume, first)
    assert detect(filtered, volume) == expected != first
    # A network's file named as the feature filter's kind is refused, not misread.
    save_tiny(
        tmp_path,
        seed=1,
        candidate_filter="cnn.pt",
        candidate_filter_sha256=sha256_of(folder / "cnn.pt"),
    )
    with pytest.raises(ChecksumMismatch, match="not a network's JSON"):
        load_detector(Registry([tmp_path]).get("tiny"))
