"""Chest-CT pipeline: series selection -> volume -> preprocess -> batched model -> findings."""

from inference.batcher import Batcher
from inference.pipeline import NODULE_DETECTION, NoduleDetection
from inference.report_sr import ReportedNodule, Signature, build_signed_sr
from inference.selection import SelectionRules, select_series

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
