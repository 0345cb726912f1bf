"""Train the bundled demo detector: ``python -m models.train --config models/configs/demo.yaml``.

Seeded end to end (data, initialisation, order), so the same config on the same torch build
gives the same weights. Writes ``weights.pt`` and ``model.yaml`` (with the weights' SHA-256)
into the config's output folder, and a training log beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import IO

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict

from models.dataset import (
    SampleSource,
    at_spacing,
    heatmap_targets,
    phantom_backgrounds,
    read_series,
)
from models.luna16 import read_annotations
from models.networks.centernet import NoduleCenterNet
from models.registry import sha256_of
from models.spec import ModelSpec
from models.synthetic import POSITION_WEIGHTS, Background


class TrainingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int
    steps: int
    batch: int
    patch: int
    learning_rate: float
    threads: int
    #: Real CT series folders (relative to the repository root) used as backgrounds.
    backgrounds: list[str]
    excluded_annotations: str
    phantoms: int
    phantom_seed: int
    output: str
    #: Stage 2: more steps at a lower rate with smaller nodules (the hard ones).
    finetune_steps: int = 0
    finetune_learning_rate: float = 0.0005
    finetune_diameter_range: tuple[float, float] = (3.0, 12.0)
    #: Share of samples shown as thick-slice CT (two slices averaged, interpolated back).
    thick_slice_fraction: float = 0.0
    #: Chances of isolated, juxta-vascular and juxta-pleural nodules (``models.synthetic``).
    position_weights: tuple[float, float, float] = POSITION_WEIGHTS


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: dict[str, object]
    training: TrainingConfig


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of peaks."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    negative = (1 - positive) * (1 - target) ** 4
    loss = -(positive * (1 - p) ** 2 * torch.log(p) + negative * p**2 * torch.log(1 - p))
    return (loss * weight).sum() / positive.sum().clamp(min=1)


def _run_stage(
    network: NoduleCenterNet,
    source: SampleSource,
    steps: int,
    batch: int,
    learning_rate: float,
    window: tuple[float, ...],
    spacing: tuple[float, ...],
    log: IO[str],
    stage: int,
) -> None:
    """One training stage: AdamW with a one-cycle schedule over *steps* batches."""
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=learning_rate, total_steps=steps, pct_start=0.05
    )
    started = time.monotonic()
    network.train()
    for step in range(steps):
        samples = [source.sample() for _ in range(batch)]
        targets = [heatmap_targets(s, spacing[0]) for s in samples]
        image = torch.from_numpy(np.stack([s.patch for s in samples]))[:, None]
        image = ((image - window[0]) / (window[1] - window[0])).clamp(0, 1)
        heat = torch.from_numpy(np.stack([h for h, _, _, _ in targets]))[:, None]
        log_d = torch.from_numpy(np.stack([d for _, d, _, _ in targets]))[:, None]
        offset = torch.from_numpy(np.stack([o for _, _, o, _ in targets]))
        peak = torch.from_numpy(np.stack([p for _, _, _, p in targets]))[:, None].float()
        weight = 1.0 - torch.from_numpy(np.stack([s.ignore for s in samples]))[:, None].float()
        out = network(image)
        n_peaks = peak.sum().clamp(min=1)
        heat_loss = focal_loss(out["heatmap"], heat, torch.maximum(weight, peak))
        size_loss = ((out["log_diameter"] - log_d).abs() * peak).sum() / n_peaks
        offset_loss = ((out["offset"] - offset).abs() * peak).sum() / n_peaks
        loss = heat_loss + size_loss + offset_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 5.0)
        optimiser.step()
        schedule.step()
        if step % 25 == 0 or step == steps - 1:
            record = {
                "stage": stage,
                "step": step,
                "seconds": round(time.monotonic() - started, 1),
                "loss": round(loss.item(), 4),
                "heatmap": round(heat_loss.item(), 4),
                "size": round(size_loss.item(), 4),
                "offset": round(offset_loss.item(), 4),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)


def _replay(source: SampleSource, steps: int, batch: int) -> None:
    for _ in range(steps * batch):
        source.sample()


def train(config: Config, root: Path, resume: Path | None = None) -> ModelSpec:
    t = config.training
    torch.manual_seed(t.seed)
    torch.set_num_threads(t.threads)
    rng = np.random.default_rng(t.seed)
    spacing = tuple(float(s) for s in config.spec["spacing_mm"])  # type: ignore[attr-defined]
    window = tuple(float(s) for s in config.spec["hu_window"])  # type: ignore[attr-defined]
    excluded = read_annotations(root / t.excluded_annotations, excluded=True)
    backgrounds: list[Background] = []
    regions = []
    for folder in t.backgrounds:
        uid, volume = read_series(root / folder)
        backgrounds.append(Background.of(at_spacing(volume, spacing)))  # type: ignore[arg-type]
        regions.append([a for a in excluded if a.seriesuid == uid])
    phantoms = phantom_backgrounds(t.phantoms, t.phantom_seed, spacing[0])
    backgrounds += phantoms
    regions += [[] for _ in phantoms]
    source = SampleSource(
        backgrounds,
        regions,
        t.patch,
        rng,
        thick_fraction=t.thick_slice_fraction,
        position_weights=t.position_weights,
    )

    network = NoduleCenterNet(tuple(config.spec.get("network", {}).get("widths", (16, 32, 64, 96))))  # type: ignore[attr-defined]
    output = root / t.output
    output.mkdir(parents=True, exist_ok=True)
    with (output / "training-log.jsonl").open("a" if resume else "w") as log:
        if resume is not None:
            network.load_state_dict(torch.load(resume, weights_only=True))
            # Stage 1 consumed the generators; replay its draws so stage 2 sees the same data.
            _replay(source, t.steps, t.batch)
        else:
            _run_stage(network, source, t.steps, t.batch, t.learning_rate, window, spacing, log, 1)
        if t.finetune_steps:
            source.diameter_range = tuple(t.finetune_diameter_range)  # type: ignore[assignment]
            _run_stage(
                network,
                source,
                t.finetune_steps,
                t.batch,
                t.finetune_learning_rate,
                window,
                spacing,
                log,
                2,
            )
    weights = output / "weights.pt"
    torch.save(network.state_dict(), weights)
    spec = ModelSpec.model_validate({**config.spec, "sha256": sha256_of(weights)})
    spec.write(output / "model.yaml")
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--steps", type=int, help="override the config's step count")
    parser.add_argument(
        "--resume-stage1",
        type=Path,
        help="weights stage 1 of this config already produced: run stage 2 only",
    )
    args = parser.parse_args()
    raw = yaml.safe_load(args.config.read_text())
    if args.steps:
        raw["training"]["steps"] = args.steps
    spec = train(Config.model_validate(raw), args.root, args.resume_stage1)
    print(f"wrote {spec.key} sha256={spec.sha256}")


if __name__ == "__main__":
    main()
