"""Dataset readers (MVTec 3D-AD and Eyecandies layouts), their bad-input cases, and the CLI exit code."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iumad.cli import main
from model.data.datasets import detect_layout, list_objects, list_samples
from model.data.samples import load_sample, load_samples, pixel_truth
from model.data.synthetic import render_image, write_synthetic_dataset
from model.errors import InputError

# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def small_mvtec(tmp_path: Path) -> Path:
    """A writable MVTec-layout copy to break: 2 objects, 32 px."""
    root = tmp_path / "mvtec"
    write_synthetic_dataset(root, objects=2, size=32, n_train=3, n_validation=1, n_test=4, seed=1)
    return root


def write_eyecandies(root: Path, category: str = "CandyCane", counts=(3, 1, 4), size: int = 32) -> Path:
    """Eyecandies-style files from synthetic captures: 6 RGB images, 16-bit depth + yaml, test masks."""
    for split, count in zip(("train", "val", "test_public"), counts, strict=True):
        data = root / category / split / "data"
        data.mkdir(parents=True)
        for index in range(count):
            defect = "hole" if split == "test_public" and index % 2 else None
            image = render_image("disc", size, 0, split, index, defect)
            z = image.xyz[..., 2]
            z = np.where(z > 0, z, np.nanmax(np.where(z > 0, z, np.nan)))  # renders have no dropouts
            low, high = float(z.min()), float(z.max())
            for light in range(6):
                Image.fromarray(image.rgb // (1 + light % 2)).save(data / f"{index:03d}_image_{light}.png")
            png = np.round((z - low) / (high - low) * 65535).astype(np.uint16)
            Image.fromarray(png).save(data / f"{index:03d}_depth.png")
            (data / f"{index:03d}_info_depth.yaml").write_text(
                f"normalization:\n  min: {low}\n  max: {high}\n"
            )
            if split == "test_public":
                Image.fromarray(image.gt.astype(np.uint8) * 255).save(data / f"{index:03d}_mask.png")
    return root


@pytest.fixture
def eyecandies_root(tmp_path: Path) -> Path:
    root = write_eyecandies(tmp_path / "eyecandies")
    write_eyecandies(root, category="Lollipop", counts=(2, 1, 2))
    return root


# ------------------------------------------------------------------------------------- MVTec layout


def test_mvtec_layout_listing_and_loading(synthetic_root):
    assert detect_layout(synthetic_root) == "mvtec3d"
    assert list_objects(synthetic_root) == ["disc", "ring", "tile"]
    train = list_samples(synthetic_root, "ring", "train")
    assert len(train) == 6 and all(s.split == "train" and not s.is_anomalous for s in train)
    assert all(s.gt_path is None and s.depth_path.suffix == ".tiff" for s in train)
    assert len(list_samples(synthetic_root, "ring", "validation")) == 2
    test = list_samples(synthetic_root, "ring", "test")
    assert sum(s.is_anomalous for s in test) == 3
    loaded = load_sample(test[-1])
    assert loaded.rgb.dtype == np.uint8 and loaded.depth.dtype == np.float32 and loaded.gt.dtype == bool
    assert loaded.gt.any()
    assert load_sample(train[0]).gt is None
    good = load_sample(test[0])
    assert good.gt is not None and not good.gt.any()


def test_load_sample_resizes_every_array(synthetic_root):
    sample = list_samples(synthetic_root, "disc", "test")[-1]
    loaded = load_sample(sample, size=24)
    assert loaded.rgb.shape == (24, 24, 3) and loaded.depth.shape == (24, 24) and loaded.gt.shape == (24, 24)
    assert loaded.rgb.dtype == np.uint8 and loaded.gt.dtype == bool


def test_rgb_without_depth(small_mvtec):
    (small_mvtec / "disc" / "train" / "good" / "xyz" / "001.tiff").unlink()
    with pytest.raises(InputError, match=r"001\.png: no depth file"):
        list_samples(small_mvtec, "disc", "train")
    problems: list[str] = []
    samples = list_samples(small_mvtec, "disc", "train", skip_bad=True, problems=problems)
    assert [s.rgb_path.name for s in samples] == ["000.png", "002.png"]
    assert len(problems) == 1 and "001.png" in problems[0]


def remove_depth(object_dir: Path) -> None:
    """Make an object RGB-only, as a station without a depth camera records it."""
    for folder in object_dir.glob("*/*/xyz"):
        shutil.rmtree(folder)


def test_an_object_without_any_xyz_folder_is_rgb_only(small_mvtec):
    remove_depth(small_mvtec / "disc")
    for split in ("train", "validation", "test"):
        samples = list_samples(small_mvtec, "disc", split)
        assert samples and all(s.depth_path is None for s in samples)
    loaded = load_sample(list_samples(small_mvtec, "disc", "test")[-1])
    assert loaded.depth is None and loaded.gt is not None and loaded.gt.any()
    assert all(s.depth_path is not None for s in list_samples(small_mvtec, "ring", "train"))


def test_anomalous_test_image_without_mask_when_others_have_masks(small_mvtec):
    kind = next(p.name for p in (small_mvtec / "disc" / "test").iterdir() if p.name != "good")
    (small_mvtec / "disc" / "test" / kind / "gt" / "000.png").unlink()
    with pytest.raises(InputError, match="without a mask.*give every one a mask, or none of them"):
        list_samples(small_mvtec, "disc", "test")
    problems: list[str] = []
    kept = list_samples(small_mvtec, "disc", "test", skip_bad=True, problems=problems)
    assert len(problems) == 1 and all(sample.mask_known for sample in kept)


def remove_masks(object_dir: Path) -> None:
    for folder in object_dir.glob("test/*/gt"):
        shutil.rmtree(folder)


def test_an_object_without_any_mask_has_image_labels_only(small_mvtec):
    remove_masks(small_mvtec / "disc")
    samples = list_samples(small_mvtec, "disc", "test")
    defective = [s for s in samples if s.is_anomalous]
    assert defective and all(s.gt_path is None and not s.mask_known for s in defective)
    assert all(s.mask_known for s in samples if not s.is_anomalous)
    assert load_sample(defective[0]).gt is None  # unknown, not "all normal"
    assert load_sample(next(s for s in samples if not s.is_anomalous)).gt is not None
    assert pixel_truth(samples, 16) is None
    assert pixel_truth(list_samples(small_mvtec, "ring", "test"), 16).shape == (4, 16, 16)


def test_an_optional_split_may_be_empty(small_mvtec):
    shutil.rmtree(small_mvtec / "ring" / "validation")
    assert list_samples(small_mvtec, "ring", "validation", allow_empty=True) == []
    with pytest.raises(InputError, match="validation split has no usable samples"):
        list_samples(small_mvtec, "ring", "validation")


def test_unknown_object_lists_the_known_ones(small_mvtec):
    with pytest.raises(InputError, match="unknown object 'bagel'.*known objects: disc, ring"):
        list_samples(small_mvtec, "bagel", "train")


def test_empty_split_and_unknown_split(small_mvtec):
    shutil.rmtree(small_mvtec / "ring" / "validation")
    with pytest.raises(InputError, match="validation split has no usable samples"):
        list_samples(small_mvtec, "ring", "validation")
    with pytest.raises(InputError, match="unknown split"):
        list_samples(small_mvtec, "ring", "val")


def test_not_a_dataset(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        detect_layout(tmp_path / "missing")
    (tmp_path / "stuff").mkdir()
    with pytest.raises(InputError, match="neither an MVTec 3D-AD layout"):
        list_objects(tmp_path)


def test_unreadable_file_and_size_mismatch_surface_when_loading(small_mvtec):
    folder = small_mvtec / "disc" / "train" / "good"
    (folder / "rgb" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "rgb" / "001.png")
    samples = list_samples(small_mvtec, "disc", "train")  # listing does not decode
    with pytest.raises(InputError, match=r"000\.png"):
        load_sample(samples[0])
    with pytest.raises(InputError, match=r"001\.png.*30x20 but depth is 32x32"):
        load_sample(samples[1])
    problems: list[str] = []
    loaded = load_samples(samples, skip_bad=True, problems=problems)
    assert len(loaded) == 1 and len(problems) == 2


def test_mask_size_mismatch(small_mvtec):
    sample = list_samples(small_mvtec, "disc", "test")[-1]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(sample.gt_path)
    with pytest.raises(InputError, match="mask is 8x8"):
        load_sample(sample)


# -------------------------------------------------------------------------------- Eyecandies layout


def test_eyecandies_layout_listing_and_loading(eyecandies_root):
    assert detect_layout(eyecandies_root) == "eyecandies"
    assert list_objects(eyecandies_root) == ["CandyCane", "Lollipop"]
    train = list_samples(eyecandies_root, "CandyCane", "train")
    assert [s.rgb_path.name for s in train] == ["000_image_0.png", "001_image_0.png", "002_image_0.png"]
    assert len(list_samples(eyecandies_root, "CandyCane", "validation")) == 1
    test = list_samples(eyecandies_root, "CandyCane", "test")
    assert [s.defect for s in test] == ["good", "bad", "good", "bad"]
    loaded = load_sample(test[1])
    assert loaded.gt.any() and loaded.depth.shape == (32, 32)
    other_light = list_samples(eyecandies_root, "CandyCane", "train", eyecandies_image=3)
    assert other_light[0].rgb_path.name == "000_image_3.png"


def test_eyecandies_depth_is_converted_to_metres(eyecandies_root):
    sample = list_samples(eyecandies_root, "CandyCane", "train")[0]
    z = render_image("disc", 32, 0, "train", 0).xyz[..., 2]
    depth = load_sample(sample).depth
    valid = z > 0
    assert np.isfinite(depth).all()  # Eyecandies renders have no invalid pixels
    np.testing.assert_allclose(depth[valid], z[valid], atol=(z.max() - z.min()) / 65535 + 1e-6)
    assert sample.depth_range is not None and 0.3 < sample.depth_range[0] < sample.depth_range[1] < 0.6


def test_eyecandies_yaml_variants_and_errors(eyecandies_root):
    data = eyecandies_root / "CandyCane" / "train" / "data"
    (data / "000_info_depth.yaml").write_text("min_depth: 0.4\nmax_depth: 0.5\n")
    assert list_samples(eyecandies_root, "CandyCane", "train")[0].depth_range == (0.4, 0.5)
    (data / "001_info_depth.yaml").write_text("normalization: {min: 0.5, max: 0.4}\n")
    (data / "002_depth.png").unlink()
    with pytest.raises(InputError, match="not below max"):
        list_samples(eyecandies_root, "CandyCane", "train")
    problems: list[str] = []
    samples = list_samples(eyecandies_root, "CandyCane", "train", skip_bad=True, problems=problems)
    assert len(samples) == 1 and len(problems) == 2
    (data / "000_info_depth.yaml").write_text("normalization: [oops")
    with pytest.raises(InputError, match="000_info_depth.yaml"):
        list_samples(eyecandies_root, "CandyCane", "train")


def test_eyecandies_test_item_without_mask(eyecandies_root):
    (eyecandies_root / "Lollipop" / "test_public" / "data" / "001_mask.png").unlink()
    with pytest.raises(InputError, match="without a mask"):
        list_samples(eyecandies_root, "Lollipop", "test")


# --------------------------------------------------------------------------------------------- CLI


def test_cli_exits_2_on_bad_dataset(tmp_path, capsys):
    assert (
        main(["bench", "--data", str(tmp_path / "missing"), "--protocol", "10-0", "--method", "patchcore"])
        == 2
    )
    assert "not a directory" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path / "s"), "--size", "8"]) == 2
    assert "at least 32 px" in capsys.readouterr().err


def test_cli_exits_2_on_unknown_object(small_mvtec, capsys):
    code = main(
        [
            "bench",
            "--data",
            str(small_mvtec),
            "--protocol",
            "1-1",
            "--objects",
            "disc,bagel",
            "--method",
            "patchcore",
        ]
    )
    assert code == 2
    assert "bagel" in capsys.readouterr().err
