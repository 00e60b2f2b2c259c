"""Depth and RGB preprocessing: validity-aware resize, hole filling, plane removal, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from model.data.depth import fill_nearest, fit_border_plane, prepare_depth, resize_valid
from model.data.rgb import prepare_rgb
from model.errors import InputError


def test_output_shape_range_and_identical_channels():
    z = np.random.default_rng(0).uniform(0.3, 0.6, (50, 70)).astype(np.float32)
    out = prepare_depth(z, 32)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_nearer_is_brighter():
    z = np.full((64, 64), 0.5, np.float32)
    z[20:44, 20:44] = 0.45  # a block 5 cm closer to the camera
    out = prepare_depth(z, 32)[0]
    assert out[16, 16] == pytest.approx(1.0)
    assert out[2, 2] == pytest.approx(0.0)


def test_invalid_pixels_never_blend_into_valid_ones():
    z = np.full((96, 96), 0.5, np.float32)
    z[::2, 1::2] = np.nan  # half the pixels missing in a checkerboard-like pattern
    z[1::2, ::2] = np.nan
    resized, valid = resize_valid(z, 40)
    assert valid.all()
    np.testing.assert_allclose(resized, 0.5, rtol=1e-6)


def test_holes_take_the_nearest_valid_value():
    z = np.full((64, 64), 0.5, np.float32)
    z[:, 32:] = 0.6
    z[20:40, 44:60] = np.nan  # a dropout inside the far (0.6) half
    resized, valid = resize_valid(z, 32)
    assert not valid.all()
    filled = fill_nearest(resized, valid)
    np.testing.assert_allclose(filled[~valid], 0.6, rtol=1e-6)
    out = prepare_depth(z, 32)[0]
    assert np.all(out[12:18, 24:28] == 0.0)  # the filled far region is as dark as its surroundings


def test_no_valid_pixel_is_an_input_error():
    with pytest.raises(InputError, match="no valid depth pixels"):
        prepare_depth(np.full((8, 8), np.nan, np.float32), 16)
    with pytest.raises(InputError, match="no valid depth pixels"):
        prepare_depth(np.full((8, 8), np.inf, np.float32), 16)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((0, 4), np.float32)])
def test_bad_shapes_are_input_errors(bad):
    with pytest.raises(InputError, match="shape"):
        prepare_depth(bad, 16)


def test_plane_removal_flattens_a_tilted_table():
    height, width = 64, 64
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    table = 0.5 + 0.002 * u + 0.001 * v  # a table tilted by a few centimetres over the image
    z = table.copy()
    z[24:40, 24:40] -= 0.02  # a 2 cm high part in the middle
    z[0:3, 0:30] = np.nan
    with_plane = prepare_depth(z, 32, remove_plane=False)[0]
    without_plane = prepare_depth(z, 32, remove_plane=True)[0]
    background = np.ones((32, 32), bool)
    background[10:22, 10:22] = False
    assert without_plane[background].std() < 0.02  # the table became one flat grey
    assert with_plane[background].std() > 0.1  # without removal the tilt dominates the contrast
    assert without_plane[14:18, 14:18].min() > 0.9  # and the part stands out


def test_plane_fit_ignores_an_object_touching_the_border():
    v, u = np.mgrid[0:40, 0:40].astype(np.float32)
    z = 0.4 + 0.001 * u
    z[0:8, 10:20] -= 0.05  # part of the object lies on the border band
    valid = np.ones_like(z, bool)
    a, b, c = fit_border_plane(z, valid)
    # u in [-1, 1] spans 39 pixels: slope per pixel 0.001 -> a = 0.0195
    assert a == pytest.approx(0.0195, abs=1e-6)
    assert b == pytest.approx(0.0, abs=1e-6)
    assert c == pytest.approx(0.4195, abs=1e-6)


def test_flying_pixels_do_not_squash_the_contrast():
    z = np.full((100, 100), 0.5, np.float32)
    z[30:70, 30:70] = 0.48
    z[0, :5] = 0.01  # five outliers (0.05%) far too close
    out = prepare_depth(z, 50)[0]
    assert out[25, 25] == pytest.approx(1.0)
    assert out[45, 45] == pytest.approx(0.0)


def test_flat_map_gives_a_constant_without_dividing_by_zero():
    out = prepare_depth(np.full((10, 10), 0.5, np.float32), 8)
    assert np.isfinite(out).all() and np.ptp(out) == 0.0


def test_upsizing_small_maps_fills_holes_too():
    z = np.full((8, 8), 0.5, np.float32)
    z[2:4, 2:4] = np.nan
    out = prepare_depth(z, 32)
    assert np.isfinite(out).all() and out.shape == (3, 32, 32)


def test_prepare_rgb_shape_range_and_identity():
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    same = prepare_rgb(rgb, 32)
    assert same.shape == (3, 32, 32) and same.dtype == np.float32
    np.testing.assert_allclose(same, rgb.transpose(2, 0, 1) / 255.0, rtol=0, atol=1e-7)
    small = prepare_rgb(rgb, 16)
    assert small.shape == (3, 16, 16) and small.min() >= 0.0 and small.max() <= 1.0


def test_prepare_rgb_antialiases():
    checker = np.zeros((64, 64, 3), np.uint8)
    checker[::2, ::2] = 255
    checker[1::2, 1::2] = 255
    out = prepare_rgb(checker, 16)
    np.testing.assert_allclose(out, 0.5, atol=0.01)  # no aliasing into black/white
    out_float = prepare_rgb(checker.astype(np.float32) / 255.0, 16)
    np.testing.assert_allclose(out_float, 0.5, atol=0.01)


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.int64)]
)
def test_prepare_rgb_rejects_bad_arrays(bad):
    with pytest.raises(InputError):
        prepare_rgb(bad, 16)
