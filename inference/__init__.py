"""Chest-CT pipeline: series selection -> volume -> preprocess -> batched model -> findings."""

from inference.batcher import Batcher
from inference.pipeline import NODULE_DETECTION, NoduleDetection
from inference.selection import SelectionRules, select_series

__all__ = ["NODULE_DETECTION", "Batcher", "NoduleDetection", "SelectionRules", "select_series"]
