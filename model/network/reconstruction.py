"""MRN: one reconstruction branch per modality, turning (jittered) features back into normal ones.

Each layer is a pre-norm transformer layer whose token mixer is the label-guided Mamba decoder (or
plain self-attention when the Mamba ablation switch is off), followed by a feed-forward block. The
Mamba decoder's output is added into the reconstruction stream and feeds that layer's label classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.network.attention import MultiHeadAttention
from model.network.config import ModelConfig
from model.network.label_classifier import LabelClassifier
from model.network.mamba_decoder import MambaDecoder
from model.network.object_adapters import ObjectAdapters


class FeedForward(nn.Module):
    def __init__(self, dim: int, ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(self.norm(x)))))


class SelfAttention(nn.Module):
    """The plain token mixer used when the Mamba decoder is switched off (ablation)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, num_heads, dropout)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = grid.shape
        tokens = self.norm(grid).reshape(batch, height * width, dim)
        attended = self.attention(tokens)
        return attended.reshape(batch, height, width, dim)


class ReconstructionLayer(nn.Module):
    def __init__(self, config: ModelConfig, num_classes: int) -> None:
        super().__init__()
        dim = config.hidden_size
        if config.use_mamba:
            self.mixer: nn.Module = MambaDecoder(
                dim, config.num_heads, config.state_size, config.expand, config.dropout
            )
            self.classifier: LabelClassifier | None = LabelClassifier(dim, num_classes)
        else:
            self.mixer = SelfAttention(dim, config.num_heads, config.dropout)
            self.classifier = None
        self.feed_forward = FeedForward(dim, config.ffn_ratio, config.dropout)

    def forward(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        mixed = self.mixer(grid)
        logits = self.classifier(mixed) if self.classifier is not None else None
        grid = grid + mixed
        grid = grid + self.feed_forward(grid)
        return grid, logits


class ReconstructionBranch(nn.Module):
    """Input projection + learned 2-D position embedding + layers + output projection, with each
    object's adapter after the input projection and after every layer when the config has them."""

    def __init__(self, config: ModelConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        dim = config.hidden_size
        self.input_proj = nn.Linear(in_channels, dim)
        grid = config.grid_size
        self.position = nn.Parameter(torch.zeros(1, grid, grid, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(
            ReconstructionLayer(config, num_classes) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.output_proj = nn.Linear(dim, in_channels)
        rank = config.object_adapter_rank
        # [input projection's low-rank correction, a residual adapter after it and after every layer,
        # the output projection's low-rank correction]
        self.adapters = (
            nn.ModuleList(
                [
                    ObjectAdapters(in_channels, rank, num_classes, out_dim=dim, residual=False),
                    *(ObjectAdapters(dim, rank, num_classes) for _ in range(config.num_layers + 1)),
                    ObjectAdapters(dim, rank, num_classes, out_dim=in_channels, residual=False),
                ]
            )
            if rank > 0
            else None
        )

    def position_for(self, height: int, width: int) -> torch.Tensor:
        if self.position.shape[1:3] == (height, width):
            return self.position
        resized = F.interpolate(
            self.position.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False
        )
        return resized.permute(0, 2, 3, 1)

    def forward(
        self, features: torch.Tensor, objects: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """features (B, H, W, C_in), objects (B,) labels (needed with adapters) -> (hidden (B, H, W, d),
        reconstruction (B, H, W, C_in), per-layer label logits)."""
        if self.adapters is not None and objects is None:
            raise ValueError("a branch with object adapters needs the objects' labels")
        grid = self.input_proj(features) + self.position_for(features.shape[1], features.shape[2])
        if self.adapters is not None:
            grid = self.adapters[1](grid + self.adapters[0](features, objects), objects)
        all_logits = []
        for index, layer in enumerate(self.layers):
            grid, logits = layer(grid)
            if self.adapters is not None:
                grid = self.adapters[index + 2](grid, objects)
            if logits is not None:
                all_logits.append(logits)
        hidden = self.norm(grid)
        reconstruction = self.output_proj(hidden)
        if self.adapters is not None:
            reconstruction = reconstruction + self.adapters[-1](hidden, objects)
        return hidden, reconstruction, all_logits

    def grow(self, num_classes: int) -> None:
        for layer in self.layers:
            if layer.classifier is not None:
                layer.classifier.grow(num_classes)
        for adapters in self.adapters or ():
            adapters.grow(num_classes)
