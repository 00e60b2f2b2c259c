"""The label-guided Mamba decoder of each reconstruction layer (IB-IUMAD, "layer-wise auxiliary
reconstruction"): `X_next = Attention(LN(ESSM(LN(X)))) + DwConv(X)`, with a label classifier on its
output so that the features of different objects stay apart while new objects are learned.
The label classifier is model/network/label_classifier.py; ESSM, ES2D and S6 have files of their own.
"""

from __future__ import annotations

import torch
from torch import nn

from model.network.attention import MultiHeadAttention
from model.network.essm import ESSM
from model.network.grid import to_channels_first, to_channels_last


class MambaDecoder(nn.Module):
    """`Xhat = DwConv(X)`, `Xtilde = ESSM(LN(X))`, `out = Attention(LN(Xtilde)) + Xhat`."""

    def __init__(
        self, dim: int, num_heads: int, state_size: int = 16, expand: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm_in = nn.LayerNorm(dim)
        self.essm = ESSM(dim, state_size, expand)
        self.norm_mid = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, num_heads, dropout)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = grid.shape
        local = to_channels_last(self.dwconv(to_channels_first(grid)))
        scanned = self.norm_mid(self.essm(self.norm_in(grid))).reshape(batch, height * width, dim)
        attended = self.attention(scanned)
        return attended.reshape(batch, height, width, dim) + local
