"""The IB-IUMAD network: shapes, gradients in both branches, ablation switches, missing modalities."""

import dataclasses

import pytest
import torch

from model.network.config import ModelConfig
from model.network.iumad import IUMADNet
from model.training.losses import iumad_losses

CHANNELS = 20


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same weights and inputs: a failure reproduces."""
    torch.manual_seed(0)


def _net(**overrides) -> IUMADNet:
    config = ModelConfig(image_size=64, hidden_size=32, num_layers=2, num_heads=4, state_size=4, **overrides)
    return IUMADNet(config, CHANNELS, CHANNELS + 4, num_classes=3)


def _batch(size=4, height=4, width=4):
    return (
        torch.randn(size, CHANNELS, height, width),
        torch.randn(size, CHANNELS + 4, height, width),
        torch.ones(size, dtype=torch.bool),
        torch.ones(size, dtype=torch.bool),
    )


@pytest.mark.parametrize("grid", [(4, 4), (5, 7), (14, 14)])
def test_error_maps_have_one_value_per_token_and_modality(grid):
    net = _net().eval()
    errors, probabilities = net.error_maps(*_batch(2, *grid))
    assert errors.shape == (2, 2, *grid)
    assert probabilities.shape == (2, 3)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(2))


@pytest.mark.parametrize(
    "overrides", [{}, {"use_mamba": False}, {"use_ibfm": False}, {"fusion": "add"}, {"fusion": "concat"}]
)
def test_every_trainable_parameter_gets_a_gradient_in_both_branches(overrides):
    net = _net(**overrides).train()
    outputs = net(*_batch(), jitter=True)
    iumad_losses(outputs, torch.tensor([0, 1, 2, 0]))["total"].backward()
    no_gradient = [
        name
        for name, p in net.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))
    ]
    # The learned "missing" tokens (read only by the fusion) train only on samples that lack a modality.
    expected = {"missing.rgb", "missing.depth"} if net.fusion is not None else set()
    assert set(no_gradient) == expected
    assert any(name.startswith("branches.depth.") for name, _ in net.named_parameters())


def test_missing_tokens_train_when_a_modality_is_missing():
    net = _net().train()
    rgb, depth, has_rgb, has_depth = _batch()
    has_depth[:2] = False
    iumad_losses(net(rgb, depth, has_rgb, has_depth, jitter=True), torch.tensor([0, 1, 2, 0]))[
        "total"
    ].backward()
    assert torch.any(net.missing["depth"].grad != 0)


def test_a_missing_modality_contributes_no_error_and_does_not_change_the_other():
    net = _net().eval()
    rgb, depth, has_rgb, has_depth = _batch(2)
    without_depth = torch.zeros(2, dtype=torch.bool)
    errors, _ = net.error_maps(rgb, depth, has_rgb, without_depth)
    assert torch.all(errors[:, 1] == 0)
    garbage, _ = net.error_maps(rgb, depth * 100, has_rgb, without_depth)
    torch.testing.assert_close(errors, garbage)


@pytest.mark.parametrize("overrides", [{}, {"use_mamba": False, "use_ibfm": False}])
def test_a_batch_without_depth_skips_the_depth_branch_and_scores_the_same(overrides, monkeypatch):
    net = _net(**overrides).eval()
    rgb, depth, has_rgb, has_depth = _batch(2)
    has_depth[1] = False
    mixed, _ = net.error_maps(rgb, depth, has_rgb, has_depth)

    def refuse(*args, **kwargs):
        raise AssertionError("the depth branch ran for a batch without depth")

    monkeypatch.setattr(net.branches["depth"], "forward", refuse)
    alone, _ = net.error_maps(rgb[1:], depth[1:], has_rgb[1:], has_depth[1:])
    torch.testing.assert_close(alone, mixed[1:], atol=1e-5, rtol=1e-4)


def _count(net):
    return sum(p.numel() for p in net.parameters())


def test_ablation_switches_change_the_network():
    full = _count(_net())
    assert _count(_net(use_mamba=False)) < full
    assert _count(_net(use_ibfm=False)) < full
    counts = {kind: _count(_net(fusion=kind)) for kind in ("cross_attention", "add", "concat")}
    assert len(set(counts.values())) == 3
    assert not any(name.startswith("fusion.") for name, _ in _net(use_ibfm=False).named_parameters())
    assert not any(".essm." in name for name, _ in _net(use_mamba=False).named_parameters())


def test_growing_keeps_old_logits_and_prototypes():
    net = _net().eval()
    batch = _batch(2)
    for label in range(3):
        net.set_prototype(label, *_batch(3)[:2], torch.ones(3, dtype=torch.bool))
    prototypes = net.prototypes.clone()
    before = net(*batch)
    net.grow(5)
    after = net(*batch)
    torch.testing.assert_close(net.prototypes[:3], prototypes)
    assert net.num_classes == 5 and torch.all(net.prototype_spread[3:] == 0)
    torch.testing.assert_close(after.layer_logits["depth"][0][:, :3], before.layer_logits["depth"][0])
    assert after.fusion is not None and after.fusion.logits_bottleneck.shape[-1] == 5
    with pytest.raises(ValueError):
        net.grow(4)


def test_config_round_trip_rejects_unknown_keys():
    config = ModelConfig(fusion="concat", use_mamba=False)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**config.to_dict(), "wings": 2})
    with pytest.raises(ValueError, match="fusion"):
        ModelConfig.from_dict({**config.to_dict(), "fusion": "multiply"})
    for key, value, kind in [
        ("hidden_size", "big", "a non-negative integer"),
        ("hidden_size", 1.5, "a non-negative integer"),
        ("use_mamba", 1, "true or false"),
        ("dropout", -0.1, "a non-negative number"),
        ("feature_strides", [4, "8"], "a list of positive integers"),
        ("backbone", 3, "of type str"),
    ]:
        with pytest.raises(ValueError, match=f"model config {key} must be {kind}"):
            ModelConfig.from_dict({**config.to_dict(), key: value})
    assert ModelConfig.from_dict({**config.to_dict(), "dropout": 0}).dropout == 0.0
    assert dataclasses.replace(config, hidden_size=8).hidden_size == 8


def test_depth_counts_only_where_the_sensor_measured_it():
    import numpy as np

    from model.data.batches import depth_validity
    from model.network.anomaly_map import combine_modalities

    errors = torch.tensor([[[[4.0, 4.0]], [[100.0, 100.0]]]])  # (1, 2, 1, 2): rgb, depth
    mean, std = torch.zeros(1, 2), torch.ones(1, 2)
    weights = torch.tensor([[[[1.0, 1.0]], [[1.0, 0.0]]]])  # the second token's depth is a hole
    combined = combine_modalities(errors, weights, mean, std)
    torch.testing.assert_close(combined, torch.tensor([[[52.0, 4.0]]]))
    no_modality = combine_modalities(errors, torch.zeros_like(weights), mean, std)
    assert torch.all(no_modality == 0)
    depth = np.full((32, 32), 0.5, np.float32)
    depth[:16, :16] = np.nan
    torch.testing.assert_close(depth_validity(depth, 2), torch.tensor([[0.0, 1.0], [1.0, 1.0]]))


def test_objects_are_predicted_by_the_nearest_prototype_in_units_of_its_spread():
    net = _net().eval()
    present = torch.ones(6, dtype=torch.bool)
    centres = [torch.full((1, CHANNELS, 4, 4), 3.0 * k) for k in range(3)]
    for label, centre in enumerate(centres):
        rgb = centre + 0.1 * torch.randn(6, CHANNELS, 4, 4)
        depth = 0.1 * torch.randn(6, CHANNELS + 4, 4, 4)
        net.set_prototype(label, rgb, depth, present)
    assert torch.all(net.prototype_spread > 0)
    queries = torch.cat(centres) + 0.1 * torch.randn(3, CHANNELS, 4, 4)
    probabilities = net.object_probabilities(queries, torch.zeros(3, CHANNELS + 4, 4, 4), torch.ones(3))
    assert probabilities.argmax(dim=1).tolist() == [0, 1, 2]
    assert torch.all(probabilities.max(dim=1).values > 0.99)
    # Without depth, only the RGB part of the distance counts: the same answer.
    without_depth = net.object_probabilities(queries, torch.zeros(3, CHANNELS + 4, 4, 4), torch.zeros(3))
    assert without_depth.argmax(dim=1).tolist() == [0, 1, 2]


def test_the_map_is_the_maximum_of_each_modalitys_map_standardised_by_its_normal_scores():
    from model.network.anomaly_map import anomaly_maps, modality_score_statistics

    generator = torch.Generator().manual_seed(0)
    size, grid = 64, 4
    ones = torch.ones(1, 2)
    # Normal parts: calm RGB errors, depth errors that run high and vary (a noisy sensor).
    normals = torch.rand(40, 2, grid, grid, generator=generator)
    normals[:, 1] *= 6.0
    weights = torch.ones(40, 2, grid, grid)
    score_mean, score_std = modality_score_statistics(normals, weights, [0.0, 0.0], [1.0, 1.0], size, 4.0, 4)
    assert score_mean[1] > score_mean[0] and score_std[1] > score_std[0]

    def score(errors: torch.Tensor, stats: bool = True) -> float:
        extra = (torch.tensor([score_mean]), torch.tensor([score_std])) if stats else (None, None)
        return float(
            anomaly_maps(errors[None], torch.ones(1, 2, grid, grid), 0 * ones, ones, size, 4.0, 4, *extra)[1]
        )

    calm = torch.full((2, grid, grid), 0.5)
    calm[1] = 3.0  # depth at its normal level
    rgb_defect, depth_defect = calm.clone(), calm.clone()
    rgb_defect[0, 1, 1] = 4.0
    depth_defect[1, 1, 1] = 3.0 + 8 * score_std[1] * 4  # as far above depth's normal spread
    assert score(rgb_defect) > score(calm) + 1 and score(depth_defect) > score(calm) + 1  # either modality
    # Averaged (the rule of versions without the statistics), the noisy depth hides the RGB defect.
    assert score(rgb_defect) - score(calm) > 3 * (score(rgb_defect, stats=False) - score(calm, stats=False))
    # Rows without statistics (NaN) are averaged, rows with them fused, in one batch.
    batch = torch.stack([rgb_defect, rgb_defect])
    stats_mean = torch.tensor([score_mean, [float("nan")] * 2])
    stats_std = torch.tensor([score_std, [float("nan")] * 2])
    _, scores = anomaly_maps(
        batch,
        torch.ones(2, 2, grid, grid),
        0 * ones.expand(2, 2),
        ones.expand(2, 2),
        size,
        4.0,
        4,
        stats_mean,
        stats_std,
    )
    assert float(scores[0]) == pytest.approx(score(rgb_defect)) and float(scores[1]) == pytest.approx(
        score(rgb_defect, stats=False)
    )


def test_a_modality_a_part_does_not_have_is_left_out_of_the_maximum():
    from model.network.anomaly_map import anomaly_maps

    errors = torch.zeros(1, 2, 2, 2)
    errors[0, 1] = 100.0  # depth errors of a part sent without depth
    weights = torch.zeros(1, 2, 2, 2)
    weights[0, 0] = 1.0
    mean, spread = torch.zeros(1, 2), torch.ones(1, 2)
    maps, scores = anomaly_maps(
        errors, weights, mean, spread, 32, 0.0, 1, torch.zeros(1, 2), torch.ones(1, 2)
    )
    assert float(scores[0]) == pytest.approx(0.0) and float(maps.abs().max()) == pytest.approx(0.0)
    maps, _ = anomaly_maps(
        errors, torch.zeros_like(weights), mean, spread, 32, 0.0, 1, torch.zeros(1, 2), torch.ones(1, 2)
    )
    assert torch.all(maps == 0)


def _upsample_then_blur(token_maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """The map's definition, step by step: bilinear upsampling, then a separable reflect-padded Gaussian."""
    import torch.nn.functional as F

    from model.network.anomaly_map import gaussian_kernel

    maps = F.interpolate(token_maps[:, None], size=(size, size), mode="bilinear", align_corners=False)
    if sigma > 0:
        kernel = gaussian_kernel(sigma)
        radius = kernel.numel() // 2
        maps = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        maps = F.conv2d(F.pad(maps, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return maps[:, 0]


@pytest.mark.parametrize(
    ("grid", "size", "sigma"), [(14, 224, 4.0), (16, 256, 4.0), (7, 112, 2.0), (5, 64, 0.0)]
)
def test_the_map_matrices_give_the_upsampled_and_blurred_map(grid, size, sigma):
    from model.network.anomaly_map import to_image_resolution

    token_maps = 5 * torch.rand(3, grid, grid, generator=torch.Generator().manual_seed(grid))
    expected = _upsample_then_blur(token_maps, size, sigma * size / 224)
    torch.testing.assert_close(to_image_resolution(token_maps, size, sigma), expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("pool", [1, 4, 16])
def test_the_image_score_is_the_largest_sliding_window_mean(pool):
    import torch.nn.functional as F

    from model.network.anomaly_map import image_scores

    maps = 10 * torch.rand(4, 224, 224, generator=torch.Generator().manual_seed(pool)) - 3
    expected = (
        F.avg_pool2d(maps[:, None], pool, stride=1).flatten(1).amax(dim=1)
        if pool > 1
        else maps.flatten(1).amax(1)
    )
    torch.testing.assert_close(image_scores(maps, pool), expected, rtol=0, atol=1e-5)
