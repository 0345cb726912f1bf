"""The cross-study batcher gives each study exactly what it would get alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from inference.batcher import Batcher
from models.detections import PatchDetections
from models.detector import Detector
from models.sliding import detect, prepare, to_candidates
from models.synthetic import chest_phantom
from models.volume import Volume
from tests.inference.conftest import tiny_detector


def _volumes(count: int) -> list[Volume]:
    volumes = []
    for seed in range(count):
        rng = np.random.default_rng(100 + seed)
        shape = (48 + 8 * seed, 64, 72 - 4 * seed)  # different sizes: different patch counts
        volumes.append(chest_phantom(rng, shape_zyx=shape, spacing_mm=2.0))
    return volumes


def _same(a: PatchDetections, b: PatchDetections) -> None:
    assert len(a.scores) == len(b.scores) > 0
    np.testing.assert_allclose(a.centres, b.centres, atol=1e-4)
    np.testing.assert_allclose(a.diameters_mm, b.diameters_mm, rtol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


@pytest.fixture
def detector(tmp_path: Path) -> Detector:
    return tiny_detector(tmp_path, patch=32, score=0.0)


def test_mixed_batches_give_each_study_its_own_result(detector: Detector) -> None:
    volumes = _volumes(3)
    prepared = [prepare(v, detector.spec) for v in volumes]
    alone = []
    for p in prepared:  # one study at a time, one patch per forward pass
        batcher = Batcher(detector, batch_size=1, max_wait=0)
        alone.append(batcher.submit(p).result(timeout=120))
        batcher.close()
    # All three at once from three threads, batches of 5: patches of different studies mix.
    batcher = Batcher(detector, batch_size=5, max_wait=0.05)
    with ThreadPoolExecutor(3) as pool:
        mixed = list(pool.map(lambda p: batcher.submit(p).result(timeout=120), prepared))
    stats = batcher.stats()
    batcher.close()
    assert stats.mixed_batches > 0
    assert stats.patches == sum(len(p.origins) for p in prepared)
    for a, b in zip(alone, mixed, strict=True):
        _same(a, b)


def test_batcher_matches_the_one_study_reference(detector: Detector) -> None:
    (volume,) = _volumes(1)
    reference = detect(detector, volume, batch_size=3)
    prepared = prepare(volume, detector.spec)
    batcher = Batcher(detector, batch_size=7)
    found = to_candidates(
        prepared.grid, batcher.submit(prepared).result(timeout=120), detector.spec
    )
    batcher.close()
    assert len(found) == len(reference) > 0
    np.testing.assert_allclose([c.centre for c in found], [c.centre for c in reference], atol=1e-4)
    assert [c.probability for c in found] == pytest.approx([c.probability for c in reference])


def test_a_failing_batch_fails_its_studies_and_the_batcher_goes_on(detector: Detector) -> None:
    (volume,) = _volumes(1)
    good = prepare(volume, detector.spec)
    # A volume prepared for another patch size cannot be cut into this detector's patches.
    bad = prepare(volume, detector.spec.model_copy(update={"patch_size": (16, 16, 16)}))
    bad = type(bad)(bad.image[:10], bad.grid, bad.origins)  # patches run past the end
    batcher = Batcher(detector, batch_size=2, max_wait=0)
    failed = batcher.submit(bad)
    with pytest.raises(RuntimeError):
        failed.result(timeout=60)
    assert len(batcher.submit(good).result(timeout=120).scores) > 0
    batcher.close()


def test_batches_patches_and_model_time_are_metrics(detector: Detector) -> None:
    """pacs_inference_*: batch fill over the batch size, patches, model seconds in total and
    per study (each patch's share of its batch), read back from the process's registry."""
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    key = {"model": detector.spec.key}
    before = {
        name: value(name, **labels)
        for name, labels in [
            ("pacs_inference_patches_total", {}),
            ("pacs_inference_batches_total", {}),
            ("pacs_inference_batch_fill_ratio_sum", {}),
            ("pacs_inference_model_seconds_total", {}),
            ("pacs_inference_study_model_seconds_count", key),
            ("pacs_inference_study_model_seconds_sum", key),
        ]
    }
    prepared = [prepare(v, detector.spec) for v in _volumes(2)]
    batcher = Batcher(detector, batch_size=4, max_wait=0.05)
    for p in prepared:
        batcher.submit(p).result(timeout=120)
    stats = batcher.stats()
    batcher.close()

    def grew(name: str, **labels: str) -> float:
        return value(name, **labels) - before[name]

    assert grew("pacs_inference_patches_total") == stats.patches
    assert grew("pacs_inference_batches_total") == stats.batches
    fill = grew("pacs_inference_batch_fill_ratio_sum")
    assert fill == pytest.approx(stats.patches / 4)  # each batch: its patches over 4
    model = grew("pacs_inference_model_seconds_total")
    assert model == pytest.approx(stats.model_seconds)
    assert grew("pacs_inference_study_model_seconds_count", **key) == 2
    assert grew("pacs_inference_study_model_seconds_sum", **key) == pytest.approx(model)
