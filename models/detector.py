"""Loaded models behind one interface: a batch of patches in, candidates per patch out.

``Detector.predict`` takes ``(B, 1, Z, Y, X)`` patches already resampled to the spec's
spacing and normalised to its HU window, on the detector's device, and returns one
:class:`PatchDetections` per patch in that patch's voxels. It never looks across patches, so
the caller may batch patches from any studies together (inference.batcher does).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from models.candidate_cnn import CandidateCNN
from models.candidate_filter import CandidateFilter
from models.detections import Candidate, PatchDetections
from models.errors import InvalidModel
from models.networks.centernet import NoduleCenterNet
from models.networks.decode import decode_centres
from models.registry import Entry
from models.spec import Architecture, ModelSpec
from models.volume import Volume


class SecondStage(Protocol):
    def rescore(self, volume: Volume, candidates: list[Candidate]) -> list[Candidate]:
        """*candidates* of *volume* with new scores, best first."""
        ...


class Detector(Protocol):
    spec: ModelSpec
    device: torch.device
    #: The spec's second stage, loaded and checked; None when it has none.
    candidate_filter: SecondStage | None

    def predict(self, patches: torch.Tensor) -> list[PatchDetections]: ...

    def detect_volume(self, image: torch.Tensor, batch_size: int) -> PatchDetections:
        """One whole ``(Z, Y, X)`` volume with MONAI's own sliding-window inference: the
        one-study-at-a-time reference the cross-study batcher is measured against."""
        ...


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 on CUDA (tensor cores); full precision on the CPU, where autocast would only add casts.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class CenterNetDetector:
    def __init__(
        self,
        spec: ModelSpec,
        network: NoduleCenterNet,
        device: torch.device,
        candidate_filter: SecondStage | None = None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.candidate_filter = candidate_filter
        self.network = network.to(device).eval()

    @torch.inference_mode()
    def predict(self, patches: torch.Tensor) -> list[PatchDetections]:
        outputs = self._forward(patches)
        return decode_centres(outputs, self.spec.score_threshold, self.spec.max_detections)

    def _forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network outputs, the heatmap averaged over the spec's test-time flips.

        Sizes and offsets come from the unflipped pass.
        """
        with _autocast(self.device):
            outputs: dict[str, torch.Tensor] = self.network(patches)
            if not self.spec.test_time_flips:
                return outputs
            probability = torch.sigmoid(outputs["heatmap"].float())
            for axis in self.spec.test_time_flips:
                dim = {"z": 2, "y": 3, "x": 4}[axis]
                probability = probability + self._mirrored(patches, dim)
        probability = probability / (1 + len(self.spec.test_time_flips))
        return {**outputs, "heatmap": torch.logit(probability.clamp(1e-6, 1 - 1e-6))}

    def _mirrored(self, patches: torch.Tensor, dim: int) -> torch.Tensor:
        """Heatmap probability of the patches mirrored along ``dim``, back on their own grid.

        Training puts a nodule centred at input voxel ``p`` in cell ``floor(p / STRIDE)``
        (``models.dataset``), so cell ``i`` stands for voxels ``2i .. 2i + 2``, centred on
        ``2i + 1``. A plain flip of a side of ``n`` voxels (even: a multiple of 16) maps
        ``2i + 1`` to ``n - 2 - 2i``, the border between two cells: the mirrored heatmap, flipped
        back, lay half a cell (one input voxel) towards higher indices. Mirroring about
        ``n / 2`` instead (``v`` to ``n - v``: the flip shifted by one voxel, the edge voxel
        repeated) maps ``2i + 1`` to ``2(n / 2 - 1 - i) + 1``, the centre of the cell that
        flipping the output back returns to ``i``.
        """
        n = patches.shape[dim]
        flipped = patches.flip(dim)
        about_middle = torch.cat([flipped.narrow(dim, 0, 1), flipped.narrow(dim, 0, n - 1)], dim)
        return torch.sigmoid(self.network(about_middle)["heatmap"].float()).flip(dim)

    @torch.inference_mode()
    def detect_volume(self, image: torch.Tensor, batch_size: int) -> PatchDetections:
        from monai.inferers.utils import sliding_window_inference

        # The dense outputs (heatmap, size, offset) of overlapping windows are blended; each
        # window gets the same test-time flips as predict() gives a patch.
        outputs = sliding_window_inference(
            image[None, None],
            list(self.spec.patch_size),
            batch_size,
            self._forward,
            overlap=self.spec.overlap,
            mode="constant",
        )
        assert isinstance(outputs, dict)
        (found,) = decode_centres(outputs, self.spec.score_threshold, 10 * self.spec.max_detections)
        return found


class RetinaNetDetector:
    """MONAI's RetinaNet (bundle layout): the bundle reads volumes as ``(X, Y, Z)`` in RAS.

    Our patches are ``[z, y, x]`` with x and y running along L and P (LPS), so they are
    transposed and x, y flipped on the way in, and box centres mapped back on the way out.
    """

    def __init__(
        self,
        spec: ModelSpec,
        detector: torch.nn.Module,
        device: torch.device,
        candidate_filter: SecondStage | None = None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.candidate_filter = candidate_filter
        self.detector = detector.to(device).eval()

    @torch.inference_mode()
    def predict(self, patches: torch.Tensor) -> list[PatchDetections]:
        # (B,1,Z,Y,X) LPS -> (B,1,X,Y,Z) RAS
        ras = patches.permute(0, 1, 4, 3, 2).flip(2, 3)
        with _autocast(self.device):
            outputs = self.detector(ras, use_inferer=False)
        return [self._from_ras(o, patches.shape[4], patches.shape[3]) for o in outputs]

    @torch.inference_mode()
    def detect_volume(self, image: torch.Tensor, batch_size: int) -> PatchDetections:
        z, y, x = self.spec.patch_size
        self.detector.set_sliding_window_inferer(  # type: ignore[operator]
            roi_size=[x, y, z],
            sw_batch_size=batch_size,
            overlap=self.spec.overlap,
            mode="constant",
            padding_mode="constant",
            cval=0.0,
        )
        # (1, 1, X, Y, Z): a batch tensor, not a list (MONAI's list path trips over NumPy 2).
        ras = image.permute(2, 1, 0).flip(0, 1)[None, None]
        with _autocast(self.device):
            (output,) = self.detector(ras, use_inferer=True)
        return self._from_ras(output, image.shape[2], image.shape[1])

    def _from_ras(
        self, output: dict[str, torch.Tensor], size_x: int, size_y: int
    ) -> PatchDetections:
        boxes = output["boxes"].float().cpu().double().numpy()  # x1 y1 z1 x2 y2 z2, RAS voxels
        centre_ras = (boxes[:, :3] + boxes[:, 3:]) / 2 - 0.5
        sides_mm = (boxes[:, 3:] - boxes[:, :3]) * np.asarray(self.spec.spacing_mm)
        centres = np.stack(
            [centre_ras[:, 2], size_y - 1 - centre_ras[:, 1], size_x - 1 - centre_ras[:, 0]],
            axis=1,
        )
        return PatchDetections(
            centres,
            sides_mm.mean(axis=1) if len(sides_mm) else np.zeros(0),
            output["labels_scores"].float().cpu().double().numpy(),
        )


def load_detector(entry: Entry, device: torch.device | str = "cpu") -> Detector:
    """Build the entry's network, load its checksum-verified weights, ready for ``predict``."""
    device = torch.device(device)
    path = entry.verified_weights()
    spec = entry.spec
    if spec.architecture is Architecture.CENTERNET3D:
        widths = spec.network.get("widths", [16, 32, 64, 96])
        if not isinstance(widths, list) or len(widths) != 4:
            raise InvalidModel(f"{spec.key}: network.widths must list four channel counts")
        network = NoduleCenterNet((widths[0], widths[1], widths[2], widths[3]))
        try:
            network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, KeyError) as exc:
            raise InvalidModel(f"{spec.key}: weights do not fit the network: {exc}") from exc
        return CenterNetDetector(spec, network, device, _candidate_filter(entry, device))
    from models.networks import retinanet

    network_module = retinanet.build_network(dict(spec.network))
    try:
        loaded = retinanet.load_weights(network_module, str(path), torch.device("cpu"))
    except (RuntimeError, KeyError) as exc:
        raise InvalidModel(f"{spec.key}: weights do not fit the bundle's RetinaNet: {exc}") from exc
    detector = retinanet.build_detector(
        loaded, spec.score_threshold, spec.max_detections, dict(spec.network)
    )
    return RetinaNetDetector(spec, detector, device, _candidate_filter(entry, device))


def _candidate_filter(entry: Entry, device: torch.device) -> SecondStage | None:
    """The entry's second stage, checked against its SHA-256; None when the spec names none."""
    spec = entry.spec
    if spec.candidate_filter is None:
        return None
    if spec.candidate_filter_sha256 is None:
        raise InvalidModel(f"{spec.key}: candidate_filter needs candidate_filter_sha256")
    path, sha256 = entry.folder / spec.candidate_filter, spec.candidate_filter_sha256
    if spec.candidate_filter_kind == "cnn":
        return CandidateCNN.load(path, sha256, device)
    return CandidateFilter.load(path, sha256)
