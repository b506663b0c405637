"""The protocol additions (maskEncoding, multimask, boxes, maskInput) without a model:
their parsing (wire/schema.py), their checks against the image (daemon/inference/prompts.py),
and the dispatcher's replies with the fake engine: an old-style request's reply is unchanged
byte for byte, extended replies carry every encoding, candidates, per-box masks and maskIds,
and maskInput finds its logits or is unknown_mask."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from sam2_service.daemon.config import ServiceConfig
from sam2_service.daemon.inference.cache import LogitsCache
from sam2_service.daemon.inference.engine import Sam2Engine
from sam2_service.daemon.inference.prompts import validate
from sam2_service.daemon.inference.worker import InferenceWorker
from sam2_service.daemon.serving.dispatch import Dispatcher
from sam2_service.wire.codecs import decode_any_mask, encode_mask
from sam2_service.wire.errors import ERROR_CODES, InvalidRequest
from sam2_service.wire.schema import MAX_MASK_INPUT_CHARS, BBox, new_mask_id, parse_request, segment_response
from tests.fake_engine import FakeEngine
from tests.unit.test_dispatch import answer, png

#: The version 1 segment reply's keys, in order: an old-style request must get exactly these.
V1_KEYS = ["requestId", "maskWidth", "maskHeight", "maskBase64", "score", "imageId", "cached",
           "inferenceTimeMs", "timingsMs"]
BOX = {"x1": 0, "y1": 0, "x2": 8, "y2": 6}


def seg(**fields):
    return {"requestId": "r", "width": 8, "height": 6, "imageBase64": "AAAA", **fields}


def parse(obj, max_boxes=64):
    return parse_request(obj, max_points=64, max_boxes=max_boxes)


def invalid(obj, field, max_boxes=64, says=""):
    with pytest.raises(InvalidRequest) as info:
        parse(obj, max_boxes)
    assert info.value.field == field and field in info.value.message, info.value
    assert says in info.value.message
    return info.value


# -- parsing -------------------------------------------------------------------------------
def test_old_style_request_is_not_extended():
    r = parse(seg(bbox=BOX))
    assert not r.extended and r.mask_encoding == "raw" and not r.multimask
    assert r.boxes == () and r.mask_input is None


@pytest.mark.parametrize("fields", [{"maskEncoding": "raw"}, {"maskEncoding": "rle"},
                                    {"multimask": False}, {"maskInput": "m1"},
                                    {"boxes": [BOX]}])
def test_any_new_field_makes_the_request_extended(fields):
    assert parse(seg(**fields)).extended


def test_new_fields_parse():
    assert parse(seg(maskInput=(mask_id := new_mask_id()))).mask_input == mask_id
    assert len(parse(seg(maskInput="m" * MAX_MASK_INPUT_CHARS)).mask_input) == MAX_MASK_INPUT_CHARS
    r = parse(seg(maskEncoding="png", multimask=True, maskInput="mabc"))
    assert (r.mask_encoding, r.multimask, r.mask_input) == ("png", True, "mabc")
    r = parse(seg(boxes=[BOX, {"x1": 1, "y1": 2.5, "x2": 3, "y2": 4}]))
    assert r.boxes == (BBox(0, 0, 8, 6), BBox(1, 2.5, 3, 4))


@pytest.mark.parametrize("fields,field,says", [
    ({"maskEncoding": "jpeg"}, "maskEncoding", "raw, rle, png"),
    ({"maskEncoding": None}, "maskEncoding", "got null"),  # not 'None', Python's name
    ({"maskEncoding": 3}, "maskEncoding", "got int"),
    ({"multimask": 1}, "multimask", "true or false"),
    ({"maskInput": ""}, "maskInput", ""),
    ({"maskInput": 5}, "maskInput", ""),
    ({"maskInput": "m" * (MAX_MASK_INPUT_CHARS + 1)}, "maskInput", "maskId"),  # too long to read
    ({"boxes": []}, "boxes", "non-empty"),
    ({"boxes": BOX}, "boxes", ""),
    ({"boxes": [BOX, 3]}, "boxes[1]", ""),
    ({"boxes": [{"x1": 0, "y1": 0, "x2": "8", "y2": 6}]}, "boxes[0].x2", "number"),
    ({"boxes": [BOX], "bbox": BOX}, "bbox", "cannot be combined with boxes"),
    ({"boxes": [BOX], "points": [{"x": 1, "y": 1}]}, "points", "cannot be combined with boxes"),
    ({"boxes": [BOX], "multimask": True}, "multimask", "cannot be combined with boxes"),
    ({"boxes": [BOX], "maskInput": "m1"}, "maskInput", "cannot be combined with boxes"),
])
def test_bad_new_fields(fields, field, says):
    invalid(seg(**fields), field, says=says)


def test_max_boxes():
    parse(seg(boxes=[BOX] * 3), max_boxes=3)
    invalid(seg(boxes=[BOX] * 4), "boxes", max_boxes=3, says="--max-boxes")


def test_unknown_mask_is_a_documented_code():
    assert "unknown_mask" in ERROR_CODES


# -- prompts -----------------------------------------------------------------------------------
def test_boxes_become_a_bx4_prompt_checked_like_bbox():
    p = validate(parse(seg(boxes=[BOX, {"x1": -5, "y1": 1, "x2": 4, "y2": 9}])), (6, 8))
    assert p.box.shape == (2, 4) and p.box.dtype == np.float32
    assert p.box.tolist() == [[0, 0, 8, 6], [0, 1, 4, 6]] and not p.multimask_output
    with pytest.raises(InvalidRequest) as info:
        validate(parse(seg(boxes=[BOX, {"x1": 5, "y1": 1, "x2": 4, "y2": 9}])), (6, 8))
    assert info.value.field == "boxes[1]"


def test_multimask_asks_sam2_for_three_masks():
    assert validate(parse(seg(bbox=BOX, multimask=True)), (6, 8)).multimask_output
    assert not validate(parse(seg(bbox=BOX, maskEncoding="rle")), (6, 8)).multimask_output


# -- the logits LRU ---------------------------------------------------------------------------
def test_logits_cache_is_lru_and_tied_to_image_and_model():
    c = LogitsCache(2)
    c.put("a", "img1", "m", 1)
    c.put("b", "img1", "m", 2)
    assert c.get("a", "img1", "m") == 1  # a is now the most recent
    c.put("c", "img2", "m", 3)
    assert c.get("b", "img1", "m") is None and len(c) == 2
    assert c.get("a", "img2", "m") is None and c.get("a", "img1", "other") is None
    assert c.release("img1") == 1 and c.get("a", "img1", "m") is None
    off = LogitsCache(0)
    off.put("a", "i", "m", 1)
    assert off.get("a", "i", "m") is None


# -- dispatcher, fake engine ---------------------------------------------------------------
def test_sam2_engine_has_predict_all():
    assert callable(Sam2Engine.predict_all)


def test_old_style_reply_is_byte_identical_to_the_v1_builder():
    img, text = png(3)
    (reply,) = answer([seg(imageBase64=text, bbox={"x1": 1, "y1": 1, "x2": 7, "y2": 5})])
    assert list(reply) == V1_KEYS
    mask = np.zeros((6, 8), bool)
    mask[1:5, 1:7] = img[1:5, 1:7, 0] > 127
    rebuilt = segment_response("r", width=8, height=6, mask_base64=encode_mask(mask), score=0.5,
                               image_id=reply["imageId"], cached=False, timings={})
    rebuilt["inferenceTimeMs"], rebuilt["timingsMs"] = reply["inferenceTimeMs"], reply["timingsMs"]
    assert orjson.dumps(reply) == orjson.dumps(rebuilt)


@pytest.mark.parametrize("encoding,key", [("raw", "maskBase64"), ("rle", "maskRle"),
                                          ("png", "maskPng")])
def test_extended_reply_in_each_encoding(encoding, key):
    img, text = png(4)
    old, new = answer([seg(imageBase64=text, bbox=BOX), seg(imageBase64=text, bbox=BOX,
                                                         maskEncoding=encoding)])
    assert list(new)[:len(V1_KEYS)] == V1_KEYS
    assert new["maskEncoding"] == encoding and new["maskId"].startswith("m")
    assert (new["maskBase64"] == "") == (encoding != "raw") and key in new
    assert np.array_equal(decode_any_mask(new, 8, 6), decode_any_mask(old, 8, 6))


def test_multimask_candidates_best_first_and_boxes_masks_in_order():
    img, text = png(5)
    engine = FakeEngine()
    boxes = [{"x1": 0, "y1": 0, "x2": 4, "y2": 6}, {"x1": 4, "y1": 0, "x2": 8, "y2": 3}]
    multi, batch = answer([seg(imageBase64=text, bbox=BOX, multimask=True, maskEncoding="rle"),
                           seg(imageBase64=text, boxes=boxes, maskEncoding="png")], engine)
    assert [c["score"] for c in multi["candidates"]] == pytest.approx([0.9, 0.7, 0.5])
    assert multi["score"] == pytest.approx(0.9) and multi["maskId"] == multi["candidates"][0]["maskId"]
    assert multi["maskRle"] == multi["candidates"][0]["maskRle"]
    assert len(batch["masks"]) == 2 and batch["score"] == 0.5
    parts = [decode_any_mask(m, 8, 6) for m in batch["masks"]]
    assert not parts[0][:, 4:].any() and not parts[1][3:, :].any()
    assert np.array_equal(decode_any_mask(batch, 8, 6), np.maximum(*parts))
    assert len({batch["maskId"], *(m["maskId"] for m in batch["masks"])}) == 3


def converse(steps, engine, **settings) -> list[dict]:
    """Each step (a function of the replies so far, returning the next request) through one
    dispatcher, in order; returns the replies."""
    import asyncio
    import time

    async def main():
        cfg = ServiceConfig(warmup=False, **settings)
        worker = InferenceWorker(engine, cfg.max_image_pixels, cache_bytes=10**6,
                                 logits_entries=cfg.logits_cache_entries)
        d = Dispatcher(cfg, worker)
        replies: list[dict] = []
        try:
            for step in steps:
                replies.append(await d.respond(orjson.dumps(step(replies)), time.monotonic()))
            return replies
        finally:
            worker.close()

    return asyncio.run(main())


def test_mask_input_passes_the_kept_logits_or_is_unknown_mask():
    img, text = png(6)
    _, other = png(7)
    engine = FakeEngine()
    first, refined, elsewhere, unknown, _, released = converse([
        lambda r: seg(imageBase64=text, bbox=BOX, maskEncoding="raw"),
        lambda r: seg(imageBase64=text, bbox=BOX, maskInput=r[0]["maskId"]),
        lambda r: seg(imageBase64=other, bbox=BOX, maskInput=r[0]["maskId"]),
        lambda r: seg(imageBase64=text, bbox=BOX, maskInput="m" + "0" * 32),
        lambda r: {"op": "release", "imageId": r[0]["imageId"]},
        lambda r: seg(imageBase64=text, bbox=BOX, maskInput=r[1]["maskId"]),
    ], engine)
    assert "error" not in refined, refined
    assert refined["maskId"] != first["maskId"]
    rows, cols = np.arange(256) * 6 // 256, np.arange(256) * 8 // 256
    expected = np.where(decode_any_mask(first, 8, 6)[rows][:, cols] > 0, 1.0, -1.0)
    assert engine.mask_inputs[0] is None
    assert np.array_equal(engine.mask_inputs[1], expected[None])
    for reply in (elsewhere, unknown, released):
        assert reply["code"] == "unknown_mask" and "maskInput" in reply["error"], reply


def test_unknown_mask_fails_before_encoding_a_new_image():
    _, text = png(9)
    engine = FakeEngine()
    (reply,) = answer([seg(imageBase64=text, bbox=BOX, maskInput="m" + "1" * 32)], engine)
    assert reply["code"] == "unknown_mask" and engine.embeds == 0


def test_evicted_mask_is_unknown_mask():
    img, text = png(8)
    replies = converse([
        lambda r: seg(imageBase64=text, bbox=BOX, maskEncoding="rle"),
        lambda r: seg(imageBase64=text, bbox=BOX, maskEncoding="rle"),
        lambda r: seg(imageBase64=text, bbox=BOX, maskInput=r[0]["maskId"]),
        lambda r: seg(imageBase64=text, bbox=BOX, maskInput=r[1]["maskId"]),
    ], FakeEngine(), logits_cache_entries=1)
    assert replies[2]["code"] == "unknown_mask"
    assert "error" not in replies[3], replies[3]


def test_info_lists_encodings_features_and_limits():
    (info,) = answer([{"op": "info"}], max_boxes=5)
    assert info["maskEncodings"] == ["raw", "rle", "png"]
    assert {"maskEncoding", "multimask", "boxes", "maskInput", "maskId", "objectMasks",
            "video"} <= set(info["features"])
    assert info["limits"]["maxBoxes"] == 5 and info["limits"]["logitsCacheEntries"] == 256
