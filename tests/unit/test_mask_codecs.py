"""The compact mask encodings (wire/codecs.py): round trips, edge shapes, and RLE
equal to sam2's own ``mask_to_rle_pytorch`` / ``rle_to_mask`` (COCO uncompressed RLE)."""

from __future__ import annotations

import numpy as np
import pytest

from sam2_service.wire.codecs import (
    MASK_ENCODINGS,
    decode_any_mask,
    decode_mask_png,
    decode_rle,
    encode_mask_as,
    encode_mask_png,
    encode_rle,
)

SHAPES = [(1, 1), (1, 7), (5, 1), (3, 5), (48, 64)]


def masks():
    rng = np.random.default_rng(13)
    for shape in SHAPES:
        yield f"empty{shape}", np.zeros(shape, bool)
        yield f"full{shape}", np.ones(shape, bool)
        yield f"random{shape}", rng.random(shape) > 0.5
    first = np.zeros((4, 6), bool)
    first[0, 0] = True  # foreground first pixel: counts start with a 0 run
    yield "first_pixel", first


CASES = list(masks())


@pytest.mark.parametrize("name,mask", CASES, ids=[c[0] for c in CASES])
def test_rle_equals_sam2_and_round_trips(name, mask):
    import torch
    from sam2.utils.amg import mask_to_rle_pytorch, rle_to_mask

    rle = encode_rle(mask)
    assert rle == mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0]
    assert np.array_equal(rle_to_mask(rle), mask)
    h, w = mask.shape
    decoded = decode_rle(rle, w, h)
    assert decoded.dtype == np.uint8 and decoded.shape == (h, w)
    assert np.array_equal(decoded, mask.astype(np.uint8) * 255)


def test_rle_is_column_major_and_starts_with_background():
    mask = np.array([[0, 1], [0, 1]], bool)  # column 0 background, column 1 foreground
    assert encode_rle(mask) == {"size": [2, 2], "counts": [2, 2]}
    assert encode_rle(~mask) == {"size": [2, 2], "counts": [0, 2, 2]}


@pytest.mark.parametrize("name,mask", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("encoding", list(MASK_ENCODINGS))
def test_every_encoding_round_trips(name, mask, encoding):
    key, value = encode_mask_as(mask, encoding)
    assert key == MASK_ENCODINGS[encoding]
    h, w = mask.shape
    assert np.array_equal(decode_any_mask({key: value}, w, h), mask.astype(np.uint8) * 255)


def test_png_is_8_bit_greyscale():
    import base64
    import io

    from PIL import Image

    mask = np.eye(5, 7, dtype=bool)
    with Image.open(io.BytesIO(base64.b64decode(encode_mask_png(mask)))) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (7, 5)
        assert set(np.unique(np.asarray(im))) == {0, 255}


@pytest.mark.parametrize("rle", [
    None, {"size": [2, 3], "counts": [6]}, {"size": [3, 2], "counts": [5]},
    {"size": [3, 2], "counts": [3, -1, 4]}, {"size": [3, 2], "counts": "abc"},
    {"size": [3, 2], "counts": [True, 5]}, {"size": [3, 2], "counts": [1, 5.0]},
    {"size": [3, 2], "counts": [2**70, 6]}, {"size": [3, 2], "counts": [[6]]},
])
def test_bad_rle_is_refused(rle):
    with pytest.raises(ValueError):
        decode_rle(rle, 2, 3)


def test_bad_png_is_refused():
    grey = np.full((3, 2), 7, np.uint8)
    import pybase64

    from sam2_service.wire.codecs import encode_png

    with pytest.raises(ValueError, match="0 and 255"):
        decode_mask_png(pybase64.b64encode_as_string(encode_png(grey)), 2, 3)
    with pytest.raises(ValueError, match="expected"):
        decode_mask_png(encode_mask_png(np.zeros((3, 2), bool)), 3, 2)
    with pytest.raises(ValueError, match="not a base64 PNG"):
        decode_mask_png("AAAA", 2, 3)
    with pytest.raises(ValueError, match="no maskBase64"):
        decode_any_mask({}, 2, 3)


def test_raw_mask_of_a_transposed_or_non_bool_array_is_row_major():
    from sam2_service.wire.codecs import decode_mask, encode_mask

    mask = np.random.default_rng(3).random((7, 5)) > 0.5
    for m in (mask, np.asfortranarray(mask), mask.T.copy().T, mask.astype(np.uint8) * 9):
        assert np.array_equal(decode_mask(encode_mask(m), 5, 7) > 0, mask)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (63, 5), (64, 3), (65, 130), (129, 2)])
def test_rle_block_transpose_matches_numpys_column_major_order(shape):
    from sam2_service.wire.codecs import decode_rle, encode_rle

    mask = np.random.default_rng(sum(shape)).random(shape) > 0.5
    flat = mask.ravel(order="F")
    expected = np.diff(np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1,
                                       [flat.size]))).tolist()
    if flat[0]:
        expected.insert(0, 0)
    rle = encode_rle(mask)
    assert rle["counts"] == expected
    assert np.array_equal(decode_rle(rle, shape[1], shape[0]) > 0, mask)
