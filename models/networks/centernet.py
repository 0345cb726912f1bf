"""A compact 3D CenterNet-style nodule detector: centre heatmap, diameter and sub-voxel offset.

Input ``(B, 1, Z, Y, X)`` normalised CT at the model's spacing, each side a multiple of 16.
Output at stride 2: ``heatmap`` logits ``(B, 1, Z/2, Y/2, X/2)``, ``log_diameter`` (mm) and
``offset`` ``(B, 3, ...)`` of the centre within its output cell, in cells. Every layer works on
one sample at a time (GroupNorm, no BatchNorm), so a patch gives the same output whatever
else is in its batch: the property the cross-study batcher relies on.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

STRIDE = 2


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(min(8, out_channels // 4), out_channels),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels),
            nn.Conv3d(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(min(8, channels // 4), channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.relu(x + self.body(x))


class NoduleCenterNet(nn.Module):
    """Encoder at strides 2-16 with a feature-pyramid decoder back to stride 2."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 96)) -> None:
        super().__init__()
        w2, w4, w8, w16 = widths
        self.stem = nn.Sequential(_conv(1, w2, stride=2), _Residual(w2))
        self.down4 = nn.Sequential(_conv(w2, w4, stride=2), _Residual(w4))
        self.down8 = nn.Sequential(_conv(w4, w8, stride=2), _Residual(w8))
        self.down16 = nn.Sequential(_conv(w8, w16, stride=2), _Residual(w16))
        self.lateral8 = nn.Conv3d(w8, w16, 1)
        self.merge8 = _conv(w16, w4)
        self.lateral4 = nn.Conv3d(w4, w4, 1)
        self.merge4 = _conv(w4, w2)
        self.lateral2 = nn.Conv3d(w2, w2, 1)
        self.merge2 = _conv(w2, w2)
        self.heatmap = nn.Conv3d(w2, 1, 1)
        self.log_diameter = nn.Conv3d(w2, 1, 1)
        self.offset = nn.Conv3d(w2, 3, 1)
        # Start with a low prior on "nodule here" (CenterNet / focal-loss initialisation).
        assert self.heatmap.bias is not None and self.log_diameter.bias is not None
        nn.init.constant_(self.heatmap.bias, -4.6)
        nn.init.constant_(self.log_diameter.bias, 2.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # 1. encoder: (B,1,Z,Y,X) -> f2 (B,w2,Z/2..) -> f4 -> f8 -> f16 (B,w16,Z/16..)
        f2 = self.stem(x)
        f4 = self.down4(f2)
        f8 = self.down8(f4)
        f16 = self.down16(f8)
        # 2. decoder: upsample and add laterals back to stride 2 -> (B,w2,Z/2,Y/2,X/2)
        p8 = self.merge8(_up(f16) + self.lateral8(f8))
        p4 = self.merge4(_up(p8) + self.lateral4(f4))
        p2 = self.merge2(_up(p4) + self.lateral2(f2))
        # 3. heads at stride 2
        return {
            "heatmap": self.heatmap(p2),
            "log_diameter": self.log_diameter(p2),
            "offset": torch.sigmoid(self.offset(p2)),
        }


def _up(x: torch.Tensor) -> torch.Tensor:
    return functional.interpolate(x, scale_factor=2.0, mode="nearest")
