"""Per-token reconstruction errors -> anomaly map at network resolution -> image score.

Each modality's error is normalised by that object's statistics on normal samples (so one modality
cannot drown the other), the present modalities are averaged, the map is upsampled and smoothed,
and the image score is the maximum of the average-pooled map (the UniAD/IUF convention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    positions = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (positions / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur of (B, H, W) maps with reflect padding."""
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel(sigma).to(maps)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


def combine_modalities(
    errors: torch.Tensor, weights: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """errors (B, 2, h, w), per-token modality weights (B, 2, h, w) in [0, 1], mean/std (B, 2) of
    the object -> (B, h, w): the weighted mean of the normalised errors (0 where no modality counts)."""
    normalised = (errors - mean[:, :, None, None]) / std[:, :, None, None]
    total = weights.sum(dim=1)
    return (normalised * weights).sum(dim=1) / total.clamp_min(1e-6) * (total > 0)


def anomaly_maps(
    errors: torch.Tensor,
    weights: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    image_size: int,
    smoothing_sigma: float = 4.0,
    score_pool: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> maps (B, S, S) at network resolution S = image_size, and image scores (B,)."""
    combined = combine_modalities(errors, weights, mean, std)
    maps = F.interpolate(
        combined.unsqueeze(1), size=(image_size, image_size), mode="bilinear", align_corners=False
    ).squeeze(1)
    maps = gaussian_blur(maps, smoothing_sigma * image_size / 224)
    return maps, image_scores(maps, score_pool)


def image_scores(maps: torch.Tensor, score_pool: int = 16) -> torch.Tensor:
    if score_pool > 1:
        maps = F.avg_pool2d(maps.unsqueeze(1), score_pool, stride=1).squeeze(1)
    return maps.flatten(1).amax(dim=1)


def resize_map(anomaly_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A network-resolution map (S, S) -> the input's resolution (H, W), for masks and returned maps."""
    return F.interpolate(anomaly_map[None, None], size=(height, width), mode="bilinear", align_corners=False)[
        0, 0
    ]
