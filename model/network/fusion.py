"""IBFM: information-bottleneck fusion of the two reconstructed streams.

`F_fu = Fuse(F_rgb, F_depth)` (cross-attention both ways by default; addition or concatenation as
ablations), `F_g = g(F_fu)` through a narrow bottleneck (linear + ReLU + dropout, and back), and a
classifier on each so that `L_IB = KL[P(Y|F_fu) || P(Y|F_g)]` keeps in `F_g` what predicts the label
while the narrow width drops the rest. `F_g` is decoded back to the original features of both
modalities (`L_Fusion`), and that decoding is what the anomaly map compares against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.network.attention import MultiHeadAttention
from model.network.config import ModelConfig
from model.network.label_classifier import LabelClassifier


class CrossAttentionFusion(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_rgb = nn.LayerNorm(dim)
        self.norm_depth = nn.LayerNorm(dim)
        self.rgb_from_depth = MultiHeadAttention(dim, num_heads, dropout)
        self.depth_from_rgb = MultiHeadAttention(dim, num_heads, dropout)
        self.combine = nn.Linear(2 * dim, dim)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        rgb_n, depth_n = self.norm_rgb(rgb), self.norm_depth(depth)
        rgb_out = rgb + self.rgb_from_depth(rgb_n, depth_n)
        depth_out = depth + self.depth_from_rgb(depth_n, rgb_n)
        return self.combine(torch.cat([rgb_out, depth_out], dim=-1))


class AddFusion(nn.Module):
    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return rgb + depth


class ConcatFusion(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.combine = nn.Linear(2 * dim, dim)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return self.combine(torch.cat([rgb, depth], dim=-1))


def build_fusion(config: ModelConfig) -> nn.Module:
    if config.fusion == "cross_attention":
        return CrossAttentionFusion(config.hidden_size, config.num_heads, config.dropout)
    if config.fusion == "add":
        return AddFusion()
    return ConcatFusion(config.hidden_size)


@dataclass
class FusionOutput:
    logits_fused: torch.Tensor  # P(Y | F_fu), (B, K)
    logits_bottleneck: torch.Tensor  # P(Y | F_g), (B, K)
    rgb: torch.Tensor  # RGB features decoded from F_g, (B, H, W, C_rgb)
    depth: torch.Tensor | None  # depth features from F_g, None unless `reconstruct_depth_in_fusion`


class InformationBottleneckFusion(nn.Module):
    def __init__(self, config: ModelConfig, rgb_channels: int, depth_channels: int, num_classes: int) -> None:
        super().__init__()
        dim = config.hidden_size
        narrow = max(8, int(dim * config.bottleneck_ratio))
        self.fuse = build_fusion(config)
        self.bottleneck = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, narrow),
            nn.ReLU(),
            nn.Dropout(config.bottleneck_dropout),
            nn.Linear(narrow, dim),
        )
        self.classifier_fused = LabelClassifier(dim, num_classes)
        self.classifier_bottleneck = LabelClassifier(dim, num_classes)
        self.decode_rgb = nn.Linear(dim, rgb_channels)
        self.decode_depth = nn.Linear(dim, depth_channels) if config.reconstruct_depth_in_fusion else None

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> FusionOutput:
        """rgb/depth hidden grids (B, H, W, d) -> classifier logits and reconstructions (B, H, W, C)."""
        batch, height, width, dim = rgb.shape
        fused = self.fuse(rgb.reshape(batch, -1, dim), depth.reshape(batch, -1, dim)).reshape(
            batch, height, width, dim
        )
        compressed = self.bottleneck(fused)
        return FusionOutput(
            logits_fused=self.classifier_fused(fused),
            logits_bottleneck=self.classifier_bottleneck(compressed),
            rgb=self.decode_rgb(compressed),
            depth=self.decode_depth(compressed) if self.decode_depth is not None else None,
        )

    def grow(self, num_classes: int) -> None:
        self.classifier_fused.grow(num_classes)
        self.classifier_bottleneck.grow(num_classes)
