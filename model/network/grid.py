"""Tokens as a grid (B, H, W, C), channels last, so depth-wise convolutions and the ES2D scan see
2-D neighbourhoods; convolutions want channels first."""

from __future__ import annotations

import torch


def to_channels_first(grid: torch.Tensor) -> torch.Tensor:
    return grid.permute(0, 3, 1, 2)


def to_channels_last(grid: torch.Tensor) -> torch.Tensor:
    return grid.permute(0, 2, 3, 1)
