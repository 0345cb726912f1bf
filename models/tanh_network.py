"""A small classifier network: one tanh hidden layer and a softmax, on standardised features.

What the nodule-type classifier (:mod:`models.nodule_type`) and the candidate filter
(:mod:`models.candidate_filter`) are: a few hundred parameters, stored as JSON in the
repository, trained full-batch and deterministically (L-BFGS from an initialisation drawn with a
fixed seed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from scipy import optimize

from models.errors import ChecksumMismatch

FloatArray = npt.NDArray[np.float64]
#: The stored arrays, in the constructor's order.
ARRAYS = ("mean", "scale", "hidden_weights", "hidden_bias", "weights", "bias")


@dataclass(frozen=True)
class TanhNetwork:
    """``p = softmax(tanh(z @ hidden_weights + hidden_bias) @ weights + bias)`` with
    ``z = (x - mean) / scale``."""

    mean: FloatArray
    scale: FloatArray
    hidden_weights: FloatArray  # (features, hidden)
    hidden_bias: FloatArray  # (hidden,)
    weights: FloatArray  # (hidden, classes)
    bias: FloatArray  # (classes,)

    def probabilities(self, x: FloatArray) -> FloatArray:
        """Class probabilities ``(N, classes)`` for feature rows ``(N, features)``."""
        z = (np.atleast_2d(x) - self.mean) / self.scale  # (N, F)
        hidden = np.tanh(z @ self.hidden_weights + self.hidden_bias)  # (N, H)
        return _softmax(hidden @ self.weights + self.bias)  # (N, K)

    @classmethod
    def fit_network(
        cls,
        x: FloatArray,
        y: npt.NDArray[np.int_],
        classes: int,
        hidden: int = 8,
        weight_decay: float = 0.01,
        seed: int = 0,
        iterations: int = 2000,
    ) -> Self:
        """Fit by L-BFGS on the mean cross-entropy plus ``weight_decay / 2`` times the
        squared weights (not the biases), from a normal initialisation drawn with ``seed``."""
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - mean) / scale
        n, f = z.shape
        k = classes
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

    def arrays(self) -> dict[str, Any]:
        """The parameters as lists (six decimals)."""
        return {name: np.round(getattr(self, name), 6).tolist() for name in ARRAYS}

    def network_json(self, classes: tuple[str, ...], features: tuple[str, ...]) -> str:
        """The parameters with the names of the classes and features they are for."""
        return json.dumps(
            {"classes": list(classes), "features": list(features), **self.arrays()}, indent=1
        )

    @classmethod
    def read_network(cls, path: Path, classes: tuple[str, ...], features: tuple[str, ...]) -> Self:
        """The network :meth:`network_json` wrote to *path*, refused (ChecksumMismatch) when it is
        for other classes or features or its arrays have other sizes."""
        try:
            stored = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ChecksumMismatch(f"{path} is not a network's JSON: {exc}") from exc
        if tuple(stored["classes"]) != classes or tuple(stored["features"]) != features:
            raise ChecksumMismatch(f"{path} is for other classes or features")
        if len(stored["mean"]) != len(features) or len(stored["bias"]) != len(classes):
            raise ChecksumMismatch(f"{path} has arrays of the wrong size")
        return cls(*(np.asarray(stored[name], dtype=np.float64) for name in ARRAYS))


def _softmax(logits: FloatArray) -> FloatArray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: FloatArray = e / e.sum(axis=1, keepdims=True)
    return result
