"""imaging: base64/data URLs, PNG/JPEG decoding with the pixel cap, mask encoding."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from skimage import data as skdata

from sam2_service.daemon.config import PILLOW_BOMB_PIXELS
from sam2_service.daemon.inference.imaging import decode_image
from sam2_service.wire.codecs import decode_base64, decode_mask, encode_mask, encode_png, image_size
from sam2_service.wire.errors import ImageDecodeError, ImageTooLarge

BIG = 40_000_000


def save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb_array(h=7, w=11, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_header_only(width: int, height: int, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A PNG whose IHDR declares width x height, with a tiny (short) IDAT and IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- decode_base64 ----------------------------------------------------------------------


def test_decode_base64_plain():
    raw = bytes(range(256))
    assert decode_base64(base64.b64encode(raw).decode()) == raw


def test_decode_base64_data_url():
    png = encode_png(rgb_array())
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert decode_base64(url) == png


def test_decode_base64_data_url_jpeg_type():
    assert decode_base64("data:image/jpeg;base64,AAEC") == b"\x00\x01\x02"


@pytest.mark.parametrize("text", ["abc", "!!!!", "AAAA=A", "AA AA", "AAAA\nAAAA", "ÿÿÿÿ",
                                  "data:image/png;base64,@@@@"])
def test_decode_base64_invalid(text):
    with pytest.raises(ImageDecodeError) as info:
        decode_base64(text)
    assert info.value.code == "image_decode"
    assert info.value.field == "imageBase64"
    assert "imageBase64" in info.value.message


@pytest.mark.parametrize("text", ["data:text/plain;base64,AAAA", "data:image/png,AAAA",
                                  "data:;base64,AAAA"])
def test_decode_base64_non_image_data_url_rejected(text):
    with pytest.raises(ImageDecodeError) as info:
        decode_base64(text)
    assert info.value.code == "image_decode"
    assert "data URL" in info.value.message


def test_decode_base64_field_name_used():
    with pytest.raises(ImageDecodeError) as info:
        decode_base64("!!!!", field="maskBase64")
    assert info.value.field == "maskBase64"


# --- decode_image -----------------------------------------------------------------------


def test_decode_png_rgb_exact():
    arr = rgb_array(7, 11)
    out = decode_image(save(Image.fromarray(arr), "PNG"), BIG)
    assert out.shape == (7, 11, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_decode_png_rgba_drops_alpha():
    rgba = np.random.default_rng(1).integers(0, 256, (5, 9, 4), dtype=np.uint8)
    out = decode_image(save(Image.fromarray(rgba, "RGBA"), "PNG"), BIG)
    assert out.shape == (5, 9, 3)
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_decode_png_greyscale_expanded():
    grey = np.random.default_rng(2).integers(0, 256, (6, 4), dtype=np.uint8)
    out = decode_image(save(Image.fromarray(grey, "L"), "PNG"), BIG)
    assert out.shape == (6, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_decode_png_palette_expanded():
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette)
    out = decode_image(save(im, "PNG"), BIG)
    expected = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                         [[0, 0, 255], [0, 255, 0], [255, 0, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_decode_png_orientation_top_row_first():
    arr = np.zeros((4, 6, 3), dtype=np.uint8)
    arr[0, :, 0] = 255   # top row red
    arr[:, 0, 2] = 255   # left column blue
    out = decode_image(encode_png(arr), BIG)
    np.testing.assert_array_equal(out, arr)


def test_decode_jpeg_chelsea_non_square():
    cat = skdata.chelsea()
    assert cat.shape[0] != cat.shape[1]
    out = decode_image(save(Image.fromarray(cat), "JPEG", quality=95), BIG)
    assert out.shape == cat.shape  # (300, 451, 3): H x W x 3
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - cat.astype(int)).mean() < 5


def test_decode_jpeg_greyscale():
    grey = skdata.camera()[:64, :80]
    out = decode_image(save(Image.fromarray(grey), "JPEG"), BIG)
    assert out.shape == (64, 80, 3)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_other_formats_rejected(fmt):
    data = save(Image.fromarray(rgb_array()), fmt)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, BIG)
    assert info.value.code == "image_decode"
    assert info.value.field == "imageBase64"


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"])
def test_garbage_rejected(data):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, BIG)
    assert info.value.code == "image_decode"


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_png_rejected(fraction):
    png = save(Image.fromarray(rgb_array(64, 64)), "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png[: int(len(png) * fraction)], BIG)
    assert info.value.code == "image_decode"


def test_truncated_jpeg_rejected():
    jpg = save(Image.fromarray(rgb_array(64, 64)), "JPEG")
    with pytest.raises(ImageDecodeError):
        decode_image(jpg[: len(jpg) // 2], BIG)


def test_over_max_pixels_rejected():
    png = encode_png(rgb_array(10, 20))
    with pytest.raises(ImageTooLarge) as info:
        decode_image(png, max_pixels=199)
    assert info.value.code == "image_too_large"
    assert "20x10" in info.value.message
    # says what to do: the flag that raises the limit, and its ceiling
    assert "--max-image-pixels" in info.value.message
    assert str(PILLOW_BOMB_PIXELS) in info.value.message


def test_exactly_max_pixels_accepted():
    png = encode_png(rgb_array(10, 20))
    assert decode_image(png, max_pixels=200).shape == (10, 20, 3)


def test_declared_20000x20000_rejected_quickly_from_header():
    data = png_header_only(20000, 20000)
    assert len(data) < 200
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, max_pixels=40_000_000)
    assert time.perf_counter() - t0 < 1.0
    assert info.value.code == "image_too_large"


def test_declared_size_under_pillow_bomb_limit_but_over_cap_rejected_from_header():
    # 10000 x 5000 = 50 M pixels: below Pillow's own bomb guard, above our cap
    data = png_header_only(10000, 5000, bit_depth=8, color_type=2)
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, max_pixels=40_000_000)
    assert time.perf_counter() - t0 < 1.0
    assert "10000x5000" in info.value.message


# --- masks ------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40)))
def test_mask_roundtrip(mask):
    h, w = mask.shape
    text = encode_mask(mask)
    raw = base64.b64decode(text, validate=True)
    assert len(raw) == h * w
    assert set(raw) <= {0, 255}
    out = decode_mask(text, w, h)
    assert out.shape == (h, w)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask.astype(np.uint8) * 255)


def test_mask_layout_row_major_top_row_first():
    h, w = 3, 5
    mask = np.zeros((h, w), dtype=bool)
    mask[0, 1] = True
    mask[1, 0] = True
    raw = base64.b64decode(encode_mask(mask))
    assert raw[1] == 255
    assert raw[w] == 255
    assert raw[0] == 0 and raw[2] == 0
    assert sum(b == 255 for b in raw) == 2


def test_encode_mask_non_bool_nonzero_is_foreground():
    mask = np.array([[0, 1], [7, 0]], dtype=np.uint8)
    assert base64.b64decode(encode_mask(mask)) == b"\x00\xff\xff\x00"


def test_encode_mask_fortran_ordered():
    mask = np.zeros((4, 6), dtype=bool)
    mask[0, 1] = True
    mask_t = mask.T  # Fortran-ordered view, shape (6, 4)
    raw = base64.b64decode(encode_mask(mask_t))
    assert raw[4] == 255  # mask_t[1, 0]
    assert sum(b == 255 for b in raw) == 1


def test_encode_mask_rejects_non_2d():
    with pytest.raises(ValueError):
        encode_mask(np.zeros((2, 2, 1), dtype=bool))


@pytest.mark.parametrize("w,h", [(4, 4), (3, 2), (2, 4), (0, 3)])
def test_decode_mask_wrong_length(w, h):
    text = base64.b64encode(b"\x00" * 9).decode()
    with pytest.raises(ValueError):
        decode_mask(text, w, h)


def test_decode_mask_invalid_base64():
    with pytest.raises(ValueError):
        decode_mask("!!!!", 3, 1)


# --- encode_png / image_size ------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 8), (5, 8, 3)])
def test_encode_png_roundtrip(shape):
    arr = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    png = encode_png(arr)
    assert png.startswith(b"\x89PNG")
    assert image_size(png) == (8, 5)
    with Image.open(io.BytesIO(png)) as im:
        np.testing.assert_array_equal(np.asarray(im), arr)


def test_image_size_reads_header():
    data = png_header_only(10000, 5000, bit_depth=8, color_type=2)
    assert image_size(data) == (10000, 5000)


def test_image_size_of_declared_huge_png_does_not_leak_pillow_error():
    # 400 MP is over twice Pillow's MAX_IMAGE_PIXELS, where Image.open itself refuses
    with pytest.raises(ImageTooLarge):
        image_size(png_header_only(20000, 20000))


def test_image_size_rejects_bmp():
    with pytest.raises(ImageDecodeError):
        image_size(save(Image.fromarray(rgb_array()), "BMP"))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_decode_image_arbitrary_bytes_only_service_errors(data):
    try:
        out = decode_image(data, BIG)
    except (ImageDecodeError, ImageTooLarge):
        pass
    else:  # pragma: no cover - random bytes are practically never an image
        assert out.ndim == 3 and out.shape[2] == 3
