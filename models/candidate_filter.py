"""The detector's second stage: a small network that rescores each candidate on what the CT
around it looks like (:mod:`models.candidate_features`), as LUNA16's "false positive
reduction" stage does.

The detector sees a nodule in a 3 mm heatmap cell; vessels in cross-section, a branching or
the chest wall can light that cell as brightly as a small nodule does, and those are most of
the candidates that outscore real nodules. The filter's score of a candidate being a nodule,
``p``, is combined with the detector's ``q`` as ``sqrt(p * q)``, their geometric mean: a
candidate the detector is sure of and the filter doubts drops, one both doubt stays low.
Candidates are then ordered by that score, which is what the report threshold and the FROC
see; it ranks, it is not a calibrated probability.

Its parameters are a JSON file in the detector's model folder, named with its SHA-256 in
model.yaml (``candidate_filter``, ``candidate_filter_sha256``) and checked on load, made by
:mod:`models.candidate_recipe` from candidates of the detector on training scans only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.candidate_features import FEATURES, cube, features
from models.detections import Candidate, ranked
from models.registry import verified_file
from models.tanh_network import FloatArray, TanhNetwork
from models.volume import Volume

#: The network's classes, in the order of its outputs.
CLASSES = ("other", "nodule")
#: Its size and weight decay (chosen on the validation phantoms: models/candidate_recipe.py).
HIDDEN = 8
WEIGHT_DECAY = 0.06


@dataclass(frozen=True)
class CandidateFilter(TanhNetwork):
    """A :class:`TanhNetwork` over :data:`FEATURES`: is a candidate a nodule?"""

    @classmethod
    def fit(cls, x: FloatArray, nodule: npt.NDArray[np.bool_], seed: int = 0) -> CandidateFilter:
        return cls.fit_network(x, nodule.astype(np.int_), len(CLASSES), HIDDEN, WEIGHT_DECAY, seed)

    def nodule_probability(self, x: FloatArray) -> FloatArray:
        """``p`` of each feature row ``(N, features)`` being a nodule."""
        result: FloatArray = self.probabilities(x)[:, 1]
        return result

    def rescore(self, volume: Volume, candidates: list[Candidate]) -> list[Candidate]:
        """*candidates* of *volume* with the combined score (see module), best first."""
        if not candidates:
            return []
        rows = np.stack(
            [features(cube(volume, c.centre), c.probability, c.diameter_mm) for c in candidates]
        )
        scores = np.sqrt(self.nodule_probability(rows) * [c.probability for c in candidates])
        return ranked(candidates, scores)

    def to_json(self) -> str:
        return self.network_json(CLASSES, FEATURES)

    @classmethod
    def load(cls, path: Path, sha256: str) -> CandidateFilter:
        """Read parameters written by :meth:`to_json`, after checking their SHA-256."""
        return cls.read_network(verified_file(path, sha256, "candidate filter"), CLASSES, FEATURES)
