"""Per-request working memory and reply bounds (daemon/inference/budget.py): the estimates on
their own, and through the dispatcher with the fake engine (no socket, no model)."""

from __future__ import annotations

import pytest

from sam2_service.daemon.inference.budget import (
    IMAGE_BYTES_PER_PIXEL,
    MASK_BYTES_PER_PIXEL,
    RequestBudget,
    encoded_chars,
    raw_mask_chars,
)
from sam2_service.wire.auto import parse_auto_request
from sam2_service.wire.codecs import encode_rle
from sam2_service.wire.errors import ERROR_CODES, ReplyTooLarge, RequestTooLarge
from sam2_service.wire.schema import parse_request
from tests.unit.test_dispatch import answer, png

GIB = 2**30
BOX = {"x1": 0, "y1": 0, "x2": 8, "y2": 6}


def segment(w: int, h: int, **fields):
    obj = {"requestId": "r", "width": w, "height": h, "imageBase64": "AAAA", **fields}
    return parse_request(obj, max_points=64)


def auto(w: int, h: int, **fields):
    return parse_auto_request({"width": w, "height": h, "imageBase64": "AAAA", **fields}, "a")


def test_codes_are_documented_error_codes():
    assert {RequestTooLarge.code, ReplyTooLarge.code} <= ERROR_CODES


def test_raw_mask_chars_is_base64_length():
    assert [raw_mask_chars(n) for n in (0, 1, 2, 3, 4)] == [0, 4, 4, 4, 8]


def test_issue_sizes_6000_square_boxes_refused_under_2_gib():
    """16 boxes on 6000x6000 took +2.75 GB measured; the estimate refuses it under 2 GiB,
    naming the setting, while one box (or a multimask point) on the same image fits."""
    budget = RequestBudget(2 * GIB, 256 * 2**20)
    with pytest.raises(RequestTooLarge) as info:
        budget.check_segment(segment(6000, 6000, boxes=[BOX] * 16, maskEncoding="rle"))
    assert "--max-request-mb" in info.value.message and info.value.field == "boxes"
    budget.check_segment(segment(6000, 6000, bbox=BOX, maskEncoding="rle"))
    budget.check_segment(segment(6000, 6000, points=[{"x": 1, "y": 1}]))


def test_estimate_is_pixels_times_masks():
    pixels = 1000 * 1000
    need = pixels * (IMAGE_BYTES_PER_PIXEL + MASK_BYTES_PER_PIXEL * 4)  # 3 boxes + the union
    RequestBudget(need, GIB).check_segment(segment(1000, 1000, boxes=[BOX] * 3, maskEncoding="rle"))
    with pytest.raises(RequestTooLarge):
        RequestBudget(need - 1, GIB).check_segment(segment(1000, 1000, boxes=[BOX] * 3,
                                                           maskEncoding="rle"))


def test_raw_reply_refused_before_work_rle_not():
    """21 raw 6000x6000-ish boxes would pass 1 GiB: refused by the reply bound up front
    (here on a smaller image, with the memory bound out of the way)."""
    budget = RequestBudget(64 * GIB, 256 * 2**20)
    with pytest.raises(ReplyTooLarge) as info:
        budget.check_segment(segment(4000, 4000, boxes=[BOX] * 16, maskEncoding="raw"))
    assert "--max-reply-mb" in info.value.message and "rle or png" in info.value.message
    budget.check_segment(segment(4000, 4000, boxes=[BOX] * 16, maskEncoding="rle"))
    budget.check_segment(segment(4000, 4000, bbox=BOX))  # the plain reply: one raw mask


def test_auto_runs_fewer_points_per_step_to_fit():
    budget = RequestBudget(2 * GIB, GIB)
    assert budget.auto_step_points(auto(1024, 1024), 16) == 16
    big = auto(6000, 6000, pointsPerSide=4)  # 16 points x 3 masks took +7 GB measured
    step = budget.auto_step_points(big, 16)
    assert 1 <= step < 16
    per_point = MASK_BYTES_PER_PIXEL * 6000 * 6000 * 3
    assert step * per_point <= 2 * GIB
    single = auto(6000, 6000, multimaskOutput=False)
    assert budget.auto_step_points(single, 16) > step  # one mask a point, not three


def test_auto_tiles_count_their_own_size_and_refuse_when_one_point_cannot_fit():
    budget = RequestBudget(GIB, GIB)  # one point's 3 masks of 36 MP: 540 MB, over with the image
    with pytest.raises(RequestTooLarge) as info:
        budget.auto_step_points(auto(6000, 6000), 16)
    assert info.value.field == "tileShape"
    tiled = auto(6000, 6000, tileShape=[1024, 1024], halo=[64, 64])
    assert budget.auto_step_points(tiled, 16) >= 1


def test_sizes_no_image_can_have_are_left_to_the_image_checks():
    """A claimed size above --max-image-pixels gets image_too_large or the size mismatch
    from the image checks (tests/integration/test_hostile.py), not request_too_large."""
    budget = RequestBudget(2**20, 2**20, max_image_pixels=40_000_000)
    budget.check_segment(segment(20000, 20000, boxes=[BOX] * 16, maskEncoding="raw"))
    assert budget.auto_step_points(auto(2**40, 213), 16) == 16
    with pytest.raises(RequestTooLarge):
        budget.check_segment(segment(6000, 6000, boxes=[BOX] * 16, maskEncoding="raw"))


def test_auto_label_map_over_reply_bound():
    with pytest.raises(ReplyTooLarge):
        RequestBudget(64 * GIB, 2**20).auto_step_points(auto(1000, 1000), 16)


def test_encoded_chars_bounds_rle_json():
    import numpy as np
    import orjson

    mask = np.random.default_rng(0).random((50, 70)) > 0.5
    rle = encode_rle(mask)
    assert encoded_chars(rle) >= len(orjson.dumps(rle))
    assert encoded_chars("abcd") == 4


# --- through the dispatcher --------------------------------------------------------------


def test_dispatcher_refuses_with_request_id_and_keeps_serving():
    _, b64 = png(1, 64, 48)
    big = {"requestId": "big", "width": 64, "height": 48, "imageBase64": b64,
           "boxes": [{"x1": 0, "y1": 0, "x2": 60, "y2": 40}] * 4, "maskEncoding": "rle"}
    ok = {"requestId": "ok", "width": 64, "height": 48, "imageBase64": b64, "bbox": BOX}
    # 64x48 = 3072 px: 15 + 5 x 5 masks = 40 B/px = 122,880 B; one box: 25 B/px fits
    replies = answer([big, ok, {"op": "info"}], max_request_bytes=100_000)
    assert replies[0]["code"] == "request_too_large" and replies[0]["requestId"] == "big"
    assert "--max-request-mb" in replies[0]["error"]
    assert replies[1]["requestId"] == "ok" and "code" not in replies[1]
    assert replies[2]["limits"]["maxRequestBytes"] == 100_000
    assert replies[2]["limits"]["maxReplyBytes"] == 256 * 2**20


def test_rle_reply_counted_mask_by_mask_and_refused():
    """Noise makes the fake engine's masks noisy: their RLE is large, known only once
    encoded; the reply is refused, never built, and the next request is served."""
    _, b64 = png(2, 200, 150)
    box = {"x1": 0, "y1": 0, "x2": 200, "y2": 150}
    req = {"requestId": "rle", "width": 200, "height": 150, "imageBase64": b64,
           "boxes": [box] * 8, "maskEncoding": "rle"}
    replies = answer([req, {**req, "requestId": "png1", "boxes": [box], "maskEncoding": "png"}],
                     max_reply_bytes=60_000)
    assert replies[0]["code"] == "reply_too_large" and replies[0]["requestId"] == "rle"
    assert "--max-reply-mb" in replies[0]["error"]
    assert replies[1]["requestId"] == "png1" and len(replies[1]["masks"]) == 1
