"""The embedding cache through the real daemon and model: cached answers equal uncached
ones and SAM2ImagePredictor's, imageId requests, unknown_image, embed and release, and the
client's automatic send-by-id. Each test uses its own image so that the shared daemon's
cache state from other tests cannot matter."""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import orjson
import pytest
import skimage.data
from PIL import Image

from sam2_service.client import Client, ImageRef, RequestFailed

from .conftest import encode_image, reference_inference

pytestmark = pytest.mark.model


def small(image: np.ndarray, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    return np.array(Image.fromarray(image).resize((width, round(h * width / w)), Image.BILINEAR))


def segment(client: Client, **fields) -> dict:
    reply = client.request({"requestId": "c", **fields})
    assert "error" not in reply, reply
    return reply


def test_cached_answers_equal_the_uncached_one_and_sam2(daemon, reference_model):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    image = small(skimage.data.astronaut(), 320)
    png = encode_image(image, "PNG")
    h, w = image.shape[:2]
    box = {"x1": 60, "y1": 20, "x2": 250, "y2": 300}
    b64 = base64.b64encode(png).decode()
    with Client(daemon.socket_path) as c:
        cold = segment(c, width=w, height=h, imageBase64=b64, bbox=box)
        resent = segment(c, width=w, height=h, imageBase64=b64, bbox=box)
        by_id = segment(c, width=w, height=h, imageId=cold["imageId"], bbox=box)
        point = segment(c, width=w, height=h, imageId=cold["imageId"],
                        points=[{"x": 150, "y": 120, "label": 1}])
    assert cold["imageId"] == hashlib.sha256(png).hexdigest()
    assert (cold["cached"], resent["cached"], by_id["cached"]) == (False, True, True)
    assert resent["maskBase64"] == cold["maskBase64"] == by_id["maskBase64"]
    assert resent["score"] == cold["score"] == by_id["score"]
    assert set(cold["timingsMs"]) == {"decode", "encode", "predict", "mask", "queue", "total"}
    assert cold["timingsMs"]["encode"] > 0 and by_id["timingsMs"]["encode"] == 0
    assert by_id["timingsMs"]["total"] < cold["timingsMs"]["total"]

    predictor = SAM2ImagePredictor(reference_model)
    with reference_inference():
        predictor.set_image(np.array(Image.open(io.BytesIO(png)).convert("RGB")))
        masks, scores, _ = predictor.predict(point_coords=np.array([[150, 120]], np.float32),
                                             point_labels=np.array([1], np.int32),
                                             multimask_output=True)
    best = int(np.argmax(scores))
    got = np.frombuffer(base64.b64decode(point["maskBase64"]), np.uint8).reshape(h, w) > 0
    expected = masks[best] > 0
    # an object and a background in both, so that the IoU below compares real masks
    assert 0 < expected.sum() < expected.size and 0 < got.sum() < got.size
    inter, union = (got & expected).sum(), (got | expected).sum()
    assert inter / union >= 0.99
    assert point["score"] == pytest.approx(float(scores[best]), abs=1e-3)


def test_unknown_image_id_is_an_error_naming_imageId(daemon):
    with Client(daemon.socket_path) as c:
        reply = c.request({"requestId": "u1", "width": 10, "height": 10, "imageId": "e" * 64})
        assert c.ping()["ok"] is True
    assert reply["code"] == "unknown_image" and reply["requestId"] == "u1"
    assert "imageId" in reply["error"] and reply["maskBase64"] == ""


def test_embed_release_and_the_clients_automatic_resend(daemon):
    image = np.ascontiguousarray(small(skimage.data.coffee(), 300)[::-1])  # upside down: new
    h, w = image.shape[:2]
    with Client(daemon.socket_path) as c:
        ref = c.embed(image)
        assert isinstance(ref, ImageRef) and (ref.width, ref.height) == (w, h)
        assert ref.cached is False and c.embed(image).cached is True
        by_ref = c.segment(ref, bbox=(10, 10, 200, 150))
        assert by_ref.cached and by_ref.image_id == ref.image_id
        assert c.release(ref) is True and c.release(ref) is False
        with pytest.raises(RequestFailed) as info:
            c.segment(ref, bbox=(10, 10, 200, 150))
        assert info.value.code == "unknown_image"
        again = c.segment(image, bbox=(10, 10, 200, 150), request_id="resend-1")
        assert again.cached is False  # released, so the client sent the image
        np.testing.assert_array_equal(again.mask, by_ref.mask)
        by_id = c.segment(image, bbox=(10, 10, 200, 150), request_id="by-id-1")
        assert by_id.cached is True
    received = [orjson.loads(line) for line in daemon.log_path.read_text().splitlines()
                if '"Received request"' in line]
    sent = {r["requestId"]: r for r in received if r["requestId"] in ("resend-1", "by-id-1")}
    assert sent["resend-1"]["imageId"] is None and sent["resend-1"]["imageChars"] > 1000
    assert sent["by-id-1"]["imageId"] == ref.image_id and sent["by-id-1"]["imageChars"] == 0
