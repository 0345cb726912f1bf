"""Nodule detectors: networks, registry and model cards, synthetic data, training, evaluation."""
