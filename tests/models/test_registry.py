"""Registry round trip, checksum refusal, and the MONAI bundle path with random weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.bundle import NAME, import_bundle
from models.detector import CenterNetDetector, RetinaNetDetector, load_detector
from models.errors import ChecksumMismatch, InvalidModel, UnknownModel
from models.networks.retinanet import build_network
from models.registry import SPEC_FILE, Registry
from tests.models.tiny import save_tiny


def _write_model(root: Path, version: str, seed: int = 0) -> Path:
    return save_tiny(root, seed, version=version, max_detections=5)


def test_round_trip_and_newest_version(tmp_path: Path) -> None:
    _write_model(tmp_path, "1.2.0")
    _write_model(tmp_path, "1.10.0", seed=1)
    registry = Registry([tmp_path])
    assert [e.spec.key for e in registry.entries()] == ["tiny:1.2.0", "tiny:1.10.0"]
    entry = registry.get("tiny")
    assert entry.spec.version == "1.10.0" and "not for clinical use" in entry.card
    detector = load_detector(entry)
    assert isinstance(detector, CenterNetDetector)
    out = detector.predict(torch.rand(2, 1, 32, 32, 32))
    assert len(out) == 2 and all(len(d.scores) <= 5 for d in out)
    with pytest.raises(UnknownModel, match=r"tiny:9 .*known: tiny:1.2.0, tiny:1.10.0"):
        registry.get("tiny", "9")


def test_a_changed_weights_file_is_refused(tmp_path: Path) -> None:
    folder = _write_model(tmp_path, "1.0.0")
    with (folder / "weights.pt").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ChecksumMismatch, match="refusing to load"):
        load_detector(Registry([tmp_path]).get("tiny"))


def test_an_invalid_spec_is_a_clear_error(tmp_path: Path) -> None:
    folder = _write_model(tmp_path, "1.0.0")
    (folder / SPEC_FILE).write_text("name: tiny\nversion: 1.0.0\narchitecture: resnet\n")
    with pytest.raises(InvalidModel, match="architecture"):
        Registry([tmp_path]).entries()


def _bundle(tmp_path: Path) -> Path:
    """A bundle folder laid out like MONAI's, its model.pt a state dict of random weights."""
    bundle = tmp_path / "lung_nodule_ct_detection"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").mkdir()
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"version": "0.6.9"}))
    torch.manual_seed(0)
    state = build_network().state_dict()
    assert len(state) == 190  # the bundle's model.pt holds exactly these tensors
    torch.save(state, bundle / "models" / "model.pt")
    return bundle


def test_bundle_weights_load_and_run_on_a_small_patch(tmp_path: Path) -> None:
    entry = import_bundle(_bundle(tmp_path), tmp_path / "site")
    assert entry.spec.key == f"{NAME}:0.6.9"
    assert entry.spec.spacing_mm == (0.703125, 0.703125, 1.25)
    assert entry.spec.patch_size == (192, 512, 512)
    detector = load_detector(entry)
    assert isinstance(detector, RetinaNetDetector)
    # (B,1,Z,Y,X): 16 slices of 64 x 64, divisible by the bundle's (16,16,8) on (X,Y,Z).
    torch.manual_seed(1)
    out = detector.predict(torch.rand(1, 1, 16, 64, 64))
    assert len(out) == 1
    found = out[0]
    assert found.centres.shape[1] == 3
    # Centres come back inside the patch, in [z, y, x] order.
    if len(found.scores):
        assert (found.centres >= -1).all()
        assert (found.centres[:, 0] <= 16).all() and (found.centres[:, 1:] <= 64).all()


def test_bundle_runs_a_whole_volume_with_monais_inferer(tmp_path: Path) -> None:
    entry = import_bundle(_bundle(tmp_path), tmp_path / "site")
    detector = load_detector(entry)
    small = entry.spec.model_copy(update={"patch_size": (16, 64, 64)})
    detector.spec = small  # windows of 64 x 64 x 16 keep this CPU test short
    torch.manual_seed(2)
    found = detector.detect_volume(torch.rand(24, 80, 96), batch_size=2)
    assert found.centres.shape == (len(found.scores), 3)
    if len(found.scores):
        assert (found.centres[:, 0] <= 24).all() and (found.centres[:, 2] <= 96).all()


def test_bundle_with_foreign_weights_is_refused(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    torch.save({"conv.weight": torch.zeros(3)}, bundle / "models" / "model.pt")
    with pytest.raises(InvalidModel, match="do not fit"):
        import_bundle(bundle, tmp_path / "site")
    assert not (tmp_path / "site" / NAME / "0.6.9").exists()


def test_pacs_model_cli(tmp_path: Path) -> None:
    env = {"PACS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    pacs = [sys.executable, "-m", "pacs.cli"]
    added = subprocess.run(
        [*pacs, "model", "add", "--bundle", str(_bundle(tmp_path))],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"registered {NAME}:0.6.9" in added.stdout
    listed = subprocess.run(
        [*pacs, "model", "list", "--json"], env=env, capture_output=True, text=True, check=True
    )
    keys = {f"{m['name']}:{m['version']}" for m in json.loads(listed.stdout)}
    assert f"{NAME}:0.6.9" in keys
    shown = subprocess.run(
        [*pacs, "model", "show", NAME], env=env, capture_output=True, text=True, check=True
    )
    assert "lung_nodule_ct_detection" in shown.stdout and "0.703125" in shown.stdout
    missing = subprocess.run(
        [*pacs, "model", "show", "nope"], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no model nope" in missing.stderr
