"""The model configuration: every architectural choice and ablation switch, stored in each checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

FusionKind = Literal["cross_attention", "add", "concat"]
TOKEN_STRIDE = 16  # one token of the reconstruction network per 16 x 16 input pixels
MAP_STRIDES = (8, 16)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "tf_efficientnet_lite0"
    image_size: int = 224
    feature_strides: tuple[int, ...] = (4, 8, 16)  # aligned to the map's grid and concatenated
    # The anomaly map's grid: 16 = one error per token; 8 = each stride-16 token carries and
    # reconstructs its 2 x 2 stride-8 cells (space to depth), so the map is 4x finer while the
    # number of tokens, and with it the cost of every layer, stays that of the stride-16 grid.
    map_stride: int = 16
    # Local neighbourhood aggregation of every backbone stage before alignment (PatchCore's 3 x 3
    # average, stride 1): each cell then describes its surroundings, not only itself. 1 = none.
    feature_aggregation: int = 1
    hidden_size: int = 128  # the paper uses 256; 4x the training cost on a CPU (docs/MODEL.md)
    num_layers: int = 2  # per modality branch; the paper's base uses 4+4, too slow to train on a CPU
    num_heads: int = 4
    ffn_ratio: float = 2.0
    dropout: float = 0.0
    # Mamba decoder (ES2D selective scan) in every layer, with a label classifier on its output.
    use_mamba: bool = True
    state_size: int = 16
    expand: int = 2
    # Information-bottleneck fusion module.
    use_ibfm: bool = True
    fusion: FusionKind = "cross_attention"
    bottleneck_ratio: float = 0.5
    bottleneck_dropout: float = 0.1
    reconstruct_depth_in_fusion: bool = True  # the paper writes only F_org^RGB; depth-only defects need both
    # Object-conditioned adapters (model/network/object_adapters.py): rank of each object's adapter
    # after the input projection and every layer; 0 = none (one shared path for all objects).
    object_adapter_rank: int = 0
    # Anomaly synthesis in training (feature jitter, UniAD/IUF style).
    jitter_scale: float = 20.0
    jitter_probability: float = 1.0
    # Anomaly map.
    smoothing_sigma: float = 4.0  # pixels at 224; scaled with image_size
    score_pool: int = 16  # image score = max of the map after this average pooling (0 = plain max)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grid_size(self) -> int:
        """Tokens per side: the reconstruction network's grid (stride 16)."""
        return self.image_size // TOKEN_STRIDE

    @property
    def map_grid_size(self) -> int:
        """Cells per side of the error map (stride `map_stride`)."""
        return self.image_size // self.map_stride

    @property
    def cells_per_token(self) -> int:
        return (TOKEN_STRIDE // self.map_stride) ** 2

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["feature_strides"] = list(self.feature_strides)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        defaults = cls()
        values = {name: _checked(name, value, getattr(defaults, name)) for name, value in data.items()}
        if values.get("map_stride", TOKEN_STRIDE) not in MAP_STRIDES:
            raise ValueError(
                f"map_stride must be one of {', '.join(map(str, MAP_STRIDES))}, not {values['map_stride']}"
            )
        if values.get("feature_aggregation", 1) % 2 == 0:
            raise ValueError(
                f"feature_aggregation must be an odd kernel size, not {values['feature_aggregation']}"
            )
        if values.get("fusion", "cross_attention") not in ("cross_attention", "add", "concat"):
            raise ValueError(f"fusion must be cross_attention, add or concat, not {values['fusion']!r}")
        return cls(**values)


def _checked(name: str, value: Any, default: Any) -> Any:
    """`value` for field `name` as the type of its default (a JSON number may be an int for a float
    field, a list for a tuple); anything else is named in a ValueError, never built into a network."""

    def number(item: Any) -> bool:
        return isinstance(item, int | float) and not isinstance(item, bool)

    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = number(value) and isinstance(value, int) and value >= 0, "a non-negative integer"
    elif isinstance(default, float):
        ok, kind = number(value) and value >= 0, "a non-negative number"
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, list | tuple) and all(
            number(v) and isinstance(v, int) and v > 0 for v in value
        )
        kind, value = "a list of positive integers", tuple(value) if ok else value
    else:
        ok, kind = isinstance(value, type(default)), f"of type {type(default).__name__}"
    if not ok:
        raise ValueError(f"model config {name} must be {kind}, not {value!r}")
    return value
