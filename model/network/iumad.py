"""IB-IUMAD: the unified, incremental RGB+depth reconstruction network (MRN x 2 + IBFM + label heads).

It works on cached backbone tokens, not images: `model.inference` composes it with the frozen
backbone. A modality that is missing for a sample (an RGB-only object, an inspection without a depth
frame) is replaced by a learned "missing" token after its branch, and masked out of every loss and of
the anomaly map.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.network.config import TOKEN_STRIDE, ModelConfig
from model.network.feature_extractor import feature_jitter
from model.network.fusion import FusionOutput, InformationBottleneckFusion
from model.network.grid import cells_to_tokens, tokens_to_cells
from model.network.reconstruction import ReconstructionBranch

MODALITIES = ("rgb", "depth")


def _absent_everywhere(present: torch.Tensor) -> bool:
    """No sample of the batch has this modality (never while tracing: the exported graph is whole)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    return not bool(present.any())


@dataclass
class NetworkOutput:
    """One forward pass, per modality ("rgb", "depth"): what the losses and the error maps read."""

    original: dict[str, torch.Tensor]  # standardised backbone features per cell of the map (B, h, w, C)
    present: dict[str, torch.Tensor]  # 1 where the sample has the modality, (B, 1, 1, 1)
    branch_reconstruction: dict[str, torch.Tensor]  # each branch's own reconstruction of `original`, per cell
    layer_logits: dict[str, list[torch.Tensor]]  # label-classifier logits of every decoder layer
    reconstruction: dict[str, torch.Tensor]  # what the error maps compare: the fusion's where it has one
    fusion: FusionOutput | None = None  # None without IBFM


class IUMADNet(nn.Module):
    def __init__(self, config: ModelConfig, rgb_channels: int, depth_channels: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("a model needs at least one object")
        self.config = config
        dim = config.hidden_size
        # `*_channels` are the backbone's channels per cell of the map's grid; a token carries
        # `cells_per_token` cells (one at map stride 16, a 2 x 2 block at map stride 8).
        self.cell_factor = TOKEN_STRIDE // config.map_stride
        rgb_token, depth_token = (c * config.cells_per_token for c in (rgb_channels, depth_channels))
        self.branches = nn.ModuleDict(
            {
                "rgb": ReconstructionBranch(config, rgb_token, num_classes),
                "depth": ReconstructionBranch(config, depth_token, num_classes),
            }
        )
        # What the fusion module sees for a missing modality (only the fusion reads the hidden states).
        self.missing = (
            nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in MODALITIES})
            if config.use_ibfm
            else None
        )
        self.fusion = (
            InformationBottleneckFusion(config, rgb_token, depth_token, num_classes)
            if config.use_ibfm
            else None
        )
        # Feature standardisation, fixed at the base step so later steps keep the same feature space.
        for name, channels in (("rgb", rgb_channels), ("depth", depth_channels)):
            self.register_buffer(f"{name}_mean", torch.zeros(channels))
            self.register_buffer(f"{name}_std", torch.ones(channels))
        # Object prediction: one prototype per object (its mean pooled standardised backbone features,
        # RGB then depth) and its spread (mean squared distance of its own samples). The frozen backbone
        # and the fixed standardisation mean an old object's prototype never goes stale, so predicting
        # old objects cannot be forgotten, whereas a learned head trained in an incremental step sees
        # only the new objects' labels and learns to answer the newest object for everything.
        self.register_buffer("prototypes", torch.zeros(num_classes, rgb_channels + depth_channels))
        self.register_buffer("prototype_spread", torch.zeros(num_classes))

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    def grow(self, num_classes: int) -> None:
        """Add logits and prototype slots for new objects; old objects keep their label index."""
        if num_classes < self.num_classes:
            raise ValueError("a model never forgets objects by shrinking")
        for branch in self.branches.values():
            branch.grow(num_classes)
        if self.fusion is not None:
            self.fusion.grow(num_classes)
        extra = num_classes - self.num_classes
        self.prototypes = torch.cat(
            [self.prototypes, self.prototypes.new_zeros(extra, self.prototypes.shape[1])]
        )
        self.prototype_spread = torch.cat([self.prototype_spread, self.prototype_spread.new_zeros(extra)])

    def pooled(self, rgb: torch.Tensor, depth: torch.Tensor, has_depth: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) backbone features -> (B, C_rgb + C_depth) mean standardised tokens (depth 0 if absent)."""
        present = has_depth.to(depth.dtype).view(-1, 1)
        return torch.cat(
            [
                self.standardise("rgb", rgb).mean(dim=(1, 2)),
                self.standardise("depth", depth).mean(dim=(1, 2)) * present,
            ],
            dim=1,
        )

    def prototype_distances(self, pooled: torch.Tensor, has_depth: torch.Tensor) -> torch.Tensor:
        """(B, K) squared distances to every prototype over the modalities the sample has."""
        rgb_channels = self.rgb_mean.numel()
        difference = (pooled[:, None, :] - self.prototypes[None]).pow(2)
        rgb_part = difference[..., :rgb_channels].sum(-1)
        depth_part = difference[..., rgb_channels:].sum(-1)
        return rgb_part + depth_part * has_depth.to(pooled.dtype).view(-1, 1)

    def set_prototype(
        self, label: int, rgb: torch.Tensor, depth: torch.Tensor, has_depth: torch.Tensor
    ) -> None:
        """From one object's normal training features (N, C, h, w)."""
        with torch.no_grad():
            pooled = self.pooled(rgb, depth, has_depth)
            self.prototypes[label] = pooled.mean(dim=0)
            spread = self.prototype_distances(pooled, has_depth)[:, label].mean()
            self.prototype_spread[label] = spread.clamp_min(1e-6)

    def object_probabilities(
        self, rgb: torch.Tensor, depth: torch.Tensor, has_depth: torch.Tensor
    ) -> torch.Tensor:
        """(B, K): a softmax over `-d^2 / (2 spread)`, each object's distance in units of its own spread."""
        distances = self.prototype_distances(self.pooled(rgb, depth, has_depth), has_depth)
        return F.softmax(-0.5 * distances / self.prototype_spread.clamp_min(1e-6), dim=-1)

    def set_feature_statistics(self, rgb: torch.Tensor, depth: torch.Tensor | None) -> None:
        """Per-channel mean/std from (N, C, H, W) normal features of the base step (None: keep 0/1)."""
        for name, features in (("rgb", rgb), ("depth", depth)):
            if features is None or features.shape[0] == 0:
                continue
            flat = features.transpose(0, 1).reshape(features.shape[1], -1).float()
            getattr(self, f"{name}_mean").copy_(flat.mean(dim=1))
            getattr(self, f"{name}_std").copy_(flat.std(dim=1).clamp_min(1e-4))

    def standardise(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) backbone features -> (B, h, w, C) standardised cells (per channel)."""
        cells = features.permute(0, 2, 3, 1)
        return (cells - getattr(self, f"{modality}_mean")) / getattr(self, f"{modality}_std")

    def forward(
        self,
        rgb: torch.Tensor,
        depth: torch.Tensor,
        has_rgb: torch.Tensor,
        has_depth: torch.Tensor,
        jitter: bool = False,
        objects: torch.Tensor | None = None,
    ) -> NetworkOutput:
        """`objects` (B,) are the samples' label indices: which object adapters reconstruct them."""
        present = {
            "rgb": has_rgb.to(rgb.dtype).view(-1, 1, 1, 1),
            "depth": has_depth.to(depth.dtype).view(-1, 1, 1, 1),
        }
        original = {"rgb": self.standardise("rgb", rgb), "depth": self.standardise("depth", depth)}
        hidden, branch_reconstruction, layer_logits = {}, {}, {}
        for modality in MODALITIES:
            cells = original[modality]
            if jitter:
                cells = feature_jitter(cells, self.config.jitter_scale, self.config.jitter_probability)
            tokens = cells_to_tokens(cells * present[modality], self.cell_factor)
            if _absent_everywhere(present[modality]):  # e.g. a batch of RGB-only parts: skip the branch
                batch, height, width, _ = tokens.shape
                state = tokens.new_zeros(batch, height, width, self.config.hidden_size)
                reconstruction, logits = torch.zeros_like(cells), []
            else:
                state, reconstructed, logits = self.branches[modality](tokens, objects)
                reconstruction = tokens_to_cells(reconstructed, self.cell_factor)
            if self.missing is not None:
                mask = present[modality]
                hidden[modality] = state * mask + self.missing[modality] * (1 - mask)
            branch_reconstruction[modality] = reconstruction
            layer_logits[modality] = logits

        reconstruction = dict(branch_reconstruction)
        fused = self.fusion(hidden["rgb"], hidden["depth"]) if self.fusion is not None else None
        if fused is not None:
            fused = dataclasses.replace(
                fused,
                rgb=tokens_to_cells(fused.rgb, self.cell_factor),
                depth=None if fused.depth is None else tokens_to_cells(fused.depth, self.cell_factor),
            )
            reconstruction["rgb"] = fused.rgb
            if fused.depth is not None:
                reconstruction["depth"] = fused.depth
        return NetworkOutput(
            original=original,
            present=present,
            branch_reconstruction=branch_reconstruction,
            layer_logits=layer_logits,
            reconstruction=reconstruction,
            fusion=fused,
        )

    def for_inference(self) -> IUMADNet:
        """Eval mode with no parameter asking for a gradient: how every error map is computed
        (calibration, inspection, the forgetting guard), so that all of them take one path.

        Why it matters: PyTorch's matmul runs a Linear on a non-contiguous input as one folded
        matrix product or as a batched one depending on whether the weight requires grad, and the
        two sum in different orders; on some CPUs (no AVX, for one) the results then differ in the
        last bits. A network still marked trainable would calibrate an object slightly differently
        from the same weights loaded for serving (issue 26).
        """
        self.requires_grad_(False)
        return self.eval()

    @property
    def has_object_adapters(self) -> bool:
        return self.config.object_adapter_rank > 0

    def error_maps(
        self,
        rgb: torch.Tensor,
        depth: torch.Tensor,
        has_rgb: torch.Tensor,
        has_depth: torch.Tensor,
        objects: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: per-cell squared reconstruction error per modality (B, 2, h, w) on the map's
        grid, object probabilities (B, K).

        `objects` (B,) label indices say whose adapters reconstruct each sample; None, or -1 for a
        sample, takes the predicted object (the nearest prototype). A missing modality's error map is
        zero; the anomaly map masks it out.
        """
        probabilities = self.object_probabilities(rgb, depth, has_depth)
        predicted = probabilities.argmax(dim=-1)
        chosen = predicted if objects is None else torch.where(objects >= 0, objects, predicted)
        outputs = self.forward(rgb, depth, has_rgb, has_depth, jitter=False, objects=chosen)
        errors = []
        for modality in MODALITIES:
            difference = outputs.original[modality] - outputs.reconstruction[modality]
            error = difference.pow(2).mean(dim=-1) * outputs.present[modality][:, :, :, 0]
            errors.append(error)
        return torch.stack(errors, dim=1), probabilities
