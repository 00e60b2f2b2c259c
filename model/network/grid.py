"""Tokens as a grid (B, H, W, C), channels last, so depth-wise convolutions and the ES2D scan see
2-D neighbourhoods; convolutions want channels first."""

from __future__ import annotations

import torch


def to_channels_first(grid: torch.Tensor) -> torch.Tensor:
    return grid.permute(0, 3, 1, 2)


def to_channels_last(grid: torch.Tensor) -> torch.Tensor:
    return grid.permute(0, 2, 3, 1)


def cells_to_tokens(cells: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, H*f, W*f, C) cells -> (B, H, W, f*f*C) tokens: each token carries its f x f block of cells
    (space to depth; f = 1 is the identity)."""
    if factor == 1:
        return cells
    batch, height, width, channels = cells.shape
    blocks = cells.reshape(batch, height // factor, factor, width // factor, factor, channels)
    return blocks.permute(0, 1, 3, 2, 4, 5).reshape(
        batch, height // factor, width // factor, factor * factor * channels
    )


def tokens_to_cells(tokens: torch.Tensor, factor: int) -> torch.Tensor:
    """The inverse of `cells_to_tokens`: (B, H, W, f*f*C) -> (B, H*f, W*f, C)."""
    if factor == 1:
        return tokens
    batch, height, width, channels = tokens.shape
    cell_channels = channels // (factor * factor)
    blocks = tokens.reshape(batch, height, width, factor, factor, cell_channels)
    return blocks.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * factor, width * factor, cell_channels)
