"""Inference settings (environment, prefix ``PACS_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PACS_", extra="ignore")

    #: Registry name (and optional version) of the detector to run.
    model: str = "demo-nodule-centernet"
    model_version: str | None = None
    #: "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: Patches per forward pass and how long the batcher waits to fill a batch.
    batch_size: int = Field(default=4, ge=1, le=256)
    batch_wait_ms: float = Field(default=20.0, ge=0.0)
    #: Jobs a worker runs at once (their patches share the batcher).
    worker_concurrency: int = Field(default=2, ge=1, le=64)
    #: In-process workers `pacs serve` runs (0: leave inference to `pacs worker`).
    workers: int = Field(default=1, ge=0, le=16)
    #: Series selection.
    min_slices: int = Field(default=64, ge=1)
    max_slice_spacing_mm: float = Field(default=3.0, gt=0)
    min_coverage_mm: float = Field(default=120.0, ge=0)
    #: Job lease; a worker heartbeats at a third of it.
    job_lease_s: float = Field(default=120.0, gt=1)

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
