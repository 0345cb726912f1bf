"""The detector's second stage as a small 3D convolutional network: is a candidate a nodule,
judged on the CT around it and on the hand-made features of :mod:`models.candidate_features`.

The features (density, Hessian shape, the dense structure through the centre) tell compact
blobs from tubes and plates, but they are summaries: on thick slices a nodule touching a
vessel and a vessel's bend summarise alike. The network looks at the voxels themselves, a cube
of :data:`SIDE` mm around the candidate at 1 mm (the features' cube, cropped), through four
blocks of 3x3x3 convolutions with batch norm (:data:`WIDTHS` channels, halving the size between
them), pools them to one vector and, with the features, scores the candidate in a small head.
At test time it averages its score over four mirrored views of the cube (as it was trained to
see them). Its score ``p`` replaces the detector's as the candidate's score, which orders the
candidates for the report threshold and the FROC; it ranks, it is not a calibrated probability.

Its parameters (the network's state and the features' mean and spread on its training data)
are a torch file in the detector's model folder, named with its SHA-256 in model.yaml and
checked on load (``candidate_filter_kind: cnn``), made by :mod:`models.candidate_cnn_recipe`
from the first stage's candidates on training scans only. No bundled model uses it yet: see the
recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.candidate_features import FEATURES, HALF, cube, features
from models.detections import Candidate, ranked
from models.errors import InvalidModel
from models.registry import verified_file
from models.volume import Volume

#: The cube the network sees: SIDE mm each way around the candidate, at 1 mm voxels.
SIDE = 32
#: Channels of its four convolution blocks, and of the head's hidden layer.
WIDTHS = (8, 16, 32, 32)
HEAD = 32
#: HU mapped linearly to 0..1 (clipped) for the network.
HU_WINDOW = (-1000.0, 400.0)
#: Cubes stored for training are int16 HU in this range (the network's window lies inside it).
STORED_HU = (-1024, 3000)
BATCH = 256

_START = HALF - SIDE // 2


class CandidateNetwork(nn.Module):
    """Cube ``(N, 1, SIDE, SIDE, SIDE)`` and normalised features ``(N, F)`` in, one logit per
    candidate out."""

    def __init__(self, features: int = len(FEATURES)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for block, width in enumerate(WIDTHS):
            layers += [
                nn.Conv3d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm3d(width),
                nn.ReLU(),
            ]
            if block < len(WIDTHS) - 1:
                layers.append(nn.MaxPool3d(2))
            channels = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(channels + features, HEAD), nn.ReLU(), nn.Dropout(0.2), nn.Linear(HEAD, 1)
        )

    def forward(self, cubes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(torch.cat([self.body(cubes), features], 1))
        return logits[:, 0]


def stored_cube(hu: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.int16]:
    """The network's cube cut from the features' :func:`cube`, as int16 HU (as stored for
    training: the same rounding at training and at test time)."""
    inner = hu[_START : _START + SIDE, _START : _START + SIDE, _START : _START + SIDE]
    stored: npt.NDArray[np.int16] = np.clip(inner, *STORED_HU).astype(np.int16)
    return stored


def cube_tensor(cubes: npt.NDArray[np.int16]) -> torch.Tensor:
    """Stored cubes ``(N, SIDE, SIDE, SIDE)`` as the network's input ``(N, 1, ...)``."""
    low, high = HU_WINDOW
    scaled = (np.clip(cubes.astype(np.float32), low, high) - low) / (high - low)
    return torch.from_numpy(scaled[:, None])


def views(cubes: torch.Tensor) -> list[torch.Tensor]:
    """The cube and three mirrored views of it (x flipped, y flipped, x and y swapped)."""
    return [cubes, cubes.flip(4), cubes.flip(3), cubes.transpose(3, 4)]


class CandidateCNN:
    """A trained :class:`CandidateNetwork` with the features' normalisation."""

    def __init__(
        self,
        network: CandidateNetwork,
        mean: npt.NDArray[np.float32],
        spread: npt.NDArray[np.float32],
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.mean = mean.astype(np.float32)
        self.spread = spread.astype(np.float32)

    def feature_tensor(self, rows: npt.NDArray[np.float64]) -> torch.Tensor:
        return torch.from_numpy((rows.astype(np.float32) - self.mean) / self.spread)

    @torch.inference_mode()
    def nodule_probability(
        self, cubes: npt.NDArray[np.int16], rows: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """``p`` of each candidate being a nodule, averaged over :func:`views`."""
        self.network.eval()
        x, f = cube_tensor(cubes), self.feature_tensor(rows)
        out = []
        for start in range(0, len(x), BATCH):
            batch = x[start : start + BATCH].to(self.device)
            feats = f[start : start + BATCH].to(self.device)
            scores = [torch.sigmoid(self.network(view, feats)) for view in views(batch)]
            out.append(torch.stack(scores).mean(0).cpu())
        return torch.cat(out).double().numpy() if out else np.zeros(0)

    def rescore(self, volume: Volume, candidates: list[Candidate]) -> list[Candidate]:
        """*candidates* of *volume* scored ``p`` (see module), best first."""
        if not candidates:
            return []
        cubes, rows = [], []
        for c in candidates:
            hu = cube(volume, c.centre)
            cubes.append(stored_cube(hu))
            rows.append(features(hu, c.probability, c.diameter_mm))
        scores = self.nodule_probability(np.stack(cubes), np.stack(rows))
        return ranked(candidates, scores)

    def state(self) -> dict[str, torch.Tensor]:
        return {
            **{f"network.{k}": v.cpu() for k, v in self.network.state_dict().items()},
            "feature_mean": torch.from_numpy(self.mean),
            "feature_spread": torch.from_numpy(self.spread),
        }

    @classmethod
    def load(cls, path: Path, sha256: str, device: torch.device | str = "cpu") -> CandidateCNN:
        """Read a file written from :meth:`state`, after checking its SHA-256; the network
        runs on *device* (the detector's)."""
        checked = verified_file(path, sha256, "candidate filter")
        try:
            state = torch.load(checked, map_location="cpu", weights_only=True)
            network = CandidateNetwork()
            network.load_state_dict(
                {k[len("network.") :]: v for k, v in state.items() if k.startswith("network.")}
            )
            mean, spread = state["feature_mean"].numpy(), state["feature_spread"].numpy()
        except (RuntimeError, KeyError, AttributeError, TypeError) as exc:
            raise InvalidModel(f"{path}: not a candidate network's parameters: {exc}") from exc
        if mean.shape != (len(FEATURES),) or spread.shape != (len(FEATURES),):
            raise InvalidModel(f"{path}: feature normalisation for {len(mean)} features")
        return cls(network, mean, spread, device)
