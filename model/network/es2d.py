"""ES2D, efficient 2-D scanning: a grid as four interleaved half-resolution sequences (two of them
transposed), so one 1-D scan sees each token with neighbours in both directions at a quarter of the
cost of scanning the full grid four ways."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def es2d_split(grid: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Efficient 2-D scanning: four interleaved half-resolution sub-grids (step 2), two transposed.

    (B, H, W, C) -> (4B, L, C) sequences, L = ceil(H/2) * ceil(W/2). Odd sizes are padded by
    replication so all four sub-grids have the same length.
    """
    batch, height, width, channels = grid.shape
    if height % 2 or width % 2:
        grid = F.pad(grid.permute(0, 3, 1, 2), (0, width % 2, 0, height % 2), mode="replicate").permute(
            0, 2, 3, 1
        )
    sub_h, sub_w = grid.shape[1] // 2, grid.shape[2] // 2
    row_major_a = grid[:, 0::2, 0::2]
    row_major_b = grid[:, 1::2, 1::2]
    column_major_a = grid[:, 0::2, 1::2].transpose(1, 2)
    column_major_b = grid[:, 1::2, 0::2].transpose(1, 2)
    sequences = torch.cat(
        [
            part.reshape(batch, sub_h * sub_w, channels)
            for part in (row_major_a, row_major_b, column_major_a, column_major_b)
        ],
        dim=0,
    )
    return sequences, (height, width)


def es2d_merge(sequences: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `es2d_split`: (4B, L, C) -> (B, H, W, C)."""
    height, width = size
    padded_h, padded_w = height + height % 2, width + width % 2
    sub_h, sub_w = padded_h // 2, padded_w // 2
    batch = sequences.shape[0] // 4
    channels = sequences.shape[-1]
    parts = sequences.reshape(4, batch, -1, channels)
    grid = sequences.new_empty(batch, padded_h, padded_w, channels)
    grid[:, 0::2, 0::2] = parts[0].reshape(batch, sub_h, sub_w, channels)
    grid[:, 1::2, 1::2] = parts[1].reshape(batch, sub_h, sub_w, channels)
    grid[:, 0::2, 1::2] = parts[2].reshape(batch, sub_w, sub_h, channels).transpose(1, 2)
    grid[:, 1::2, 0::2] = parts[3].reshape(batch, sub_w, sub_h, channels).transpose(1, 2)
    return grid[:, :height, :width]
