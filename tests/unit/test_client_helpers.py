"""The client's pure helpers: request building, image input encoding, reply parsing."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from sam2_service.client import (
    ClientError,
    RequestFailed,
    build_segment_request,
    check_response,
    encode_image_input,
    parse_segment_response,
)
from sam2_service.daemon.inference.imaging import decode_image
from sam2_service.wire.codecs import encode_mask, encode_png
from sam2_service.wire.schema import SegmentRequest, error_response, parse_request, segment_response


def rgb(h=6, w=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(arr, fmt, path=None, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    if path is not None:
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def sent_image(msg) -> bytes:
    return base64.b64decode(msg["imageBase64"], validate=True)


# --- build_segment_request / encode_image_input -----------------------------------------


def test_from_numpy_rgb_array():
    arr = rgb(6, 10)
    msg = build_segment_request(arr, request_id="r1")
    assert msg["requestId"] == "r1"
    assert (msg["width"], msg["height"]) == (10, 6)
    png = sent_image(msg)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        assert im.size == (10, 6)
    np.testing.assert_array_equal(decode_image(png, 10**6), arr)
    assert "bbox" not in msg and "points" not in msg


def test_from_numpy_greyscale_array():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    msg = build_segment_request(grey)
    assert (msg["width"], msg["height"]) == (4, 3)
    np.testing.assert_array_equal(decode_image(sent_image(msg), 100)[..., 0], grey)


@pytest.mark.parametrize("arr", [np.zeros((4, 4, 3), dtype=np.float32),
                                 np.zeros((4,), dtype=np.uint8),
                                 np.zeros((2, 2, 2, 3), dtype=np.uint8)])
def test_from_bad_numpy_array(arr):
    with pytest.raises(ValueError):
        encode_image_input(arr)


def test_from_png_bytes_sent_unchanged():
    png = save(rgb(5, 7), "PNG")
    msg = build_segment_request(png)
    assert sent_image(msg) == png
    assert (msg["width"], msg["height"]) == (7, 5)


def test_from_jpeg_file_sent_unchanged(tmp_path):
    path = tmp_path / "cat.jpg"
    jpg = save(skdata.chelsea(), "JPEG", path)
    msg = build_segment_request(path)
    assert sent_image(msg) == jpg
    assert (msg["width"], msg["height"]) == (451, 300)


def test_from_png_path_as_str(tmp_path):
    path = tmp_path / "a.png"
    png = save(rgb(3, 4), "PNG", path)
    data, w, h = encode_image_input(str(path))
    assert (data, w, h) == (png, 4, 3)


def test_from_bmp_file_reencoded_as_png(tmp_path):
    arr = rgb(9, 13)
    path = tmp_path / "a.bmp"
    save(arr, "BMP", path)
    msg = build_segment_request(path)
    assert (msg["width"], msg["height"]) == (13, 9)
    png = sent_image(msg)
    assert png.startswith(b"\x89PNG")
    np.testing.assert_array_equal(decode_image(png, 10**6), arr)


def test_request_is_accepted_by_the_daemon_parser():
    msg = build_segment_request(rgb(6, 10), bbox=(1, 2, 8, 5), points=[(3, 4), (5, 5, 0)])
    req = parse_request(msg, max_points=64)
    assert isinstance(req, SegmentRequest)
    assert (req.width, req.height) == (10, 6)
    assert req.bbox is not None and (req.bbox.x1, req.bbox.y2) == (1.0, 5.0)
    assert [p.label for p in req.points] == [1, 0]


def test_bbox_shaping():
    msg = build_segment_request(rgb(), bbox=[1, 2, 3.5, 4])
    assert msg["bbox"] == {"x1": 1.0, "y1": 2.0, "x2": 3.5, "y2": 4.0}
    assert all(type(v) is float for v in msg["bbox"].values())


def test_points_shaping_label_default_1():
    msg = build_segment_request(rgb(), points=[(1, 2), [3, 4, 0], np.array([5.5, 6.5, 1])])
    assert msg["points"] == [{"x": 1.0, "y": 2.0, "label": 1},
                             {"x": 3.0, "y": 4.0, "label": 0},
                             {"x": 5.5, "y": 6.5, "label": 1}]
    assert all(type(p["label"]) is int for p in msg["points"])


def test_points_from_generator():
    msg = build_segment_request(rgb(), points=((i, i) for i in range(3)))
    assert [p["x"] for p in msg["points"]] == [0.0, 1.0, 2.0]


def test_no_points_key_when_empty():
    assert "points" not in build_segment_request(rgb(), points=[])


def test_request_ids_made_up_and_unique():
    ids = {build_segment_request(np.zeros((1, 1), np.uint8))["requestId"] for _ in range(20)}
    assert len(ids) == 20
    assert all(i.startswith("cli-") for i in ids)


# --- replies ----------------------------------------------------------------------------


def test_parse_segment_response_success():
    mask = np.zeros((3, 5), dtype=bool)
    mask[0, 1] = mask[2, 4] = True
    reply = segment_response("r1", width=5, height=3, mask_base64=encode_mask(mask),
                             score=0.875, image_id="ab" * 32, cached=True,
                             timings={"decode": 1.0, "predict": 11.5, "total": 13.0})
    result = parse_segment_response(reply)
    assert result.request_id == "r1"
    assert result.mask.shape == (3, 5)
    assert result.mask.dtype == np.uint8
    np.testing.assert_array_equal(result.mask, mask.astype(np.uint8) * 255)
    assert result.score == 0.875
    assert result.inference_time_ms == 12.5
    assert "maskBase64" not in result.response
    assert result.response["maskWidth"] == 5
    assert result.image_id == "ab" * 32
    assert result.cached is True


def test_parse_segment_response_hand_built():
    raw = bytes([0, 255, 0, 0, 0, 255])  # 3 wide, 2 high
    reply = {"requestId": "x", "maskWidth": 3, "maskHeight": 2,
             "maskBase64": base64.b64encode(raw).decode(), "score": 1, "inferenceTimeMs": 3}
    mask = parse_segment_response(reply).mask
    np.testing.assert_array_equal(mask, [[0, 255, 0], [0, 0, 255]])


def test_parse_segment_response_error_reply():
    reply = error_response("r7", "invalid_request", "bbox.x2 must be finite, got inf")
    with pytest.raises(RequestFailed) as info:
        parse_segment_response(reply)
    exc = info.value
    assert exc.code == "invalid_request"
    assert exc.message == "bbox.x2 must be finite, got inf"
    assert exc.request_id == "r7"
    assert isinstance(exc, ClientError)
    assert "invalid_request" in str(exc)


def test_check_response_error_without_code_defaults_to_internal():
    with pytest.raises(RequestFailed) as info:
        check_response({"error": "oops"})
    assert (info.value.code, info.value.request_id) == ("internal", "")


def test_check_response_passes_success_through():
    reply = {"requestId": "p", "ok": True}
    assert check_response(reply) is reply


@pytest.mark.parametrize("reply", [
    {"requestId": "r", "maskWidth": 3, "maskHeight": 2, "maskBase64": base64.b64encode(b"\0" * 5).decode()},
    {"requestId": "r", "maskWidth": 3, "maskHeight": 2},
    {"requestId": "r", "maskWidth": 1, "maskHeight": 1, "maskBase64": "!!"},
])
def test_parse_segment_response_malformed(reply):
    with pytest.raises(ClientError) as info:
        parse_segment_response(reply)
    assert not isinstance(info.value, RequestFailed)
    assert "malformed" in str(info.value)


def test_encode_png_helper_used_for_arrays_is_lossless():
    arr = rgb(4, 4)
    data, w, h = encode_image_input(arr)
    assert data == encode_png(arr)
    assert (w, h) == (4, 4)
