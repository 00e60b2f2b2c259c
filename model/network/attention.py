"""Multi-head attention on `scaled_dot_product_attention`.

Not `nn.MultiheadAttention`: its inference fast path is an op the ONNX exporter does not know, and
one fused projection for self-attention is all we need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over `query` (B, L, d), or cross-attention from `query` to `context`."""
        if context is None:
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:
            weight_q, weight_kv = self.in_proj.weight.split([query.shape[-1], 2 * query.shape[-1]])
            bias_q, bias_kv = self.in_proj.bias.split([query.shape[-1], 2 * query.shape[-1]])
            q = F.linear(query, weight_q, bias_q)
            k, v = F.linear(context, weight_kv, bias_kv).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), dropout_p=self.dropout if self.training else 0.0
        )
        batch, _, length, _ = attended.shape
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, -1))
