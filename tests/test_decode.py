"""Decoding of every supported RGB and depth format, and the table of bad inputs."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from model.data.decode import (
    ENCODING_SLACK_BYTES,
    check_file_size,
    check_same_size,
    decode_depth,
    decode_rgb,
    read_depth,
    read_rgb,
    sniff_format,
)
from model.errors import InputError, PayloadTooLargeError, UnsupportedMediaError


def pil_bytes(array: np.ndarray, fmt: str, mode: str | None = None, **options) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    if array.ndim == 3 and array.shape[-1] == 3:
        options.setdefault("photometric", "rgb")  # how MVTec 3D-AD's xyz files are stored
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def raw_png(array: np.ndarray, colour_type: int, bit_depth: int) -> bytes:
    """A PNG written by hand: PIL cannot write 16-bit RGB."""
    height, width = array.shape[:2]
    sample = ">u2" if bit_depth == 16 else "u1"
    rows = b"".join(b"\x00" + array[row].astype(sample).tobytes() for row in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- RGB


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_rgb_formats_round_trip_exactly(rgb, fmt):
    decoded = decode_rgb(pil_bytes(rgb, fmt))
    assert decoded.dtype == np.uint8 and decoded.shape == (24, 32, 3)
    np.testing.assert_array_equal(decoded, rgb)


def test_jpeg_decodes_to_rgb(rgb):
    smooth = np.full((24, 32, 3), (200, 100, 50), dtype=np.uint8)
    decoded = decode_rgb(pil_bytes(smooth, "JPEG", quality=95))
    assert decoded.shape == (24, 32, 3)
    assert np.abs(decoded.astype(int) - smooth).max() <= 3


def test_grey_is_replicated_to_three_channels():
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    decoded = decode_rgb(pil_bytes(grey, "PNG"))
    assert decoded.shape == (12, 10, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[..., channel], grey)


def test_alpha_is_dropped(rgb):
    rgba = np.concatenate([rgb, np.full((24, 32, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(decode_rgb(pil_bytes(rgba, "PNG")), rgb)
    grey_alpha = np.stack([rgb[..., 0], rgb[..., 1]], axis=2)
    decoded = decode_rgb(pil_bytes(grey_alpha, "PNG", mode="LA"))
    np.testing.assert_array_equal(decoded[..., 2], rgb[..., 0])


def test_palette_is_expanded():
    image = Image.new("P", (8, 6))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    image.putpixel((3, 2), 1)
    image.putpixel((4, 2), 2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = decode_rgb(buffer.getvalue())
    assert tuple(decoded[2, 3]) == (255, 0, 0) and tuple(decoded[2, 4]) == (0, 255, 0)
    assert tuple(decoded[0, 0]) == (0, 0, 0)


def test_format_is_detected_from_bytes_not_name(rgb):
    assert sniff_format(pil_bytes(rgb, "PNG")) == "png"
    assert sniff_format(pil_bytes(rgb, "JPEG")) == "jpeg"
    assert sniff_format(pil_bytes(rgb, "BMP")) == "bmp"
    assert sniff_format(tiff_bytes(rgb)) == "tiff"
    assert sniff_format(npy_bytes(np.zeros(3))) == "npy"
    assert sniff_format(b"hello") is None


def _png_bytes_noisy() -> bytes:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return pil_bytes(noise, "PNG")


BAD_RGB = {
    "zero-byte file": (b"", InputError, "empty"),
    "truncated PNG": (_png_bytes_noisy()[:3000], InputError, "truncated"),
    "PNG header only": (_png_bytes_noisy()[:20], InputError, "part.png"),
    "16-bit RGB PNG": (raw_png(np.full((4, 5, 3), 40000), 2, 16), InputError, "16-bit"),
    "16-bit grey PNG": (raw_png(np.full((4, 5), 40000), 0, 16), InputError, "16-bit"),
    "16-bit RGB TIFF": (tiff_bytes(np.full((4, 5, 3), 40000, np.uint16)), InputError, "16-bit"),
    "float TIFF": (tiff_bytes(np.ones((4, 5), np.float32)), InputError, "8 bits"),
    "5-channel TIFF": (
        tiff_bytes(np.zeros((4, 5, 5), np.uint8), photometric="minisblack", planarconfig="contig"),
        InputError,
        "part.png",
    ),
    "unknown format": (b"GIF89a-not-supported", UnsupportedMediaError, "not a PNG"),
    "npy is not an image": (npy_bytes(np.zeros((4, 4, 3), np.uint8)), UnsupportedMediaError, "part.png"),
}


@pytest.mark.parametrize("case", list(BAD_RGB))
def test_bad_rgb_inputs_raise_input_error_naming_the_item(case):
    data, error_type, fragment = BAD_RGB[case]
    with pytest.raises(error_type) as caught:
        decode_rgb(data, name="part.png")
    assert "part.png" in str(caught.value)
    assert fragment in str(caught.value)


def test_rgb_pixel_limit_is_checked_before_decoding(rgb):
    with pytest.raises(InputError, match="more than the limit"):
        decode_rgb(pil_bytes(rgb, "PNG"), max_pixels=100)


def test_decompression_bomb_header_is_refused_without_decoding():
    bomb = raw_png(np.zeros((1, 1, 3)), 2, 8)
    bomb = bomb[:16] + struct.pack(">II", 60000, 60000) + bomb[24:]  # header claims 3.6 gigapixels
    with pytest.raises(InputError, match="too large|more than the limit|cannot read"):
        decode_rgb(bomb, name="bomb.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_every_truncation_raises_input_error_only(fmt):
    """No PIL/numpy exception may escape, wherever a file is cut."""
    data = pil_bytes(np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8), fmt)
    for length in range(0, len(data), max(1, len(data) // 40)):
        with contextlib.suppress(InputError):
            decode_rgb(data[:length], name="cut")


# -------------------------------------------------------------------------------------------- depth


def test_xyz_tiff_gives_z_with_missing_points_as_nan():
    xyz = np.random.default_rng(3).uniform(0.1, 0.6, (6, 7, 3)).astype(np.float32)
    xyz[1, 2] = 0.0
    xyz[4, 5] = 0.0
    z = decode_depth(tiff_bytes(xyz))
    assert z.dtype == np.float32 and z.shape == (6, 7)
    assert np.isnan(z[1, 2]) and np.isnan(z[4, 5])
    assert np.isfinite(z).sum() == 40
    np.testing.assert_array_equal(z[0], xyz[0, :, 2])


def test_xyz_point_with_zero_x_and_y_but_real_z_is_valid():
    xyz = np.zeros((3, 3, 3), np.float32)
    xyz[1, 1] = (0.0, 0.0, 0.4)  # on the optical axis
    z = decode_depth(tiff_bytes(xyz))
    assert z[1, 1] == np.float32(0.4) and np.isfinite(z).sum() == 1


def test_planar_xyz_tiff_is_read_like_contiguous():
    xyz = np.random.default_rng(4).uniform(0.1, 0.6, (5, 6, 3)).astype(np.float32)
    z = decode_depth(tiff_bytes(np.moveaxis(xyz, -1, 0), planarconfig="separate", photometric="rgb"))
    np.testing.assert_array_equal(z, xyz[..., 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_channel_float_tiff_marks_zero_negative_and_inf_invalid(dtype):
    z = np.full((4, 5), 0.5, dtype)
    z[0, 0], z[0, 1], z[0, 2], z[0, 3] = 0.0, -1.0, np.inf, np.nan
    decoded = decode_depth(tiff_bytes(z))
    assert decoded.dtype == np.float32
    assert np.isnan(decoded[0, :4]).all()
    assert np.isfinite(decoded).sum() == 16


def test_sixteen_bit_png_round_trips_exactly():
    values = np.array([[1, 2, 255, 256], [40000, 65535, 32768, 12345]], dtype=np.uint16)
    z = decode_depth(pil_bytes(values, "PNG"))
    assert z[1, 0] == 40000.0
    np.testing.assert_array_equal(z, values.astype(np.float32))


def test_sixteen_bit_png_zero_is_invalid():
    values = np.array([[0, 40000], [65535, 7]], dtype=np.uint16)
    z = decode_depth(raw_png(values, 0, 16))
    assert np.isnan(z[0, 0]) and z[0, 1] == 40000.0 and z[1, 0] == 65535.0


@pytest.mark.parametrize(
    "array",
    [
        np.full((4, 5), 0.3, np.float32),
        np.full((4, 5), 0.3, np.float64),
        np.full((4, 5), 300, np.uint16),
        np.full((4, 5), 300, np.int32),
        np.full((4, 5, 1), 0.3, np.float32),
    ],
)
def test_npy_depth_in_float_and_integer_dtypes(array):
    z = decode_depth(npy_bytes(array))
    assert z.dtype == np.float32 and z.shape == (4, 5)
    assert np.allclose(z, float(array.flat[0]))


def test_npy_xyz_cloud():
    xyz = np.random.default_rng(5).uniform(0.1, 0.6, (4, 5, 3))
    xyz[2, 2] = 0
    z = decode_depth(npy_bytes(xyz))
    assert np.isnan(z[2, 2]) and np.isfinite(z).sum() == 19
    assert np.allclose(z[0], xyz[0, :, 2])


def _object_npy() -> bytes:
    array = np.empty((2, 2), dtype=object)
    array[:] = 1.0
    return npy_bytes(array)


BAD_DEPTH = {
    "zero-byte file": (b"", InputError, "empty"),
    "npy object array": (_object_npy(), InputError, "object"),
    "all-NaN TIFF": (tiff_bytes(np.full((4, 4), np.nan, np.float32)), InputError, "no valid depth pixels"),
    "all-missing xyz": (tiff_bytes(np.zeros((4, 4, 3), np.float32)), InputError, "no valid depth pixels"),
    "all-zero 16-bit PNG": (raw_png(np.zeros((3, 3)), 0, 16), InputError, "no valid depth pixels"),
    "5-channel TIFF": (
        tiff_bytes(np.ones((4, 5, 5), np.float32), photometric="minisblack", planarconfig="contig"),
        InputError,
        "5 channels",
    ),
    "2-channel TIFF": (
        tiff_bytes(np.ones((4, 5, 2), np.float32), photometric="minisblack", planarconfig="contig"),
        InputError,
        "2 channels",
    ),
    "stack of TIFF pages": (tiff_bytes(np.ones((6, 4, 5), np.float32)), InputError, "depth.tiff"),
    "8-bit PNG": (pil_bytes(np.full((4, 4), 9, np.uint8), "PNG"), InputError, "too coarse"),
    "16-bit RGB PNG": (raw_png(np.full((4, 5, 3), 40000), 2, 16), InputError, "greyscale"),
    "8-bit TIFF": (tiff_bytes(np.full((4, 4), 9, np.uint8)), InputError, "uint8"),
    "JPEG": (pil_bytes(np.zeros((8, 8), np.uint8), "JPEG"), UnsupportedMediaError, "16-bit PNG"),
    "garbage": (b"\x00\x01\x02\x03", UnsupportedMediaError, "depth.tiff"),
    "npy with 4-D shape": (npy_bytes(np.ones((2, 3, 4, 5), np.float32)), InputError, "shape"),
    "npy 1-D": (npy_bytes(np.ones(10, np.float32)), InputError, "shape"),
    "npy bool": (npy_bytes(np.ones((3, 3), bool)), InputError, "dtype"),
    "npy integer xyz": (npy_bytes(np.ones((3, 3, 3), np.int32)), InputError, "float"),
    "truncated npy": (npy_bytes(np.ones((30, 30), np.float32))[:500], InputError, "depth.tiff"),
    "truncated TIFF": (tiff_bytes(np.ones((30, 30, 3), np.float32))[:3000], InputError, "depth.tiff"),
}


@pytest.mark.parametrize("case", list(BAD_DEPTH))
def test_bad_depth_inputs_raise_input_error_naming_the_item(case):
    data, error_type, fragment = BAD_DEPTH[case]
    with pytest.raises(error_type) as caught:
        decode_depth(data, name="depth.tiff")
    assert "depth.tiff" in str(caught.value)
    assert fragment in str(caught.value)


def test_depth_pixel_limit():
    with pytest.raises(InputError, match="more than the limit"):
        decode_depth(tiff_bytes(np.ones((20, 20), np.float32)), max_pixels=100)
    with pytest.raises(InputError, match="more than the limit"):
        decode_depth(npy_bytes(np.ones((20, 20), np.float32)), max_pixels=100)


@pytest.mark.parametrize("kind", ["tiff", "png", "npy"])
def test_every_depth_truncation_raises_input_error_only(kind):
    z = np.random.default_rng(6).uniform(0.2, 0.5, (12, 12, 3)).astype(np.float32)
    data = {
        "tiff": tiff_bytes(z),
        "png": pil_bytes((z[..., 2] * 1e5).astype(np.uint16), "PNG"),
        "npy": npy_bytes(z),
    }[kind]
    for length in range(0, len(data), max(1, len(data) // 40)):
        with contextlib.suppress(InputError):
            decode_depth(data[:length], name="cut")


# ------------------------------------------------------------------------------------ files on disk


def test_read_helpers_name_the_path(tmp_path, rgb):
    missing = tmp_path / "nope.png"
    with pytest.raises(InputError, match="nope.png"):
        read_rgb(missing)
    with pytest.raises(InputError, match="nope.png"):
        read_depth(missing)
    with pytest.raises(InputError, match="directory"):
        read_rgb(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    with pytest.raises(InputError, match="broken.png"):
        read_rgb(broken)
    good = tmp_path / "good.png"
    good.write_bytes(pil_bytes(rgb, "PNG"))
    np.testing.assert_array_equal(read_rgb(good), rgb)


def test_read_depth_with_eyecandies_range_maps_to_metres(tmp_path):
    values = np.array([[0, 65535], [32768, 40000]], dtype=np.uint16)
    path = tmp_path / "000_depth.png"
    path.write_bytes(pil_bytes(values, "PNG"))
    z = read_depth(path, depth_range=(0.5, 0.9))
    expected = values.astype(np.float32) / np.float32(65535) * np.float32(0.4) + np.float32(0.5)
    np.testing.assert_allclose(z, expected, rtol=0, atol=1e-7)
    assert z[0, 0] == pytest.approx(0.5) and z[0, 1] == pytest.approx(0.9)
    with pytest.raises(InputError, match="min < max"):
        read_depth(path, depth_range=(0.9, 0.5))
    tiff = tmp_path / "z.tiff"
    tiff.write_bytes(tiff_bytes(np.ones((2, 2), np.float32)))
    with pytest.raises(InputError, match="16-bit PNG"):
        read_depth(tiff, depth_range=(0.5, 0.9))


def test_check_same_size():
    check_same_size(np.zeros((4, 5, 3)), np.zeros((4, 5)), "pair")
    check_same_size(np.zeros((4, 5, 3)), None, "pair")
    with pytest.raises(InputError, match="pair.*5x4.*6x4"):
        check_same_size(np.zeros((4, 5, 3)), np.zeros((4, 6)), "pair")


def test_xyz_decoding_marks_exactly_the_points_the_point_cloud_rule_calls_missing():
    rng = np.random.default_rng(11)
    xyz = rng.uniform(-0.2, 0.8, (40, 50, 3)).astype(np.float32)
    xyz[rng.random((40, 50)) < 0.1] = 0.0  # MVTec 3D-AD's missing points
    for channel, value in ((0, np.nan), (1, np.inf), (2, -np.inf), (2, np.nan), (2, 0.0)):
        rows, columns = rng.integers(0, 40, 30), rng.integers(0, 50, 30)
        xyz[rows, columns, channel] = value
    # The rule: a point is missing when it is (0, 0, 0), has a non-finite coordinate, or z <= 0.
    missing = np.all(xyz == 0, axis=-1) | ~np.all(np.isfinite(xyz), axis=-1) | ~(xyz[..., 2] > 0)
    z = decode_depth(tiff_bytes(xyz))
    np.testing.assert_array_equal(np.isnan(z), missing)
    np.testing.assert_array_equal(z[~missing], xyz[..., 2][~missing])


def test_a_multi_page_tiff_is_refused_after_reading_two_page_headers(monkeypatch):
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for _ in range(500):
            writer.write(np.ones((4, 4), np.float32), contiguous=False)
    walked = []
    original = tifffile.TiffPages.__len__
    monkeypatch.setattr(tifffile.TiffPages, "__len__", lambda pages: walked.append(1) or original(pages))
    with pytest.raises(InputError, match="more than one page"):
        decode_depth(buffer.getvalue(), name="stack.tiff")
    assert not walked  # the page count of a 30,000-page file took minutes to find


# ----------------------------------------------------------------------------- decoded-size limits


def _npy_header_only(shape: tuple[int, ...], descr: str = "<f4", payload: bytes = b"\0" * 64) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload


@pytest.mark.parametrize(
    "shape,error,match",
    [
        ((4, 4, 10**9), PayloadTooLargeError, "decodes to 64000000000 bytes"),
        ((10**6, 10**6), InputError, "more than the limit"),
        ((2000, 2000, 3), InputError, "truncated .npy: its header declares 48000000 bytes"),
        ((4, 4, 4, 10**9), InputError, "shape"),
    ],
    ids=["huge third axis", "huge image", "declared more than it holds", "huge fourth axis"],
)
def test_a_huge_declared_npy_shape_is_refused_from_its_header(monkeypatch, shape, error, match):
    loads = []
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(1))
    with pytest.raises(error, match=match):
        decode_depth(_npy_header_only(shape), name="depth.npy")
    assert not loads  # refused before numpy allocated anything


def test_a_compressed_float64_xyz_tiff_at_the_pixel_limit_is_refused_before_decoding(monkeypatch):
    """A few kilobytes of compressed zeros at the pixel limit would decode to 24 bytes a pixel."""
    xyz = np.zeros((256, 256, 3), np.float64)
    data = tiff_bytes(xyz, compression="zlib")
    assert len(data) < 20_000
    decoded = []
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: decoded.append(1))
    with pytest.raises(
        PayloadTooLargeError, match="decodes to 1572864 bytes, more than the limit of 1000000"
    ):
        decode_depth(data, name="xyz.tiff", max_pixels=256 * 256, max_bytes=1_000_000)
    assert not decoded


def test_within_the_decoded_size_limit_float32_xyz_of_the_same_size_is_read():
    xyz = np.full((256, 256, 3), 0.5, np.float32)
    z = decode_depth(tiff_bytes(xyz, compression="zlib"), max_pixels=256 * 256, max_bytes=1_000_000)
    assert z.shape == (256, 256) and np.all(z == 0.5)


def test_a_file_larger_than_any_image_within_the_limits_is_refused_before_it_is_read(tmp_path):
    check_file_size(4 * 100 + ENCODING_SLACK_BYTES, "rgb", "part.png", max_pixels=100, max_depth_bytes=10)
    with pytest.raises(PayloadTooLargeError, match="more than any rgb image"):
        check_file_size(4 * 100 + ENCODING_SLACK_BYTES + 1, "rgb", "part.png", 100, 10)
    with pytest.raises(PayloadTooLargeError, match="more than any depth image"):
        check_file_size(10 + ENCODING_SLACK_BYTES + 1, "depth", "d.tiff", 100, 10)
    big = tmp_path / "big.tiff"
    big.write_bytes(b"II*\x00" + b"\0" * (ENCODING_SLACK_BYTES + 100))
    with pytest.raises(PayloadTooLargeError, match="big.tiff"):
        read_depth(big, max_bytes=50)
