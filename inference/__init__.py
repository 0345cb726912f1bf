"""Chest-CT pipeline: series selection -> volume -> preprocess -> batched model -> findings.

The names below load on first use (PEP 562): ``import inference.settings`` (every ``pacs serve``
and CLI command reads it) must not import torch, which only a process running the model needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference.batcher import Batcher
    from inference.pipeline import NODULE_DETECTION, NoduleDetection
    from inference.report_sr import ReportedNodule, Signature, build_signed_sr
    from inference.selection import SelectionRules, select_series

_HOMES = {
    "Batcher": "inference.batcher",
    "NODULE_DETECTION": "inference.pipeline",
    "NoduleDetection": "inference.pipeline",
    "ReportedNodule": "inference.report_sr",
    "Signature": "inference.report_sr",
    "build_signed_sr": "inference.report_sr",
    "SelectionRules": "inference.selection",
    "select_series": "inference.selection",
}

__all__ = [
    "NODULE_DETECTION",
    "Batcher",
    "NoduleDetection",
    "ReportedNodule",
    "SelectionRules",
    "Signature",
    "build_signed_sr",
    "select_series",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'inference' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
