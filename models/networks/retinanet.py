"""MONAI's 3D RetinaNet configured as the ``lung_nodule_ct_detection`` bundle configures it.

Site models: a hospital that has the bundle's ``model.pt`` (a state dict of this network, or
TorchScript) registers it and runs it without code changes. Needs torchvision (through
``monai.apps.detection``), so it is imported only when such a model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# The bundle's configs/inference.json, written out.
BUNDLE_NETWORK: dict[str, object] = {
    "num_classes": 1,
    "num_anchors": 3,
    "size_divisible": [16, 16, 8],
    "feature_map_scales": [1, 2, 4],
    "base_anchor_shapes": [[6, 8, 4], [8, 6, 5], [10, 10, 6]],
    "returned_layers": [1, 2],
    "conv1_t_stride": [2, 2, 1],
    "conv1_t_size": [7, 7, 7],
    "nms_iou": 0.22,
    "topk_candidates_per_level": 1000,
}


def build_network(params: dict[str, object] | None = None) -> nn.Module:
    """The RetinaNet module whose state dict the bundle's ``model.pt`` holds (190 tensors)."""
    from monai.apps.detection.networks.retinanet_network import (
        RetinaNet,
        resnet_fpn_feature_extractor,
    )
    from monai.networks.nets import resnet

    p = {**BUNDLE_NETWORK, **(params or {})}
    backbone = resnet.resnet50(
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_stride=_ints(p["conv1_t_stride"]),
        conv1_t_size=_ints(p["conv1_t_size"]),
    )
    extractor = resnet_fpn_feature_extractor(backbone, 3, False, _ints(p["returned_layers"]), None)
    return RetinaNet(
        spatial_dims=3,
        num_classes=int(p["num_classes"]),  # type: ignore[call-overload]
        num_anchors=int(p["num_anchors"]),  # type: ignore[call-overload]
        feature_extractor=extractor,
        size_divisible=_ints(p["size_divisible"]),
    )


def build_detector(
    network: nn.Module,
    score_threshold: float,
    max_detections: int,
    params: dict[str, object] | None = None,
) -> nn.Module:
    """RetinaNetDetector around ``network``: anchors, box decoding and per-patch NMS."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    p = {**BUNDLE_NETWORK, **(params or {})}
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=_ints(p["feature_map_scales"]),
        base_anchor_shapes=[_ints(s) for s in p["base_anchor_shapes"]],  # type: ignore[attr-defined]
    )
    detector = RetinaNetDetector(network=network, anchor_generator=anchors, spatial_dims=3)
    detector.set_box_selector_parameters(
        score_thresh=score_threshold,
        topk_candidates_per_level=int(p["topk_candidates_per_level"]),  # type: ignore[call-overload]
        nms_thresh=float(p["nms_iou"]),  # type: ignore[arg-type]
        detections_per_img=max_detections,
    )
    return detector


def load_weights(network: nn.Module, path: str, device: torch.device) -> nn.Module:
    """Load ``model.pt`` as a state dict, or as TorchScript when it is one."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except RuntimeError:
        scripted: nn.Module = torch.jit.load(path, map_location=device)  # type: ignore[no-untyped-call]
        return scripted
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    network.load_state_dict(state)
    return network


def _ints(value: object) -> list[int]:
    assert isinstance(value, Sequence)
    return [int(v) for v in value]
