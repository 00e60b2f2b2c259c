"""MFEN: frozen backbone features of RGB and depth, aligned to one grid (the map's), one vector per cell.

The backbone is frozen, so these features are cached for training; anomaly synthesis (feature jitter)
happens on the cached tokens inside the network, in training only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import FrozenBackbone


class MultiScaleFeatures(nn.Module):
    """(B, 3, H, W) images in [0, 1] -> (B, C, H/g, W/g) on the grid of stride g (16 or 8): each
    stage optionally averaged over its `aggregation` x `aggregation` neighbourhood, finer stages
    average-pooled to the grid, coarser ones repeated over it (nearest), all concatenated.

    H and W must be multiples of 16 (the configured image size always is).
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        strides: Sequence[int] = (4, 8, 16),
        grid_stride: int = 16,
        aggregation: int = 1,
    ) -> None:
        super().__init__()
        missing = [s for s in strides if s not in backbone.strides]
        if missing:
            raise ValueError(f"backbone does not provide strides {missing}")
        self.backbone = backbone
        self.grid_stride = grid_stride
        self.aggregation = aggregation
        self.indices = [backbone.strides.index(s) for s in strides]
        self.channels = sum(backbone.channels[i] for i in self.indices)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(images)
        aligned = []
        for index in self.indices:
            # Fixed factors (not adaptive pooling) keep the graph static for ONNX export.
            stride, feature = self.backbone.strides[index], maps[index]
            if self.aggregation > 1:
                feature = F.avg_pool2d(
                    feature,
                    self.aggregation,
                    stride=1,
                    padding=self.aggregation // 2,
                    count_include_pad=False,
                )
            if stride < self.grid_stride:
                feature = F.avg_pool2d(feature, self.grid_stride // stride)
            elif stride > self.grid_stride:
                feature = F.interpolate(feature, scale_factor=stride // self.grid_stride, mode="nearest")
            aligned.append(feature)
        return torch.cat(aligned, dim=1)


def feature_jitter(tokens: torch.Tensor, scale: float, probability: float) -> torch.Tensor:
    """Turn normal tokens into synthetic anomalies: Gaussian noise scaled by each token's norm.

    tokens (B, H, W, C); noise ~ N(0, (scale * ||t|| / C)^2), applied to a sample with `probability`.
    """
    if scale <= 0 or probability <= 0:
        return tokens
    norms = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
    # Drawn contiguous: `tokens` is usually a channels-last view, and filling a strided tensor with
    # normals takes PyTorch's slow element-wise path (17 ms instead of 2 ms per branch and step).
    noise = torch.randn(tokens.shape, dtype=tokens.dtype, device=tokens.device) * norms * scale
    if probability < 1:
        keep = (torch.rand(tokens.shape[0], 1, 1, 1, device=tokens.device) < probability).to(tokens.dtype)
        noise = noise * keep
    return tokens + noise
