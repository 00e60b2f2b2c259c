"""Decode uploaded or stored RGB and depth files into arrays, for dataset readers and the HTTP service.

Every bad input becomes an `InputError` (or `UnsupportedMediaError` for a format we do not read) whose
message names the item, so a user sees "depth 'part.tiff' has 5 channels" instead of a PIL traceback.
Formats are recognised by their magic bytes, never by the file name.

EXIF orientation is deliberately ignored: RGB and depth are aligned pixel by pixel, and rotating one
of them would break that.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from model.errors import InputError, PayloadTooLargeError, UnsupportedMediaError

DEFAULT_MAX_PIXELS = 4096 * 4096
# What one depth file may decode to. Pixels alone do not bound it: a float64 xyz cloud is 24 bytes
# a pixel, and a few hundred kilobytes of compressed zeros decode to gigabytes. 64 MiB holds a
# 4096 x 4096 float32 z map or a 2364 x 2364 float32 xyz cloud (MVTec 3D-AD's are 800 x 800).
DEFAULT_MAX_DEPTH_BYTES = 64 * 1024 * 1024
# Headers, metadata and the little that compression can add on top of the decoded size.
ENCODING_SLACK_BYTES = 1024 * 1024
RGB_BYTES_PER_PIXEL = 4  # 8-bit RGBA, the widest RGB image we read

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
JPEG_MAGIC = b"\xff\xd8\xff"
BMP_MAGIC = b"BM"

# PNG colour types from the IHDR chunk.
PNG_GREY, PNG_RGB, PNG_PALETTE, PNG_GREY_ALPHA, PNG_RGBA = 0, 2, 3, 4, 6


def sniff_format(data: bytes) -> str | None:
    """'png', 'jpeg', 'bmp', 'tiff', 'npy' from the first bytes, or None when unknown."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(TIFF_MAGICS):
        return "tiff"
    if data.startswith(NPY_MAGIC):
        return "npy"
    if data.startswith(BMP_MAGIC):
        return "bmp"
    return None


def _png_header(data: bytes, name: str) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from IHDR; PIL hides 16-bit RGB behind an 8-bit mode."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise InputError(f"{name}: truncated or corrupt PNG header")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    return width, height, bit_depth, colour_type


def _check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InputError(
            f"{name}: image is {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels}"
        )


def _check_decoded_bytes(shape: tuple[int, ...], itemsize: int, max_bytes: int, name: str) -> None:
    decoded = math.prod(int(size) for size in shape) * itemsize
    if decoded > max_bytes:
        raise PayloadTooLargeError(
            f"{name}: depth of shape {tuple(shape)} decodes to {decoded} bytes, "
            f"more than the limit of {max_bytes}"
        )


def check_file_size(size: int, kind: str, name: str, max_pixels: int, max_depth_bytes: int) -> None:
    """Refuse a file too large for what it may decode to, before reading it into memory.

    No RGB file within the pixel limit, nor depth file within the decoded-size limit, needs more
    bytes than this (uncompressed, plus headers).
    """
    limit = (max_pixels * RGB_BYTES_PER_PIXEL if kind == "rgb" else max_depth_bytes) + ENCODING_SLACK_BYTES
    if size > limit:
        raise PayloadTooLargeError(
            f"{name}: file is {size} bytes, more than any {kind} image within the limits needs ({limit})"
        )


def _check_not_empty(data: bytes, name: str) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(f"{name}: expected file bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InputError(f"{name}: file is empty (0 bytes)")


def _open_pil(data: bytes, fmt: str, name: str, max_pixels: int) -> Image.Image:
    """Open (header only), check the size, then force a full decode so truncation shows up here."""
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt.upper()])
    except Image.DecompressionBombError as error:
        raise InputError(f"{name}: image is too large ({error})") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error) as error:
        raise InputError(f"{name}: cannot read {fmt.upper()} file ({error})") from error
    _check_pixels(image.width, image.height, max_pixels, name)
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise InputError(f"{name}: image is too large ({error})") from error
    except Exception as error:  # noqa: BLE001 - PIL raises many types for corrupt data; all mean the same
        raise InputError(f"{name}: corrupt or truncated {fmt.upper()} file ({error})") from error
    return image


def _check_rgb_bit_depth(image: Image.Image, data: bytes, fmt: str, name: str) -> None:
    """Reject 16-bit colour images that PIL would silently cut to 8 bits."""
    if fmt == "png":
        _, _, bit_depth, _ = _png_header(data, name)
        if bit_depth > 8:
            raise InputError(f"{name}: {bit_depth}-bit PNG; RGB images must be 8 bits per channel")
    elif fmt == "tiff":
        tags = getattr(image, "tag_v2", {})
        bits = tags.get(258, 8)
        bits = bits if isinstance(bits, tuple) else (bits,)
        if any(b not in (1, 8) for b in bits):
            raise InputError(f"{name}: {max(bits)}-bit TIFF; RGB images must be 8 bits per channel")
        samples = int(tags.get(277, 1))
        if samples > 4:
            raise InputError(f"{name}: TIFF has {samples} channels; RGB images have at most 4")


# PIL modes that hold 8-bit data we can turn into RGB; the rest are 16/32-bit or float.
_RGB_CONVERTIBLE_MODES = {"1", "L", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}


def decode_rgb(data: bytes, name: str = "rgb", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """PNG / JPEG / BMP / TIFF bytes -> uint8 HxWx3 (grey replicated, alpha dropped, palette expanded)."""
    _check_not_empty(data, name)
    data = bytes(data)
    fmt = sniff_format(data)
    if fmt not in ("png", "jpeg", "bmp", "tiff"):
        raise UnsupportedMediaError(f"{name}: not a PNG, JPEG, BMP or TIFF image")
    image = _open_pil(data, fmt, name, max_pixels)
    _check_rgb_bit_depth(image, data, fmt, name)
    if image.mode not in _RGB_CONVERTIBLE_MODES:
        raise InputError(f"{name}: image mode {image.mode!r} (16-bit or float); RGB images must be 8-bit")
    if image.mode != "RGB":
        image = image.convert("RGB")  # drops alpha, expands palette and grey
    return np.array(image, dtype=np.uint8)


def _invalid_to_nan(z: np.ndarray) -> np.ndarray:
    """Zero, negative and non-finite depth are sensor dropouts: mark them NaN."""
    z = z.astype(np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        z[~((z > 0) & (z < np.inf))] = np.nan
    return z


def _z_from_xyz(xyz: np.ndarray) -> np.ndarray:
    """z of an organised point cloud; (0, 0, 0) is the MVTec 3D-AD marker of a missing point.

    A missing point has z = 0, which `_invalid_to_nan` already marks; a point whose x or y is not
    finite is missing too. The checks run on the three channel planes: reducing over the last axis
    of an HxWx3 array cost 28 ms at 800 x 800, the planes about 2 ms.
    """
    z = _invalid_to_nan(xyz[..., 2])
    z[~(np.isfinite(xyz[..., 0]) & np.isfinite(xyz[..., 1]))] = np.nan
    return z


def _depth_from_array(array: np.ndarray, name: str, kind: str) -> np.ndarray:
    """An HxW z map or HxWx3 xyz cloud (float or integer) -> float32 z with NaN where invalid."""
    if array.dtype.hasobject or array.dtype.names is not None:
        raise InputError(f"{name}: {kind} has dtype {array.dtype}; expected a numeric depth array")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise InputError(f"{name}: {kind} has shape {array.shape}; expected HxW depth or HxWx3 xyz")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{name}: {kind} has no pixels (shape {array.shape})")
    if array.dtype.kind == "f":
        z = _z_from_xyz(array) if array.ndim == 3 else _invalid_to_nan(array)
    elif array.dtype.kind in "iu" and array.dtype.itemsize >= 2:
        if array.ndim == 3:
            raise InputError(f"{name}: integer {kind} with 3 channels; xyz point clouds must be float")
        z = _invalid_to_nan(array)
    else:
        raise InputError(f"{name}: {kind} has dtype {array.dtype}; depth needs float or >=16-bit integers")
    if not np.isfinite(z).any():
        raise InputError(f"{name} has no valid depth pixels")
    return z


def _has_second_page(tiff: tifffile.TiffFile) -> bool:
    """Reads one more page header only: counting the pages walks every one of them (30,000 pages
    took over 100 s), and a depth map is one page."""
    try:
        tiff.pages[1]
    except IndexError:
        return False
    return True


def _decode_depth_tiff(data: bytes, name: str, max_pixels: int, max_bytes: int) -> np.ndarray:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages.first
            axes, shape = page.axes, page.shape
            if _has_second_page(tiff):
                raise InputError(f"{name}: TIFF holds more than one page; expected one depth image")
            if axes not in ("YX", "YXS", "SYX"):
                raise InputError(f"{name}: TIFF with axes {axes!r} and shape {shape}; expected HxW or HxWx3")
            height, width = (shape[1], shape[2]) if axes == "SYX" else (shape[0], shape[1])
            _check_pixels(width, height, max_pixels, name)
            channels = 1 if axes == "YX" else (shape[0] if axes == "SYX" else shape[2])
            if channels != 1 and channels != 3:
                raise InputError(f"{name}: TIFF has {channels} channels; depth needs 1 (z) or 3 (xyz)")
            _check_decoded_bytes(shape, np.dtype(page.dtype).itemsize, max_bytes, name)
            array = page.asarray()
    except (InputError, PayloadTooLargeError):
        raise
    except Exception as error:  # noqa: BLE001 - tifffile raises many types for corrupt data
        raise InputError(f"{name}: cannot read TIFF depth ({error})") from error
    if axes == "SYX":
        array = np.moveaxis(array, 0, -1)
    return _depth_from_array(array, name, "TIFF")


def decode_png16(data: bytes, name: str = "depth", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A 16-bit greyscale PNG -> its raw uint16 values, exactly (PIL keeps mode I;16 lossless)."""
    width, height, bit_depth, colour_type = _png_header(data, name)
    if colour_type != PNG_GREY:
        raise InputError(
            f"{name}: depth PNG must be single-channel greyscale (PNG colour type {colour_type})"
        )
    if bit_depth != 16:
        raise InputError(f"{name}: {bit_depth}-bit PNG depth is too coarse; use 16-bit PNG, TIFF or .npy")
    image = _open_pil(data, "png", name, max_pixels)
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise InputError(f"{name}: unexpected PNG mode {image.mode!r} for a 16-bit greyscale PNG")
    values = np.asarray(image)
    if values.shape != (height, width):
        raise InputError(f"{name}: PNG decoded to shape {values.shape}, expected {(height, width)}")
    return values.astype(np.uint16)


def _decode_depth_npy(data: bytes, name: str, max_pixels: int, max_bytes: int) -> np.ndarray:
    """Check the .npy header (shape, dtype, payload length) before reading the payload; never unpickle."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    except Exception as error:  # noqa: BLE001 - numpy raises ValueError / SyntaxError on bad headers
        raise InputError(f"{name}: corrupt .npy header ({error})") from error
    if dtype.hasobject:
        raise InputError(f"{name}: .npy holds Python objects (dtype {dtype}); expected a numeric depth array")
    if len(shape) not in (2, 3):
        raise InputError(f"{name}: .npy array has shape {shape}; expected HxW depth or HxWx3 xyz")
    _check_pixels(shape[1], shape[0], max_pixels, name)
    _check_decoded_bytes(shape, dtype.itemsize, max_bytes, name)
    declared, held = math.prod(shape) * dtype.itemsize, len(data) - stream.tell()
    if held < declared:
        raise InputError(f"{name}: truncated .npy: its header declares {declared} bytes, it holds {held}")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - truncated payloads raise ValueError/EOFError/OSError
        raise InputError(f"{name}: cannot read .npy depth ({error})") from error
    return _depth_from_array(np.asarray(array), name, ".npy array")


def decode_depth(
    data: bytes,
    name: str = "depth",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_DEPTH_BYTES,
) -> np.ndarray:
    """Depth bytes -> float32 HxW z with NaN where invalid.

    Reads float TIFF (HxW z, or HxWx3 xyz with (0,0,0) = missing, MVTec 3D-AD), 16-bit greyscale PNG
    (raw units, 0 = missing) and .npy (HxW or HxWx3, float or integer). Zero, negative and
    non-finite z are invalid. 8-bit images are refused: 256 levels cannot describe a surface.
    What a file decodes to is checked against `max_bytes` from its header, before decoding.
    """
    _check_not_empty(data, name)
    data = bytes(data)
    fmt = sniff_format(data)
    if fmt == "tiff":
        return _decode_depth_tiff(data, name, max_pixels, max_bytes)
    if fmt == "png":
        return _depth_from_array(decode_png16(data, name, max_pixels), name, "PNG")
    if fmt == "npy":
        return _decode_depth_npy(data, name, max_pixels, max_bytes)
    raise UnsupportedMediaError(f"{name}: depth must be a float TIFF, a 16-bit PNG or a .npy array")


def _read_bytes(path: Path | str, kind: str, max_pixels: int, max_depth_bytes: int) -> bytes:
    try:
        check_file_size(Path(path).stat().st_size, kind, str(path), max_pixels, max_depth_bytes)
        return Path(path).read_bytes()
    except FileNotFoundError as error:
        raise InputError(f"{path}: file does not exist") from error
    except IsADirectoryError as error:
        raise InputError(f"{path}: is a directory, expected a file") from error
    except OSError as error:
        raise InputError(f"{path}: cannot read file ({error.strerror or error})") from error


def read_rgb(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """`decode_rgb` for a file on disk; errors name the path."""
    data = _read_bytes(path, "rgb", max_pixels, DEFAULT_MAX_DEPTH_BYTES)
    return decode_rgb(data, name=str(path), max_pixels=max_pixels)


def read_depth(
    path: Path | str,
    depth_range: tuple[float, float] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_DEPTH_BYTES,
) -> np.ndarray:
    """`decode_depth` for a file on disk; errors name the path.

    With `depth_range=(min, max)` (Eyecandies `info_depth.yaml`), a 16-bit PNG is mapped to metres as
    png / 65535 * (max - min) + min, and every pixel is kept: Eyecandies renders have no dropouts and
    0 there is a real depth (the nearest point), not a missing one.
    """
    data = _read_bytes(path, "depth", max_pixels, max_bytes)
    if depth_range is None:
        return decode_depth(data, name=str(path), max_pixels=max_pixels, max_bytes=max_bytes)
    low, high = (float(v) for v in depth_range)
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise InputError(f"{path}: depth range {depth_range} must be two finite numbers with min < max")
    if sniff_format(data) != "png":
        raise InputError(f"{path}: a depth range only applies to 16-bit PNG depth")
    raw = decode_png16(data, name=str(path), max_pixels=max_pixels)
    return raw.astype(np.float32) / np.float32(65535.0) * np.float32(high - low) + np.float32(low)


def check_same_size(rgb: np.ndarray, depth: np.ndarray | None, name: str) -> None:
    """RGB and depth must be pixel aligned; different sizes mean the pair is not one capture."""
    if depth is None:
        return
    if rgb.shape[:2] != depth.shape[:2]:
        raise InputError(
            f"{name}: RGB is {rgb.shape[1]}x{rgb.shape[0]} but depth is "
            f"{depth.shape[1]}x{depth.shape[0]} (width x height); they must be pixel aligned"
        )


def read_mask(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ground-truth mask image (8-bit, 0 = normal) -> bool HxW, True where any channel is positive."""
    data = _read_bytes(path, "rgb", max_pixels, DEFAULT_MAX_DEPTH_BYTES)
    return decode_rgb(data, name=str(path), max_pixels=max_pixels).max(axis=2) > 0
