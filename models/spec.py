"""A model's frozen configuration: everything inference needs to run it, read from model.yaml."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.errors import InvalidModel


class Architecture(enum.StrEnum):
    #: The bundled demo detector (models.networks.centernet).
    CENTERNET3D = "centernet3d"
    #: MONAI's 3D RetinaNet as in the lung_nodule_ct_detection bundle (site weights).
    MONAI_RETINANET = "monai_retinanet"


class ModelSpec(BaseModel):
    """Name, version, architecture and the pre/post-processing the weights were trained with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str = Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,31}$")
    architecture: Architecture
    #: Architecture parameters (channel widths, ...), passed to the network's builder.
    network: dict[str, list[int] | int | float | str] = Field(default_factory=dict)
    #: Voxel size the model expects, mm, along x, y, z.
    spacing_mm: tuple[float, float, float]
    #: HU mapped linearly to 0..1 (clipped).
    hu_window: tuple[float, float]
    #: Sliding-window patch, voxels, along z, y, x, and the fraction neighbours overlap.
    patch_size: tuple[int, int, int]
    overlap: float = Field(ge=0.0, lt=1.0)
    score_threshold: float = Field(ge=0.0, le=1.0)
    #: Operating point: candidates at or above it are reported as findings (SR, SEG, FHIR);
    #: evaluation uses every candidate above ``score_threshold``.
    report_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    #: Spheres closer than this times the larger radius are one nodule (see detections.suppress).
    nms_overlap: float = Field(gt=0.0)
    max_detections: int = Field(gt=0)
    #: Test-time augmentation: heatmaps averaged with those of the patch mirrored along these
    #: axes ("x", "y", "z"); each costs one more forward pass (CenterNet only).
    test_time_flips: tuple[str, ...] = ()
    #: Second stage (models.candidate_filter): a file in the model's folder rescoring each
    #: candidate on the CT around it, and its SHA-256; none: the detector's scores stand.
    candidate_filter: str | None = None
    candidate_filter_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    #: What that file holds: "features" (models.candidate_filter, a small network over
    #: hand-made features, JSON) or "cnn" (models.candidate_cnn, a 3D CNN on the CT cube and
    #: the features, torch).
    candidate_filter_kind: Literal["features", "cnn"] = "features"
    weights: str = "weights.pt"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    card: str = "card.md"
    #: One line on what it is for; the card says the rest.
    intended_use: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    @classmethod
    def read(cls, path: Path) -> ModelSpec:
        try:
            return cls.model_validate(yaml.safe_load(path.read_text()))
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise InvalidModel(f"{path}: {exc}") from exc

    def write(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
