"""Nodule type (solid / part-solid / ground-glass) from the density inside its outline.

A small neural network (one tanh hidden layer of eight units) on the features of
:mod:`models.type_features`. Its parameters are a small JSON file in the repository, checked
by SHA-256 on load and made by the recipe in :mod:`models.character_recipe` from synthetic
nodules only. Training is full-batch and deterministic (L-BFGS from a fixed initialisation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import optimize

from models.errors import ChecksumMismatch
from models.registry import sha256_of
from models.type_features import FEATURES

#: The classifier's classes, in the order of its outputs (the words Lung-RADS uses).
TYPES = ("solid", "part-solid", "ground-glass")
PARAMETERS = Path(__file__).parent / "zoo" / "nodule-type" / "2" / "parameters.json"
#: SHA-256 of PARAMETERS, as the recipe wrote it.
PARAMETERS_SHA256 = "43314c2a03b13b18043bbb5d7a33d74fcc84a1f756f9cd82dea8a8231ed0b4e7"

FloatArray = npt.NDArray[np.float64]
#: The stored arrays, in the constructor's order.
ARRAYS = ("mean", "scale", "hidden_weights", "hidden_bias", "weights", "bias")


@dataclass(frozen=True)
class TypeClassifier:
    """``p = softmax(tanh(z @ hidden_weights + hidden_bias) @ weights + bias)`` with
    ``z = (x - mean) / scale``."""

    mean: FloatArray
    scale: FloatArray
    hidden_weights: FloatArray  # (features, hidden)
    hidden_bias: FloatArray  # (hidden,)
    weights: FloatArray  # (hidden, classes)
    bias: FloatArray  # (classes,)

    def probabilities(self, x: FloatArray) -> FloatArray:
        """Class probabilities ``(N, 3)`` (TYPES order) for feature rows ``(N, features)``."""
        z = (np.atleast_2d(x) - self.mean) / self.scale  # (N, F)
        hidden = np.tanh(z @ self.hidden_weights + self.hidden_bias)  # (N, H)
        return _softmax(hidden @ self.weights + self.bias)  # (N, 3)

    @classmethod
    def fit(
        cls,
        x: FloatArray,
        y: npt.NDArray[np.int_],
        hidden: int = 8,
        weight_decay: float = 0.01,
        seed: int = 0,
        iterations: int = 2000,
    ) -> TypeClassifier:
        """Fit by L-BFGS on the mean cross-entropy plus ``weight_decay / 2`` times the
        squared weights (not the biases), from a normal initialisation drawn with ``seed``."""
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - mean) / scale
        n, f = z.shape
        k = len(TYPES)
        onehot = np.eye(k)[y]
        shapes = [(f, hidden), (hidden,), (hidden, k), (k,)]

        def unpack(p: FloatArray) -> list[FloatArray]:
            sizes = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]
            return [a.reshape(s) for a, s in zip(np.split(p, sizes), shapes, strict=True)]

        def loss(p: FloatArray) -> tuple[float, FloatArray]:
            w1, b1, w2, b2 = unpack(p)
            a = np.tanh(z @ w1 + b1)
            probabilities = _softmax(a @ w2 + b2)
            value = -np.log(probabilities[onehot.astype(bool)] + 1e-12).mean()
            value += 0.5 * weight_decay * ((w1**2).sum() + (w2**2).sum())
            g = (probabilities - onehot) / n  # d loss / d logits
            ga = (g @ w2.T) * (1 - a**2)
            grads = [z.T @ ga + weight_decay * w1, ga.sum(0), a.T @ g + weight_decay * w2, g.sum(0)]
            return float(value), np.concatenate([gr.ravel() for gr in grads])

        rng = np.random.default_rng(seed)
        start = np.concatenate(
            [
                rng.normal(0, 1 / np.sqrt(f), f * hidden),
                np.zeros(hidden),
                rng.normal(0, 1 / np.sqrt(hidden), hidden * k),
                np.zeros(k),
            ]
        )
        result = optimize.minimize(
            loss, start, jac=True, method="L-BFGS-B", options={"maxiter": iterations}
        )
        return cls(mean, scale, *unpack(result.x))

    def to_json(self) -> str:
        return json.dumps(
            {
                "classes": list(TYPES),
                "features": list(FEATURES),
                **{
                    name: np.round(getattr(self, name), 6).tolist()
                    for name in (
                        "mean",
                        "scale",
                        "hidden_weights",
                        "hidden_bias",
                        "weights",
                        "bias",
                    )
                },
            },
            indent=1,
        )

    @classmethod
    def load(cls, path: Path = PARAMETERS, sha256: str | None = None) -> TypeClassifier:
        """Read parameters written by :meth:`to_json`, after checking their SHA-256."""
        expected = PARAMETERS_SHA256 if sha256 is None and path == PARAMETERS else sha256
        if expected is not None and sha256_of(path) != expected:
            raise ChecksumMismatch(f"{path} does not hash to {expected}; refusing to load it")
        stored = json.loads(path.read_text())
        if tuple(stored["classes"]) != TYPES or tuple(stored["features"]) != FEATURES:
            raise ChecksumMismatch(f"{path} is for other classes or features")
        if len(stored["mean"]) != len(FEATURES) or len(stored["bias"]) != len(TYPES):
            raise ChecksumMismatch(f"{path} has arrays of the wrong size")
        return cls(*(np.asarray(stored[name], dtype=np.float64) for name in ARRAYS))


def _softmax(logits: FloatArray) -> FloatArray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: FloatArray = e / e.sum(axis=1, keepdims=True)
    return result
