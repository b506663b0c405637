"""Issue 13 against the real daemon and SAM2 (random-weight SAM2.1-tiny): each mask encoding
decodes to the raw mask, ``candidates`` equal ``SAM2ImagePredictor.predict(multimask_output=
True)`` sorted by score, each batched box equals a single-box predict, a two-step refinement
equals ``predict(..., mask_input=<best logits of step one>)``, ``unknown_mask``, the box limit,
and an old-style request still gets the version 1 reply byte for byte."""

from __future__ import annotations

import base64
import io

import numpy as np
import orjson
import pytest
import skimage.data
from PIL import Image

from sam2_service.client import Client
from sam2_service.wire.codecs import decode_any_mask, encode_mask
from sam2_service.wire.schema import segment_response

from .conftest import encode_image, reference_inference

pytestmark = pytest.mark.model

V1_KEYS = ["requestId", "maskWidth", "maskHeight", "maskBase64", "score", "imageId", "cached",
           "inferenceTimeMs", "timingsMs"]
W, H = 600, 400  # skimage.data.coffee
BOX = {"x1": 100, "y1": 50, "x2": 400, "y2": 300}
POINT = {"x": 300, "y": 200, "label": 1}


@pytest.fixture(scope="module")
def image() -> bytes:
    return encode_image(skimage.data.coffee(), "PNG")


@pytest.fixture(scope="module")
def reference(reference_model, image):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    p = SAM2ImagePredictor(reference_model)
    with reference_inference():
        p.set_image(np.array(Image.open(io.BytesIO(image)).convert("RGB")))
    return p


@pytest.fixture(scope="module")
def ask(daemon, image):
    """Send a segment request for the coffee image (by bytes the first time, then by id)."""
    client = Client(daemon.socket_path)
    first = client.request({"requestId": "embed", "width": W, "height": H,
                            "imageBase64": base64.b64encode(image).decode(), "bbox": BOX})
    assert "error" not in first, first
    image_id = first["imageId"]

    def send(**fields):
        return client.request({"requestId": "r", "width": W, "height": H, "imageId": image_id,
                               **fields})

    yield send
    client.close()


def predict(reference, **kwargs):
    args = {k: np.asarray(v, dtype=np.int32 if k == "point_labels" else np.float32)
            if isinstance(v, list) else v for k, v in kwargs.items()}
    with reference_inference():
        masks, scores, logits = reference.predict(**args)
    return masks > 0, scores, logits


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def same_mask(got: np.ndarray, expected: np.ndarray) -> None:
    got = got > 0
    assert iou(got, expected) >= 0.99 and iou(~got, ~expected) >= 0.99, iou(got, expected)


def test_old_style_reply_is_the_v1_reply_byte_for_byte(ask):
    old = ask(bbox=BOX)
    raw = ask(bbox=BOX, maskEncoding="raw")
    assert list(old) == V1_KEYS
    rebuilt = segment_response(old["requestId"], width=W, height=H,
                               mask_base64=encode_mask(decode_any_mask(raw, W, H)),
                               score=raw["score"], image_id=raw["imageId"], cached=True,
                               timings={})
    rebuilt["inferenceTimeMs"], rebuilt["timingsMs"] = old["inferenceTimeMs"], old["timingsMs"]
    assert orjson.dumps(old) == orjson.dumps(rebuilt)


def test_every_encoding_decodes_to_the_raw_mask(ask):
    replies = {enc: ask(points=[POINT, {"x": 50, "y": 30, "label": 0}], maskEncoding=enc)
               for enc in ("raw", "rle", "png")}
    raw = decode_any_mask(replies["raw"], W, H)
    assert raw.any() and not raw.all()
    for enc, reply in replies.items():
        assert "error" not in reply, reply
        assert (reply["maskWidth"], reply["maskHeight"]) == (W, H)
        assert (reply["maskBase64"] == "") == (enc != "raw")
        assert np.array_equal(decode_any_mask(reply, W, H), raw), enc
        assert reply["score"] == replies["raw"]["score"]


def test_candidates_equal_sam2_multimask_sorted_by_score(ask, reference):
    reply = ask(bbox=BOX, multimask=True, maskEncoding="rle")
    masks, scores, _ = predict(reference, box=[100, 50, 400, 300], multimask_output=True)
    order = np.argsort(-scores)
    assert len(reply["candidates"]) == 3
    for cand, i in zip(reply["candidates"], order):
        same_mask(decode_any_mask(cand, W, H), masks[i])
        assert cand["score"] == pytest.approx(float(scores[i]), abs=1e-3)
    assert reply["score"] == reply["candidates"][0]["score"]
    assert reply["maskRle"] == reply["candidates"][0]["maskRle"]


def test_each_batched_box_equals_a_single_box_predict(ask, reference):
    boxes = [BOX, {"x1": 0, "y1": 0, "x2": 250, "y2": 200}, {"x1": 350, "y1": 100, "x2": 600,
                                                            "y2": 400}]
    reply = ask(boxes=boxes, maskEncoding="png")
    assert "error" not in reply, reply
    got = [decode_any_mask(m, W, H) for m in reply["masks"]]
    for b, mask, entry in zip(boxes, got, reply["masks"]):
        expected, scores, _ = predict(reference, box=[b["x1"], b["y1"], b["x2"], b["y2"]],
                                      multimask_output=False)
        same_mask(mask, expected[0])
        assert entry["score"] == pytest.approx(float(scores[0]), abs=1e-3)
    assert np.array_equal(decode_any_mask(reply, W, H), np.maximum.reduce(got))
    assert reply["score"] == min(m["score"] for m in reply["masks"])


def test_refinement_equals_predict_with_the_best_logits(ask, reference):
    step1 = ask(points=[POINT], maskEncoding="rle")
    masks, scores, logits = predict(reference, point_coords=[[300, 200]], point_labels=[1],
                                    multimask_output=True)
    best = int(np.argmax(scores))
    same_mask(decode_any_mask(step1, W, H), masks[best])
    points = [POINT, {"x": 320, "y": 120, "label": 0}]
    step2 = ask(points=points, maskInput=step1["maskId"], maskEncoding="rle")
    assert "error" not in step2, step2
    expected, scores2, _ = predict(reference, point_coords=[[300, 200], [320, 120]],
                                   point_labels=[1, 0], mask_input=logits[best][None],
                                   multimask_output=False)
    same_mask(decode_any_mask(step2, W, H), expected[0])
    assert step2["score"] == pytest.approx(float(scores2[0]), abs=1e-3)
    without, _, _ = predict(reference, point_coords=[[300, 200], [320, 120]],
                            point_labels=[1, 0], multimask_output=False)
    assert iou(without[0], expected[0]) < 0.999  # the mask input changed the answer


def test_unknown_mask_and_mask_of_another_image(daemon, ask):
    assert ask(bbox=BOX, maskInput="m" + "0" * 32)["code"] == "unknown_mask"
    small = np.full((48, 64, 3), 90, np.uint8)
    with Client(daemon.socket_path) as client:
        other = client.request({"requestId": "o", "width": 64, "height": 48, "maskEncoding": "rle",
                                "imageBase64": base64.b64encode(encode_image(small, "PNG")).decode()})
    assert "error" not in other, other
    reply = ask(bbox=BOX, maskInput=other["maskId"])
    assert reply["code"] == "unknown_mask" and reply["requestId"] == "r"
    assert "maskInput" in reply["error"]


def test_limits_and_conflicts(ask):
    box = {"x1": 0, "y1": 0, "x2": 10, "y2": 10}
    too_many = ask(boxes=[box] * 65)  # --max-boxes default 64
    assert too_many["code"] == "invalid_request" and "boxes" in too_many["error"]
    assert "64" in too_many["error"] and too_many["requestId"] == "r"
    both = ask(boxes=[box], points=[POINT])
    assert both["code"] == "invalid_request" and "points cannot be combined" in both["error"]
    bad_box = ask(boxes=[box, {"x1": 5, "y1": 5, "x2": 1, "y2": 9}])
    assert bad_box["code"] == "invalid_request" and "boxes[1]" in bad_box["error"]


def test_client_and_cli_use_every_option(daemon, image, tmp_path, capsys):
    from sam2_service import cli

    with Client(daemon.socket_path) as client:
        raw = client.segment(image, bbox=(100, 50, 400, 300))
        masks = {enc: client.segment(image, bbox=(100, 50, 400, 300), encoding=enc)
                 for enc in ("raw", "rle", "png")}
        multi = client.segment(image, bbox=(100, 50, 400, 300), multimask=True, encoding="rle")
        boxes = client.segment(image, boxes=[(100, 50, 400, 300), (0, 0, 250, 200)],
                               encoding="png")
        refined = client.segment(image, points=[(300, 200), (320, 120, 0)], encoding="rle",
                                 mask_input=multi.mask_id)
    assert raw.mask_id is None
    for enc, result in masks.items():
        assert result.mask.dtype == np.uint8 and np.array_equal(result.mask, raw.mask), enc
        assert result.mask_id
    assert len(multi.candidates) == 3 and np.array_equal(multi.mask, multi.candidates[0].mask)
    assert [c.score for c in multi.candidates] == sorted((c.score for c in multi.candidates),
                                                         reverse=True)
    assert len(boxes.masks) == 2
    assert np.array_equal(boxes.mask, np.maximum(boxes.masks[0].mask, boxes.masks[1].mask))
    assert refined.mask_id and refined.mask_id != multi.mask_id
    path = tmp_path / "coffee.png"
    path.write_bytes(image)
    out = tmp_path / "mask.png"
    code = cli.main(["segment", "--socket", daemon.socket_path, "--image", str(path),
                     "--encoding", "rle", "--box", "100,50,400,300", "--box", "-10,0,250,200",
                     "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "maskId=m" in printed and "box[1] score=" in printed
    assert np.array_equal(np.asarray(Image.open(out)) > 0, boxes.mask > 0)
    code = cli.main(["segment", "--socket", daemon.socket_path, "--image", str(path),
                     "--multimask", "--bbox", "100,50,400,300", "--mask-input", "m" + "0" * 32])
    assert code == 1 and "unknown_mask" in capsys.readouterr().err


def test_async_client_takes_the_options(daemon, image):
    import asyncio

    from sam2_service.client import AsyncClient

    async def main():
        async with AsyncClient(daemon.socket_path) as client:
            return await client.segment(image, bbox=(100, 50, 400, 300), encoding="png",
                                        multimask=True)

    result = asyncio.run(main())
    assert result.mask.shape == (H, W) and len(result.candidates) == 3 and result.mask_id
