"""Named model presets: which network a deployment, a benchmark or a test builds, by one name.

`ModelConfig`'s own defaults are the paper's full network; a preset is a measured choice on top of
it. The service enrols with `SHIPPED_PRESET` unless `IUMAD_NETWORK_PRESET` names another, and
`iumad bench` uses the same one by default, so the numbers in docs/BENCHMARKS.md are the product's.
"""

from __future__ import annotations

from typing import Any

from model.errors import InputError
from model.network.config import ModelConfig

ADAPTER_RANK = 32  # per object: about 0.35 MB at hidden size 128 (docs/MODEL.md, object adapters)

PRESETS: dict[str, ModelConfig] = {
    # The enrolment default on a CPU line PC: no Mamba decoders and no IBFM (a training step costs
    # 0.4x the full network's, which decides quality within a 5-minute enrolment), one adapter set
    # per object (an incremental step trains only the new object's: no forgetting, full plasticity).
    "cpu": ModelConfig(use_mamba=False, use_ibfm=False, object_adapter_rank=ADAPTER_RANK),
    # The paper's modules (label-guided Mamba decoder in every layer + IBFM) with the object adapters.
    "full": ModelConfig(object_adapter_rank=ADAPTER_RANK),
    # The paper's network as published: one shared path for every object, anchored incremental steps.
    "paper": ModelConfig(),
}
SHIPPED_PRESET = "cpu"

# The pull of an incremental step towards its parent's weights (networks without object adapters).
# 1.0, not 0.01: on 6-1x4 it took the I-AUROC forgetting from 19.4 to 1.2 points and the final mean
# from 71.3 to 81.0 (new objects learn less: docs/BENCHMARKS.md, "6-1x4 ... larger test set").
ANCHOR_WEIGHT = 1.0


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The named preset with `overrides` (config field values) on top; bad names and values are
    user errors that name what is wrong."""
    if name not in PRESETS:
        raise InputError(f"unknown network preset {name!r}; known presets: {', '.join(PRESETS)}")
    try:
        return ModelConfig.from_dict({**PRESETS[name].to_dict(), **overrides})
    except (TypeError, ValueError) as error:
        raise InputError(f"network config: {error}") from None
