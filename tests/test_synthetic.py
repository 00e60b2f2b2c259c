"""The synthetic benchmark: determinism, layout, every defect kind, masks that match the defects."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from model.data.datasets import detect_layout, list_objects, list_samples
from model.data.samples import load_sample
from model.data.synthetic import (
    DEFECT_MODALITY,
    DEFECTS,
    defect_plan,
    object_names,
    render_image,
    render_sample_grid,
    write_synthetic_dataset,
)
from model.errors import InputError

SIZE = 64


def changed_rgb(a, b) -> np.ndarray:
    return np.abs(a.rgb.astype(int) - b.rgb.astype(int)).max(axis=-1) > 0


def changed_depth(a, b) -> np.ndarray:
    valid_a, valid_b = np.any(a.xyz != 0, axis=-1), np.any(b.xyz != 0, axis=-1)
    return (valid_a != valid_b) | (np.abs(a.xyz[..., 2] - b.xyz[..., 2]) > 1e-7)


def test_same_seed_same_images_and_generation_order_does_not_matter():
    first = [render_image("ring", SIZE, 7, "train", index) for index in (0, 1, 2)]
    backwards = [render_image("ring", SIZE, 7, "train", index) for index in (2, 1, 0)][::-1]
    for a, b in zip(first, backwards, strict=True):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.xyz, b.xyz)
    other_seed = render_image("ring", SIZE, 8, "train", 0)
    assert not np.array_equal(first[0].rgb, other_seed.rgb)
    assert not np.array_equal(first[0].rgb, first[1].rgb)  # images vary within a split


def test_written_dataset_is_deterministic(tmp_path):
    for name in ("a", "b"):
        write_synthetic_dataset(
            tmp_path / name, objects=1, size=32, n_train=2, n_validation=1, n_test=2, seed=3
        )
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 * 2 + 1 * 2 + 2 * 3
    for relative in files_a:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative


def test_layout_matches_mvtec3d(synthetic_root):
    assert detect_layout(synthetic_root) == "mvtec3d"
    assert list_objects(synthetic_root) == ["disc", "ring", "tile"]
    for name in ("disc", "ring", "tile"):
        for split, count in (("train", 6), ("validation", 2)):
            folder = synthetic_root / name / split / "good"
            assert sorted(p.name for p in (folder / "rgb").iterdir()) == [
                f"{i:03d}.png" for i in range(count)
            ]
            assert sorted(p.name for p in (folder / "xyz").iterdir()) == [
                f"{i:03d}.tiff" for i in range(count)
            ]
        test = list_samples(synthetic_root, name, "test")
        assert [s.defect for s in test] == ["good"] * 3 + ["bump", "contamination", "dent"]
        assert all(s.gt_path is not None and s.gt_path.parent.name == "gt" for s in test)
    sample = load_sample(list_samples(synthetic_root, "disc", "train")[0])
    assert sample.rgb.shape == (SIZE, SIZE, 3) and sample.depth.shape == (SIZE, SIZE)
    valid = np.isfinite(sample.depth)
    assert 0.6 < valid.mean() < 0.98  # some dropouts, like a structured-light sensor
    assert np.nanmin(sample.depth) > 0.3 and np.nanmax(sample.depth) < 0.6  # metres


def test_xyz_is_a_pinhole_point_cloud():
    image = render_image("dome", SIZE, 0, "train", 0)
    valid = np.any(image.xyz != 0, axis=-1)
    x, y, z = image.xyz[..., 0], image.xyz[..., 1], image.xyz[..., 2]
    columns = np.broadcast_to(np.arange(SIZE) - (SIZE - 1) / 2, (SIZE, SIZE))
    focal = columns[valid] * z[valid] / np.where(x[valid] == 0, np.nan, x[valid])
    assert np.nanstd(focal) / np.nanmean(focal) < 1e-4  # x = (u - cx) z / f with one f
    assert np.all(z[valid] > 0.3) and np.all(z[valid] < 0.6)
    assert np.all(image.xyz[~valid] == 0) and np.isfinite(y).all()


def test_test_plan_is_half_good_and_cycles_defects():
    plan = defect_plan(40)
    assert plan.count("good") == 20
    assert set(plan) == {"good", *DEFECTS}
    assert defect_plan(3) == ["good", "good", "contamination"]


@pytest.mark.parametrize("kind", DEFECTS)
def test_every_defect_changes_only_its_mask_and_its_modalities(kind):
    for name in ("disc", "gear", "plate"):
        clean = render_image(name, SIZE, 1, "test", 5)
        broken = render_image(name, SIZE, 1, "test", 5, kind)
        gt = broken.gt
        assert gt.any() and not clean.gt.any()
        # blur and shading reach a few pixels beyond a defect; a cut also moves the part's cast shadow
        near = ndimage.binary_dilation(gt, iterations=8 if kind == "cut" else 3)
        rgb_changed, depth_changed = changed_rgb(clean, broken), changed_depth(clean, broken)
        if DEFECT_MODALITY[kind] == "rgb":
            assert not depth_changed.any()
        if DEFECT_MODALITY[kind] in ("rgb", "both"):
            assert not (rgb_changed & ~near).any(), "RGB changed outside the mask"
            assert rgb_changed[gt].mean() > 0.9, "mask covers pixels the defect did not change"
        if DEFECT_MODALITY[kind] in ("depth", "both"):
            z_clean, z_broken = clean.xyz[..., 2], broken.xyz[..., 2]
            measured = gt & ((z_clean > 0) | (z_broken > 0))  # a dropout in both captures cannot change
            assert depth_changed[measured].mean() > 0.9
            both_valid = (z_clean > 0) & (z_broken > 0)
            far = both_valid & ~ndimage.binary_dilation(gt, iterations=4)
            assert np.abs(z_clean - z_broken)[far].max(initial=0.0) < 1e-5, "depth changed far from the mask"
        if DEFECT_MODALITY[kind] == "depth":  # the camera barely sees a smooth dent
            difference = np.abs(clean.rgb.astype(int) - broken.rgb.astype(int))
            assert difference.max() < 40


def test_every_defect_kind_is_written(tmp_path):
    write_synthetic_dataset(tmp_path, objects=1, size=48, n_train=1, n_validation=0, n_test=12, seed=0)
    kinds = sorted(p.name for p in (tmp_path / "disc" / "test").iterdir())
    assert kinds == sorted(["good", *DEFECTS])
    for sample in list_samples(tmp_path, "disc", "test"):
        loaded = load_sample(sample)
        assert loaded.gt.any() == sample.is_anomalous


def test_object_names_and_bad_arguments(tmp_path):
    assert len(set(object_names(10))) == 10
    assert object_names(12)[10:] == ["disc_v2", "ring_v2"]
    with pytest.raises(InputError):
        write_synthetic_dataset(tmp_path, objects=0, size=64)
    with pytest.raises(InputError):
        write_synthetic_dataset(tmp_path, objects=1, size=8)


def test_the_sample_grid_shows_each_object_and_defect_kind_with_its_outlined_truth(synthetic_root, tmp_path):
    tile = 32
    picture = np.asarray(
        Image.open(render_sample_grid(synthetic_root, tmp_path / "grid.png", tile=tile)).convert("RGB")
    )
    objects = sorted(p.name for p in synthetic_root.iterdir() if (p / "test").is_dir())
    label_height, label_width, gap = 18, 70, 6
    assert picture.shape[0] == label_height + len(objects) * (tile + gap)
    assert picture.shape[1] == label_width + (1 + len(DEFECTS)) * (3 * tile + gap)
    for row in range(len(objects)):
        top = label_height + row * (tile + gap)
        good = picture[top : top + tile, label_width + 2 * tile : label_width + 3 * tile]
        kinds = [k for k in DEFECTS if (synthetic_root / objects[row] / "test" / k / "rgb").is_dir()]
        panels = [label_width + (1 + DEFECTS.index(kind)) * (3 * tile + gap) + 2 * tile for kind in kinds]
        marked = np.concatenate([picture[top : top + tile, left : left + tile] for left in panels], axis=1)
        red = (marked[..., 0] > 200) & (marked[..., 1] < 60) & (marked[..., 2] < 60)
        assert red.any(), "each object's defects have their ground truth outlined in red"
        assert not ((good[..., 0] > 200) & (good[..., 1] < 60) & (good[..., 2] < 60)).any()
        assert picture[top : top + tile, label_width : label_width + tile].std() > 1  # a part, not blank
