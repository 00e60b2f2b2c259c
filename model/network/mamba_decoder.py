"""The label-guided Mamba decoder of each reconstruction layer (IB-IUMAD, "layer-wise auxiliary
reconstruction"): `X_next = Attention(LN(ESSM(LN(X)))) + DwConv(X)`, with a label classifier on its
output so that the features of different objects stay apart while new objects are learned.

Tokens are kept as a grid (B, H, W, C) so the depth-wise convolutions and the ES2D scan see 2-D
neighbourhoods.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.network.attention import MultiHeadAttention
from model.network.selective_scan import selective_scan


def _to_channels_first(grid: torch.Tensor) -> torch.Tensor:
    return grid.permute(0, 3, 1, 2)


def _to_channels_last(grid: torch.Tensor) -> torch.Tensor:
    return grid.permute(0, 2, 3, 1)


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


class SelectiveScan1D(nn.Module):
    """Mamba S6 over sequences: input-dependent dt, B, C; S4D-real initialisation of A."""

    def __init__(
        self,
        channels: int,
        state_size: int = 16,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        self.state_size = state_size
        self.dt_rank = dt_rank or math.ceil(channels / 16)
        self.x_proj = nn.Linear(channels, self.dt_rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, channels, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():  # inverse softplus, so softplus(bias) starts in [dt_min, dt_max]
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a = torch.arange(1, state_size + 1, dtype=torch.float32).repeat(channels, 1)
        self.A_log = nn.Parameter(torch.log(a))  # S4D-real: A = -(1..N)
        self.D = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, C) -> (B, L, C)."""
        projected = self.x_proj(x)
        dt_low, b, c = projected.split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        delta = F.linear(dt_low, self.dt_proj.weight)  # bias is added inside the scan (softplus)
        y = selective_scan(
            x.transpose(1, 2),
            delta.transpose(1, 2),
            -torch.exp(self.A_log),
            b.transpose(1, 2),
            c.transpose(1, 2),
            self.D,
            None,
            self.dt_proj.bias,
            True,
        )
        return y.transpose(1, 2)


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
        x = F.silu(_to_channels_last(self.conv(_to_channels_first(x))))
        sequences, size = es2d_split(x)
        y = es2d_merge(self.scan(sequences), size)
        return self.out_proj(self.out_norm(y) * F.silu(gate))


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
        local = _to_channels_last(self.dwconv(_to_channels_first(grid)))
        scanned = self.norm_mid(self.essm(self.norm_in(grid))).reshape(batch, height * width, dim)
        attended = self.attention(scanned)
        return attended.reshape(batch, height, width, dim) + local


class LabelClassifier(nn.Module):
    """Pool -> MLP -> one logit per enrolled object. Grows in place; old logits keep their index."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, dim // 2)
        self.out = nn.Linear(dim // 2, num_classes)

    @property
    def num_classes(self) -> int:
        return self.out.out_features

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = tokens.flatten(1, -2).mean(dim=1)
        return self.out(F.gelu(self.hidden(pooled)))

    def grow(self, num_classes: int) -> None:
        if num_classes < self.num_classes:
            raise ValueError("a label classifier never shrinks")
        if num_classes == self.num_classes:
            return
        old = self.out
        self.out = nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            self.out.weight[: old.out_features] = old.weight
            self.out.bias[: old.out_features] = old.bias
