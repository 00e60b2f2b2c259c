"""The label classifier on every reconstruction layer and on the fusion features: it keeps the
features of different objects apart while new objects are learned, and grows a logit per object."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
