"""A tiny CenterNet model for tests: its spec, and a registry folder with random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.networks.centernet import NoduleCenterNet
from models.registry import SPEC_FILE, sha256_of
from models.spec import ModelSpec

WIDTHS = (8, 8, 16, 16)


def tiny_spec(**changes: Any) -> ModelSpec:
    fields: dict[str, Any] = {
        "name": "tiny",
        "version": "0.1",
        "architecture": "centernet3d",
        "network": {"widths": list(WIDTHS)},
        "spacing_mm": (2.0, 2.0, 2.0),
        "hu_window": (-1000, 400),
        "patch_size": (32, 32, 32),
        "overlap": 0.25,
        "score_threshold": 0.0,
        "nms_overlap": 1.0,
        "max_detections": 8,
        "sha256": "0" * 64,
    }
    return ModelSpec.model_validate(fields | changes)


def save_tiny(root: Path, seed: int = 0, **changes: Any) -> Path:
    """``root/tiny/VERSION/`` with seeded random weights, their spec and a card."""
    torch.manual_seed(seed)
    spec = tiny_spec(**changes)
    folder = root / spec.name / spec.version
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(NoduleCenterNet(WIDTHS).state_dict(), folder / "weights.pt")
    spec.model_copy(update={"sha256": sha256_of(folder / "weights.pt")}).write(folder / SPEC_FILE)
    (folder / "card.md").write_text(f"# {spec.name}\nnot for clinical use\n")
    return folder
