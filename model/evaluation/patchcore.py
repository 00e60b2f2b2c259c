"""Per-object PatchCore on RGB + depth: the one-model-per-object baseline IB-IUMAD is measured against.

Per modality, the frozen backbone's stride-8 and stride-16 maps are smoothed by a 3x3 average
(local neighbourhood context), the stride-16 map is upsampled to the stride-8 grid and both are
concatenated; RGB and depth features are concatenated per patch (RGB only for objects trained
without depth). A greedy k-center coreset (selection in a 128-d random projection) keeps about 10%
of the training patches as the object's memory bank. A test patch scores its distance to the
nearest bank patch; the patch map is upsampled to the network resolution, blurred (sigma 4 px at
224) and its maximum is the image score.

It needs the object name at prediction time: one bank per object is the point of this baseline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from model.data.depth import prepare_depth
from model.data.rgb import prepare_rgb
from model.data.samples import Sample, load_sample
from model.errors import InputError

logger = logging.getLogger(__name__)


def patch_features(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> (B, C8 + C16, S/8, S/8) locally averaged patch features."""
    maps = backbone(images)
    pooled = [F.avg_pool2d(m, kernel_size=3, stride=1, padding=1, count_include_pad=False) for m in maps]
    grid = pooled[0].shape[-2:]
    resized = [
        m if m.shape[-2:] == grid else F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
        for m in pooled
    ]
    return torch.cat(resized, dim=1)


def greedy_coreset(
    features: torch.Tensor, count: int, projection_dim: int = 128, seed: int = 0
) -> torch.Tensor:
    """Indices of `count` rows chosen by greedy k-center (each pick is the row farthest from all
    picks so far), measured in a random projection to `projection_dim` dims to keep it cheap."""
    total = features.shape[0]
    if count >= total:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(seed)
    points = features
    if features.shape[1] > projection_dim:
        projection = torch.randn(features.shape[1], projection_dim, generator=generator) / projection_dim**0.5
        points = features @ projection
    squared = (points * points).sum(dim=1)
    first = int(torch.randint(total, (1,), generator=generator))
    selected = torch.empty(count, dtype=torch.long)
    selected[0] = first
    nearest = (squared - 2.0 * (points @ points[first]) + squared[first]).clamp_min_(0.0)
    for index in range(1, count):
        pick = int(torch.argmax(nearest))
        selected[index] = pick
        distance = squared - 2.0 * (points @ points[pick]) + squared[pick]
        torch.minimum(nearest, distance, out=nearest)
    return selected


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distance of every query row to its nearest bank row (k = 1), chunked to bound memory."""
    return torch.cat(
        [
            torch.cdist(queries[start : start + chunk], bank).amin(dim=1)
            for start in range(0, queries.shape[0], chunk)
        ]
    )


class PatchCore:
    """One memory bank per object; `learn`/`predict` make it an `IncrementalMethod` for `iumad bench`."""

    name = "patchcore"

    def __init__(
        self,
        backbone: torch.nn.Module | None = None,
        image_size: int = 224,
        coreset_ratio: float = 0.1,
        max_coreset: int = 16384,
        projection_dim: int = 128,
        blur_sigma: float = 4.0,
        batch_size: int = 8,
        remove_plane: bool = False,
        seed: int = 0,
    ) -> None:
        if not 0.0 < coreset_ratio <= 1.0:
            raise InputError(f"coreset ratio must be in (0, 1], got {coreset_ratio}")
        if image_size % 16 or image_size < 32:
            raise InputError(f"image size must be a multiple of 16 and at least 32, got {image_size}")
        if backbone is None:
            from model.backbone import FrozenBackbone

            backbone = FrozenBackbone(strides=(8, 16))
        self.backbone = backbone.eval()
        self.image_size = image_size
        self.coreset_ratio = coreset_ratio
        self.max_coreset = max_coreset
        self.projection_dim = projection_dim
        self.blur_sigma = blur_sigma * image_size / 224.0
        self.batch_size = batch_size
        self.remove_plane = remove_plane
        self.seed = seed
        self.banks: dict[str, torch.Tensor] = {}
        self.uses_depth: dict[str, bool] = {}

    # ------------------------------------------------------------------------------------ features

    def _inputs(
        self, samples: Sequence[Sample], with_depth: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        rgb, depth = [], []
        for sample in samples:
            loaded = load_sample(sample, size=self.image_size)
            rgb.append(prepare_rgb(loaded.rgb, self.image_size))
            if with_depth:
                if loaded.depth is None:
                    raise InputError(
                        f"{sample.rgb_path}: no depth, but {sample.object!r} was trained with depth"
                    )
                depth.append(prepare_depth(loaded.depth, self.image_size, remove_plane=self.remove_plane))
        return torch.from_numpy(np.stack(rgb)), torch.from_numpy(np.stack(depth)) if with_depth else None

    @torch.inference_mode()
    def features(self, samples: Sequence[Sample], with_depth: bool) -> torch.Tensor:
        """(N, D, G, G) patch features of the samples (RGB then depth channels)."""
        batches = []
        for start in range(0, len(samples), self.batch_size):
            rgb, depth = self._inputs(samples[start : start + self.batch_size], with_depth)
            parts = [patch_features(self.backbone, rgb)]
            if depth is not None:
                parts.append(patch_features(self.backbone, depth))
            batches.append(torch.cat(parts, dim=1))
        return torch.cat(batches)

    # ------------------------------------------------------------------------------ fit / predict

    def fit(self, object_name: str, train_samples: Sequence[Sample]) -> None:
        """Build (or replace) the memory bank of one object from its normal training samples."""
        if not train_samples:
            raise InputError(f"no training samples for {object_name!r}")
        with_depth = all(sample.depth_path is not None for sample in train_samples)
        features = self.features(train_samples, with_depth)
        patches = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).contiguous()
        count = min(self.max_coreset, max(1, int(round(self.coreset_ratio * patches.shape[0]))))
        chosen = greedy_coreset(patches, count, self.projection_dim, self.seed)
        self.banks[object_name] = patches[chosen].contiguous()
        self.uses_depth[object_name] = with_depth
        logger.info(
            "patchcore %s: %d of %d patches kept (%s)",
            object_name,
            count,
            patches.shape[0],
            "rgb+depth" if with_depth else "rgb only",
        )

    @torch.inference_mode()
    def predict(self, object_name: str, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
        """-> (image scores (N,), anomaly maps (N, S, S) at network resolution S = image_size)."""
        if object_name not in self.banks:
            known = ", ".join(sorted(self.banks)) or "none"
            raise InputError(f"PatchCore has no memory bank for {object_name!r} (known: {known})")
        bank = self.banks[object_name]
        features = self.features(samples, self.uses_depth[object_name])
        count, dims, grid = features.shape[0], features.shape[1], features.shape[2]
        patches = features.permute(0, 2, 3, 1).reshape(-1, dims)
        patch_scores = nearest_distances(patches, bank).reshape(count, 1, grid, grid)
        maps = F.interpolate(
            patch_scores, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )[:, 0].numpy()
        maps = ndimage.gaussian_filter(maps, sigma=(0, self.blur_sigma, self.blur_sigma), truncate=4.0)
        maps = maps.astype(np.float32)
        return maps.reshape(count, -1).max(axis=1), maps

    # -------------------------------------------------------------------------- IncrementalMethod

    def learn(self, objects: list[str], train: dict[str, list[Sample]]) -> None:
        for name in objects:
            self.fit(name, train[name])

    def memory_bytes(self) -> int:
        """Size of all memory banks: grows with every object, unlike a unified model."""
        return sum(bank.numel() * bank.element_size() for bank in self.banks.values())
