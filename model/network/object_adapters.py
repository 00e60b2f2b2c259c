"""Object-conditioned parameters: one small residual adapter per enrolled object, chosen by its label.

The label guidance of the paper made to do work at inference: every object has its own bottleneck
adapter (parameter-free LayerNorm -> down to `rank` -> GELU -> up) after the input projection and
after each reconstruction layer of a branch, and a low-rank correction of the branch's input and
output projections (the shared output projection alone spans only the subspace of the feature
channels that the base objects needed); a sample is reconstructed through its object's adapters. The shared layers learn what all objects have in common; an incremental step freezes
them and trains only the new object's adapters, so a new object gets parameters it can fit freely
while every old object's path through the network stays bit-identical (no forgetting by design).

Each object's weights are its own `Parameter`s, so "train only the new ones" is plain
`requires_grad`, with no masks and no weight decay reaching old objects. The up projection starts
at zero: a new adapter is the identity until it has learned something.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Adapter(nn.Module):
    """One object's adapter at one place in a branch: in_dim -> rank -> out_dim, starting at zero."""

    def __init__(self, in_dim: int, out_dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(in_dim, rank)
        self.up = nn.Linear(rank, out_dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)


def per_sample_linear(
    tokens: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor, objects: torch.Tensor
) -> torch.Tensor:
    """tokens (B, L, in), weights (K, out, in), biases (K, out) -> (B, L, out) with each sample's own."""
    return torch.bmm(tokens, weights[objects].transpose(1, 2)) + biases[objects][:, None, :]


def _only_object(objects: torch.Tensor) -> int | None:
    """The one label every sample has, or None for a mixed batch (and always while exporting, so
    the exported graph serves any mix)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or objects.numel() == 0:
        return None
    first = objects[0]
    return int(first) if bool((objects == first).all()) else None


class ObjectAdapters(nn.Module):
    """Every object's adapter at one place in a branch; `forward` applies each sample's own.

    `residual=True`: grid + up(GELU(down(LN(grid)))) (d -> d, between layers). `residual=False`: the
    plain low-rank map up(down(x)) (in_dim -> out_dim), added by the caller to a shared projection.
    """

    def __init__(
        self, dim: int, rank: int, num_objects: int, out_dim: int | None = None, residual: bool = True
    ) -> None:
        super().__init__()
        if residual and out_dim not in (None, dim):
            raise ValueError("a residual adapter maps d to d")
        self.dim, self.out_dim, self.rank, self.residual = dim, out_dim or dim, rank, residual
        self.objects = nn.ModuleList(Adapter(dim, self.out_dim, rank) for _ in range(num_objects))

    @property
    def num_objects(self) -> int:
        return len(self.objects)

    def grow(self, num_objects: int) -> None:
        """Add adapters for new objects; the existing ones (and their indices) are kept as they are."""
        if num_objects < self.num_objects:
            raise ValueError("object adapters never shrink")
        reference = self.objects[0].down.weight if self.num_objects else None
        for _ in range(num_objects - self.num_objects):
            adapter = Adapter(self.dim, self.out_dim, self.rank)
            if reference is not None:
                adapter = adapter.to(reference.device, reference.dtype)
            self.objects.append(adapter)

    def forward(self, grid: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """grid (B, H, W, dim), objects (B,) label indices -> (B, H, W, dim or out_dim)."""
        batch, height, width, dim = grid.shape
        tokens = grid.reshape(batch, height * width, dim)
        if self.residual:
            tokens = F.layer_norm(tokens, (self.dim,))
        only = _only_object(objects)
        if only is None:
            change = self._per_sample(tokens, objects)
        else:
            change = self._one_object(tokens, self.objects[only])
        change = change.reshape(batch, height, width, self.out_dim)
        return grid + change if self.residual else change

    def _one_object(self, tokens: torch.Tensor, adapter: Adapter) -> torch.Tensor:
        """Every sample is the same object's (an incremental step's batches, one object's
        inspections): two plain linear layers instead of gathering one weight copy per sample."""
        hidden = adapter.down(tokens)
        return adapter.up(F.gelu(hidden) if self.residual else hidden)

    def _per_sample(self, tokens: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        hidden = per_sample_linear(
            tokens,
            torch.stack([a.down.weight for a in self.objects]),
            torch.stack([a.down.bias for a in self.objects]),
            objects,
        )
        if self.residual:
            hidden = F.gelu(hidden)
        return per_sample_linear(
            hidden,
            torch.stack([a.up.weight for a in self.objects]),
            torch.stack([a.up.bias for a in self.objects]),
            objects,
        )

    def parameters_of(self, first: int) -> list[nn.Parameter]:
        """The parameters of objects `first`, `first + 1`, ... (the ones an incremental step trains)."""
        return [p for adapter in self.objects[first:] for p in adapter.parameters()]
