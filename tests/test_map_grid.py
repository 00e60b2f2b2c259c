"""The stride-8 anomaly map: each stride-16 token carries its 2 x 2 stride-8 cells, so the map is
finer while the network's token count stays that of the stride-16 grid."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_model import TINY_CONFIG, assert_same_prediction, sample_source, train_tiny

from model.backbone import FrozenBackbone
from model.data.batches import InspectionInput, prepare_inputs
from model.export import export_onnx, onnx_model
from model.inference import InspectionModel
from model.network.config import ModelConfig
from model.network.feature_extractor import MultiScaleFeatures
from model.network.grid import cells_to_tokens, tokens_to_cells
from model.network.iumad import IUMADNet
from model.network.presets import preset_config

FINE = dataclasses.replace(TINY_CONFIG, map_stride=8, object_adapter_rank=4)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def test_a_token_carries_its_block_of_cells_and_gives_them_back():
    cells = torch.arange(2 * 4 * 6 * 3, dtype=torch.float32).reshape(2, 4, 6, 3)
    tokens = cells_to_tokens(cells, 2)
    assert tokens.shape == (2, 2, 3, 12)
    # token (1, 2) holds cells (2..3, 4..5), row by row, each cell's channels together
    expected = torch.cat([cells[0, 2, 4], cells[0, 2, 5], cells[0, 3, 4], cells[0, 3, 5]])
    assert torch.equal(tokens[0, 1, 2], expected)
    assert torch.equal(tokens_to_cells(tokens, 2), cells)
    assert cells_to_tokens(cells, 1) is cells


def test_features_on_the_stride_8_grid_repeat_the_coarser_stages_over_their_cells():
    backbone = FrozenBackbone(pretrained=False)
    coarse = MultiScaleFeatures(backbone, (4, 8, 16), grid_stride=16)
    fine = MultiScaleFeatures(backbone, (4, 8, 16), grid_stride=8)
    images = torch.rand(2, 3, 64, 64)
    at_16, at_8 = coarse(images), fine(images)
    assert at_16.shape == (2, 176, 4, 4) and at_8.shape == (2, 176, 8, 8)
    stride_16 = at_8[:, 64:]  # the stride-16 stage's 112 channels, repeated over each 2 x 2 block
    assert torch.equal(stride_16[:, :, ::2, ::2], stride_16[:, :, 1::2, 1::2])
    torch.testing.assert_close(stride_16[:, :, ::2, ::2], at_16[:, 64:])
    # the finer stages are averaged over the cell: the mean over a block is the stride-16 average
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(at_8[:, :64], 2), at_16[:, :64])


def test_an_error_lands_in_the_cell_whose_features_changed():
    config = ModelConfig(image_size=64, hidden_size=32, num_layers=1, num_heads=4, state_size=4, map_stride=8)
    net = IUMADNet(config, 20, 20, num_classes=1).for_inference()
    rgb, depth = torch.randn(1, 20, 8, 8), torch.randn(1, 20, 8, 8)
    present = torch.ones(1, dtype=torch.bool)
    before, _ = net.error_maps(rgb, depth, present, present)
    changed = rgb.clone()
    changed[0, :, 5, 2] += 25.0
    after, _ = net.error_maps(changed, depth, present, present)
    assert before.shape == (1, 2, 8, 8)
    increase = (after - before)[0, 0]
    assert divmod(int(increase.argmax()), 8) == (5, 2)


def test_prepared_inputs_measure_depth_per_cell_of_the_map():
    depth = np.full((64, 64), 0.5, np.float32)
    depth[:8, :8] = np.nan  # one stride-8 cell without any measurement
    batch = prepare_inputs([InspectionInput(np.zeros((64, 64, 3), np.uint8), depth)], FINE)
    assert batch.depth_valid.shape == (1, 8, 8)
    assert float(batch.depth_valid[0, 0, 0]) == 0.0 and float(batch.depth_valid[0, 0, 1]) == 1.0


def test_a_model_with_a_stride_8_map_trains_serves_and_exports():
    trained = train_tiny(("alpha", "beta"), config=FINE)
    model = InspectionModel(trained.net, trained.manifest)
    rgb, depth = sample_source(9)()
    parts = [InspectionInput(rgb, depth, "alpha"), InspectionInput(rgb, None, "beta")]
    predictions = model.predict(parts)
    assert all(p.anomaly_map.shape == (64, 64) and np.isfinite(p.raw_score) for p in predictions)
    assert trained.manifest.config.map_stride == 8


def test_the_onnx_graph_of_a_stride_8_map_matches_pytorch(tmp_path):
    trained = train_tiny(("alpha",), config=FINE)
    model = InspectionModel(trained.net, trained.manifest)
    onnx = onnx_model(model.net, model.manifest, export_onnx(model, tmp_path / "model.onnx"))
    rgb, depth = sample_source(4)()
    parts = [InspectionInput(rgb, depth, "alpha"), InspectionInput(rgb, depth, None)]
    for ours, theirs in zip(model.predict(parts), onnx.predict(parts), strict=True):
        assert_same_prediction(ours, theirs)


def test_a_map_stride_other_than_8_or_16_is_refused_naming_the_field():
    with pytest.raises(Exception, match="map_stride must be one of 8, 16, not 4"):
        preset_config("cpu", map_stride=4)


class _Stages(torch.nn.Module):
    """A stand-in backbone whose stage maps are given: stride 8 (2 channels) and 16 (1 channel)."""

    strides, channels = (8, 16), (2, 1)

    def __init__(self, maps: list[torch.Tensor]) -> None:
        super().__init__()
        self.maps = maps

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.maps


def test_neighbourhood_aggregation_averages_each_stage_over_its_3x3_surroundings():
    maps = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 2, 2)]
    maps[0][0, :, 1, 1] = 9.0  # one stride-8 cell lit
    features = MultiScaleFeatures(_Stages(maps), (8, 16), grid_stride=8, aggregation=3)(
        torch.zeros(1, 3, 32, 32)
    )
    assert features.shape == (1, 3, 4, 4)
    around = features[0, 0]
    assert float(around[0, 0]) == pytest.approx(9.0 / 4)  # a corner averages its 4 in-image cells
    assert float(around[1, 2]) == pytest.approx(1.0) and float(around[3, 3]) == 0.0
    plain = MultiScaleFeatures(_Stages(maps), (8, 16), grid_stride=8)(torch.zeros(1, 3, 32, 32))
    assert float(plain[0, 0, 1, 1]) == 9.0 and float(plain[0, 0, 0, 0]) == 0.0


def test_an_even_aggregation_kernel_is_refused_naming_the_field():
    with pytest.raises(Exception, match="feature_aggregation must be an odd kernel size, not 2"):
        preset_config("cpu", feature_aggregation=2)
