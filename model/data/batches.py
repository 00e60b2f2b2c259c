"""Where a network's input tensors are made, for inspection and training alike: decoded images in,
a `PreparedBatch` at the network's size out (pure numpy and torch on the CPU; the gateway runs it in
its decode pool, training once per sample before its features are cached)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.data.decode import check_same_size
from model.data.depth import prepare_depth
from model.data.rgb import prepare_rgb
from model.errors import InputError
from model.network.anomaly_map import modality_weights
from model.network.config import ModelConfig


@dataclass
class InspectionInput:
    rgb: np.ndarray  # uint8 (H, W, 3)
    depth: np.ndarray | None = None  # float32 (H, W) z, NaN where invalid
    object: str | None = None


@dataclass
class PreparedBatch:
    rgb: torch.Tensor  # (B, 3, S, S) in [0, 1]
    depth: torch.Tensor  # (B, 3, S, S) in [0, 1]; zeros where missing
    has_rgb: torch.Tensor  # (B,) bool
    has_depth: torch.Tensor  # (B,) bool
    depth_valid: torch.Tensor  # (B, g, g) on the map's grid: each cell's share of measured depth pixels

    @classmethod
    def concat(cls, parts: Sequence[PreparedBatch]) -> PreparedBatch:
        return cls(
            *(
                torch.cat([getattr(p, name) for p in parts])
                for name in ("rgb", "depth", "has_rgb", "has_depth", "depth_valid")
            )
        )

    def modality_weights(self) -> torch.Tensor:
        """(B, 2, h, w): see `anomaly_map.modality_weights`."""
        return modality_weights(self.has_rgb, self.has_depth, self.depth_valid)


def depth_validity(depth: np.ndarray, grid: int) -> torch.Tensor:
    """Fraction of valid depth pixels per cell of the map's grid (area average of the mask)."""
    mask = torch.from_numpy(np.isfinite(depth).astype(np.float32))[None, None]
    return F.interpolate(mask, size=(grid, grid), mode="area")[0, 0]


def prepare_inputs(items: Sequence[InspectionInput], config: ModelConfig) -> PreparedBatch:
    """Decode-side work (pure numpy); runs in the gateway's thread pool, not the inference thread."""
    rgb, depth, has_depth, valid = [], [], [], []
    image_size, grid = config.image_size, config.map_grid_size
    for index, item in enumerate(items):
        if item.rgb.ndim != 3 or item.rgb.shape[2] != 3:
            raise InputError(f"item {index}: rgb must be (H, W, 3), got shape {item.rgb.shape}")
        check_same_size(item.rgb, item.depth, f"item {index}")
        rgb.append(torch.from_numpy(prepare_rgb(item.rgb, image_size)))
        if item.depth is None:
            depth.append(torch.zeros(3, image_size, image_size))
            has_depth.append(False)
            valid.append(torch.zeros(grid, grid))
        else:
            depth.append(torch.from_numpy(prepare_depth(item.depth, image_size)))
            has_depth.append(True)
            valid.append(depth_validity(item.depth, grid))
    return PreparedBatch(
        torch.stack(rgb),
        torch.stack(depth),
        torch.ones(len(items), dtype=torch.bool),
        torch.tensor(has_depth, dtype=torch.bool),
        torch.stack(valid),
    )
