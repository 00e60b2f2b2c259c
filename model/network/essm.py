"""ESSM, the efficient state-space module of each Mamba decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.network.es2d import es2d_merge, es2d_split
from model.network.grid import to_channels_first, to_channels_last
from model.network.s6 import SelectiveScan1D


class ESSM(nn.Module):
    """Efficient state-space module: in-projection, depth-wise conv, ES2D selective scan, gate."""

    def __init__(self, dim: int, state_size: int = 16, expand: int = 2) -> None:
        super().__init__()
        inner = expand * dim
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv2d(inner, inner, kernel_size=3, padding=1, groups=inner)
        self.scan = SelectiveScan1D(inner, state_size)
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x, gate = self.in_proj(grid).chunk(2, dim=-1)
        x = F.silu(to_channels_last(self.conv(to_channels_first(x))))
        sequences, size = es2d_split(x)
        y = es2d_merge(self.scan(sequences), size)
        return self.out_proj(self.out_norm(y) * F.silu(gate))
