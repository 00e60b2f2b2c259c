"""`L_all = l1 CE(Y_rgb) + l2 CE(Y_depth) + l3 L_Fusion + l4 L_IB` + per-branch reconstruction.

Every term is masked by which modalities a sample has, so RGB-only objects train the RGB path only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.network.iumad import MODALITIES, NetworkOutput


@dataclass(frozen=True)
class LossWeights:
    classify_rgb: float = 1.0
    classify_depth: float = 1.0
    fusion: float = 1.0
    information_bottleneck: float = 1.0
    reconstruction: float = 1.0


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """prediction/target (B, H, W, C), mask (B,) -> mean squared error over the masked samples."""
    per_sample = (prediction - target).pow(2).mean(dim=(1, 2, 3))
    return (per_sample * mask).sum() / mask.sum().clamp_min(1)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    return (per_sample * mask).sum() / mask.sum().clamp_min(1)


def information_bottleneck_loss(logits_fused: torch.Tensor, logits_bottleneck: torch.Tensor) -> torch.Tensor:
    """KL[P(Y|F_fu) || P(Y|F_g)], with P(Y|F_fu) as the (detached) target."""
    target = F.softmax(logits_fused.detach(), dim=-1)
    return F.kl_div(F.log_softmax(logits_bottleneck, dim=-1), target, reduction="batchmean")


def iumad_losses(
    outputs: NetworkOutput, labels: torch.Tensor, weights: LossWeights = LossWeights()
) -> dict[str, torch.Tensor]:
    present = {m: outputs.present[m].view(-1) for m in MODALITIES}
    original = outputs.original
    terms: dict[str, torch.Tensor] = {}
    terms["reconstruction"] = weights.reconstruction * sum(
        masked_mse(outputs.branch_reconstruction[m], original[m], present[m]) for m in MODALITIES
    )
    for modality, weight in (("rgb", weights.classify_rgb), ("depth", weights.classify_depth)):
        layer_logits = outputs.layer_logits[modality]
        if layer_logits:
            terms[f"classify_{modality}"] = (
                weight
                * sum(masked_cross_entropy(logits, labels, present[modality]) for logits in layer_logits)
                / len(layer_logits)
            )
    fused = outputs.fusion
    if fused is not None:
        fusion_terms = [
            masked_mse(reconstruction, original[m], present[m])
            for m, reconstruction in (("rgb", fused.rgb), ("depth", fused.depth))
            if reconstruction is not None
        ]
        terms["fusion"] = weights.fusion * sum(fusion_terms)
        terms["information_bottleneck"] = weights.information_bottleneck * (
            information_bottleneck_loss(fused.logits_fused, fused.logits_bottleneck)
            + F.cross_entropy(fused.logits_fused, labels)
        )
    terms["total"] = sum(terms.values())
    return terms
