"""PatchCore internals, the benchmark runner, and `iumad synth` + `iumad bench` end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from iumad.cli import main
from model.data.samples import Sample, pixel_truth
from model.errors import InputError
from model.evaluation import benchmark
from model.evaluation.benchmark import results_markdown, run_benchmark
from model.evaluation.patchcore import PatchCore, greedy_coreset, nearest_distances


class TinyBackbone(nn.Module):
    """Stand-in for FrozenBackbone: fixed random convolutions at strides 8 and 16."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stride8 = nn.Conv2d(3, 6, kernel_size=8, stride=8)
        self.stride16 = nn.Conv2d(6, 5, kernel_size=2, stride=2)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        low = self.stride8(images)
        return [low, self.stride16(low)]


# ----------------------------------------------------------------------------------- PatchCore parts


def test_greedy_coreset_picks_one_point_per_cluster():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat(
        [centre + 0.01 * torch.randn(20, 2, generator=torch.Generator().manual_seed(1)) for centre in centres]
    )
    chosen = greedy_coreset(points, 3, projection_dim=128)
    assert sorted((chosen // 20).tolist()) == [0, 1, 2]
    assert greedy_coreset(points, 100).tolist() == list(range(60))


def test_greedy_coreset_is_farthest_point_sampling():
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0], [4.0]])
    chosen = greedy_coreset(points, 3, seed=0).tolist()
    first = chosen[0]
    remaining = [i for i in range(5) if i != first]
    expected_second = max(remaining, key=lambda i: abs(points[i, 0] - points[first, 0]))
    assert chosen[1] == expected_second


def test_nearest_distances_match_brute_force():
    generator = torch.Generator().manual_seed(2)
    queries, bank = torch.randn(50, 7, generator=generator), torch.randn(30, 7, generator=generator)
    expected = torch.tensor([min(torch.dist(q, b).item() for b in bank) for q in queries])
    torch.testing.assert_close(nearest_distances(queries, bank, chunk=16), expected, rtol=1e-4, atol=1e-4)


def test_patchcore_fit_predict_with_a_tiny_backbone(synthetic_root):
    from model.data.datasets import list_samples

    model = PatchCore(TinyBackbone(), image_size=64, coreset_ratio=0.5)
    model.fit("disc", list_samples(synthetic_root, "disc", "train"))
    test = list_samples(synthetic_root, "disc", "test")
    scores, maps = model.predict("disc", test)
    assert scores.shape == (6,) and maps.shape == (6, 64, 64) and maps.dtype == np.float32
    np.testing.assert_allclose(scores, maps.reshape(6, -1).max(axis=1))
    # 6 images x 8x8 patches x (11 rgb + 11 depth) dims x 4 bytes, half of the patches kept
    assert model.memory_bytes() == 192 * 22 * 4
    with pytest.raises(InputError, match="no memory bank for 'ring'"):
        model.predict("ring", test)
    with pytest.raises(InputError, match="multiple of 16"):
        PatchCore(TinyBackbone(), image_size=50)


def test_patchcore_uses_rgb_only_without_depth(synthetic_root):
    from model.data.datasets import list_samples

    samples = [
        Sample(s.object, s.split, s.defect, s.rgb_path, None, s.gt_path)
        for s in list_samples(synthetic_root, "ring", "train")
    ]
    model = PatchCore(TinyBackbone(), image_size=64, coreset_ratio=1.0)
    model.fit("ring", samples)
    assert model.banks["ring"].shape == (6 * 64, 11)
    scores, maps = model.predict("ring", samples[:2])
    assert maps.shape == (2, 64, 64)
    model.fit("disc", list_samples(synthetic_root, "disc", "train"))
    with pytest.raises(InputError, match="no depth"):
        model.predict("disc", samples[:1])


# --------------------------------------------------------------------------------- benchmark runner


class OracleMethod:
    """Returns the ground truth as the map: every metric must come out at 100."""

    name = "oracle"

    def __init__(self, image_size: int = 224, worse_after: int | None = None) -> None:
        self.image_size = image_size
        self.learned: list[list[str]] = []
        self.worse_after = worse_after

    def learn(self, objects, train):
        assert all(train[name] for name in objects)
        self.learned.append(list(objects))

    def predict(self, object_name, samples):
        maps = pixel_truth(samples, self.image_size).astype(np.float32)
        if self.worse_after is not None and len(self.learned) > self.worse_after:
            maps = np.zeros_like(maps)  # forgets everything: every score ties
        return maps.reshape(len(samples), -1).max(axis=1), maps


@pytest.fixture
def oracle(monkeypatch):
    monkeypatch.setitem(benchmark.METHODS, "oracle", OracleMethod)


def test_run_benchmark_with_a_perfect_method(synthetic_root, oracle, tmp_path):
    results = run_benchmark(
        synthetic_root, "3-0", method="oracle", out_dir=tmp_path, image_size=64, progress=False
    )
    assert set(results) == {"method", "protocol", "steps", "fm"}
    assert results["fm"] is None and len(results["steps"]) == 1
    step = results["steps"][0]
    assert set(step) == {"trained", "eval"} and step["trained"] == ["disc", "ring", "tile"]
    assert all(m == {"i_auroc": 100.0, "p_auroc": 100.0, "aupro": 100.0} for m in step["eval"].values())
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert "| 0 | disc, ring, tile | 100.0 / 100.0 |" in (tmp_path / "results.md").read_text()


def test_run_benchmark_forgetting(synthetic_root, oracle):
    results = run_benchmark(
        synthetic_root,
        "1-1x2",
        objects=["tile", "disc", "ring"],
        method="oracle",
        image_size=64,
        progress=False,
        worse_after=2,
    )
    assert [step["trained"] for step in results["steps"]] == [["tile"], ["disc"], ["ring"]]
    assert list(results["steps"][1]["eval"]) == ["tile", "disc"]
    # after the last step every map is 0: I-AUROC 50, AUPRO 15 (ties make the PRO curve a diagonal)
    assert results["steps"][2]["eval"]["tile"]["i_auroc"] == 50.0
    assert results["fm"] == {"i_auroc": 50.0, "aupro": 85.0}
    assert "FM: I-AUROC 50.0, AUPRO 85.0." in results_markdown(results)


class LabelOracle:
    """Scores a part by its label and returns flat maps: what an object without masks can show."""

    name = "label-oracle"

    def __init__(self, image_size: int = 224) -> None:
        self.image_size = image_size

    def learn(self, objects, train):
        pass

    def predict(self, object_name, samples):
        scores = np.array([float(sample.is_anomalous) for sample in samples])
        return scores, np.zeros((len(samples), self.image_size, self.image_size), np.float32)


def test_an_object_without_masks_is_scored_at_image_level_only(synthetic_root, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    for folder in (root / "ring").glob("test/*/gt"):
        shutil.rmtree(folder)
    monkeypatch.setitem(benchmark.METHODS, "label-oracle", LabelOracle)
    results = run_benchmark(
        root, "2-0", objects=["disc", "ring"], method="label-oracle", image_size=64, progress=False,
        out_dir=tmp_path / "out",
    )  # fmt: skip
    evaluation = results["steps"][0]["eval"]
    assert evaluation["ring"] == {"i_auroc": 100.0, "p_auroc": None, "aupro": None}
    assert evaluation["disc"]["p_auroc"] is not None  # the object with masks keeps its pixel metrics
    assert "100.0 / n/a" in (tmp_path / "out" / "results.md").read_text()


def test_run_benchmark_bad_arguments(synthetic_root):
    with pytest.raises(InputError, match="unknown method 'magic'"):
        run_benchmark(synthetic_root, "3-0", method="magic", progress=False)
    with pytest.raises(InputError, match="uses 10 objects but 3"):
        run_benchmark(synthetic_root, "10-0", progress=False)
    with pytest.raises(InputError, match="does not take option"):
        run_benchmark(synthetic_root, "3-0", method="patchcore", progress=False, epochs=3)


# ---------------------------------------------------------------------------------------- CLI e2e


def test_synth_then_bench_patchcore_end_to_end(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    assert (
        main(
            [
                "synth",
                "--out",
                str(data),
                "--objects",
                "2",
                "--size",
                "64",
                "--train",
                "4",
                "--test",
                "4",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "bench",
                "--data",
                str(data),
                "--protocol",
                "1-1",
                "--method",
                "patchcore",
                "--out",
                str(out),
                "--image-size",
                "64",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "patchcore" and results["protocol"] == "1-1"
    assert [step["trained"] for step in results["steps"]] == [["disc"], ["ring"]]
    for step in results["steps"]:
        for metrics in step["eval"].values():
            assert set(metrics) == {"i_auroc", "p_auroc", "aupro"}
            assert all(0.0 <= value <= 100.0 for value in metrics.values())
    assert set(results["fm"]) == {"i_auroc", "aupro"}
    assert (out / "results.md").read_text().startswith("# patchcore on protocol 1-1")
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["memory_bytes"] > 0 and run_info["skipped"] == []
    assert "| Step | Trained | disc | ring | Mean |" in capsys.readouterr().out


# ------------------------------------------------------------------------ IB-IUMAD bench options


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"bogus": 1}', "unknown model config keys: bogus"),
        ('{"fusion": "multiply"}', "fusion must be"),
    ],
)
def test_bench_config_overrides_are_checked_before_any_work(synthetic_root, capsys, config, message):
    arguments = ["bench", "--data", str(synthetic_root), "--protocol", "3-0", "--config", config]
    assert main(arguments) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--max-minutes", "0", "--max-minutes must be positive"),
        ("--base-max-minutes", "-2", "--base-max-minutes must be positive"),
        ("--epochs", "0", "--epochs must be positive"),
        ("--anchor-weight", "-1", "--anchor-weight must not be negative"),
    ],
)
def test_bench_budget_options_are_checked_before_any_work(synthetic_root, capsys, option, value, message):
    arguments = ["bench", "--data", str(synthetic_root), "--protocol", "3-0", option, value]
    assert main(arguments) == 2
    assert message in capsys.readouterr().err


def test_bench_config_overrides_reach_the_network_and_budgets_the_steps():
    from iumad.commands.bench import parse_config_overrides
    from model.evaluation.iumad_method import IUMADMethod

    config = parse_config_overrides('{"use_mamba": false, "fusion": "add", "hidden_size": 32}')
    assert (config.use_mamba, config.fusion, config.hidden_size) == (False, "add", 32)
    assert config.state_size == 16  # everything not overridden keeps the default
    method = IUMADMethod(image_size=64, config=config, max_minutes=2, base_max_minutes=10)
    assert method.config.use_mamba is False and method.config.image_size == 64
    assert method.base_options.max_seconds == 600 and method.options.max_seconds == 120
