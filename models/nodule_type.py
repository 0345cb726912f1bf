"""Nodule type (solid / part-solid / ground-glass) from the density inside its outline.

A small neural network (one tanh hidden layer of eight units) on the features of
:mod:`models.type_features`. Its parameters are a small JSON file in the repository, checked
by SHA-256 on load and made by the recipe in :mod:`models.character_recipe` from synthetic
nodules only. Training is full-batch and deterministic (L-BFGS from a fixed initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.registry import verified_file
from models.tanh_network import FloatArray, TanhNetwork
from models.type_features import FEATURES

#: The classifier's classes, in the order of its outputs (the words Lung-RADS uses).
TYPES = ("solid", "part-solid", "ground-glass")
PARAMETERS = Path(__file__).parent / "zoo" / "nodule-type" / "2" / "parameters.json"
#: SHA-256 of PARAMETERS, as the recipe wrote it.
PARAMETERS_SHA256 = "43314c2a03b13b18043bbb5d7a33d74fcc84a1f756f9cd82dea8a8231ed0b4e7"


@dataclass(frozen=True)
class TypeClassifier(TanhNetwork):
    """A :class:`TanhNetwork` over :data:`FEATURES` whose classes are :data:`TYPES`."""

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
        """:meth:`TanhNetwork.fit_network` with the classes of :data:`TYPES`."""
        return cls.fit_network(x, y, len(TYPES), hidden, weight_decay, seed, iterations)

    def to_json(self) -> str:
        return self.network_json(TYPES, FEATURES)

    @classmethod
    def load(cls, path: Path = PARAMETERS, sha256: str | None = None) -> TypeClassifier:
        """Read parameters written by :meth:`to_json`, after checking their SHA-256: the
        bundled file's against PARAMETERS_SHA256, another file's (a site's own, a recipe's
        output) when *sha256* is given (ChecksumMismatch: missing or other bytes)."""
        expected = PARAMETERS_SHA256 if sha256 is None and path == PARAMETERS else sha256
        if expected is not None:
            path = verified_file(path, expected, "nodule type parameters")
        return cls.read_network(path, TYPES, FEATURES)
