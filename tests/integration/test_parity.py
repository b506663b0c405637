"""End to end: real photos through the real daemon process, masks compared with
``SAM2ImagePredictor`` called directly with the same weights and prompts."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from sam2_service.client import Client

from .conftest import encode_image, reference_inference

pytestmark = pytest.mark.model

IMAGES = {"coffee": skimage.data.coffee, "chelsea": skimage.data.chelsea}  # 600x400, 451x300
FORMATS = {"coffee": "PNG", "chelsea": "JPEG"}

# (id, image, data_url, wire prompt, SAM2 predict kwargs)
CASES = [
    ("box", "coffee", False, {"bbox": {"x1": 100, "y1": 50, "x2": 400, "y2": 300}},
     {"box": [100, 50, 400, 300], "multimask_output": False}),
    ("fg_bg_points", "coffee", False,
     {"points": [{"x": 300, "y": 200, "label": 1}, {"x": 50, "y": 30, "label": 0}]},
     {"point_coords": [[300, 200], [50, 30]], "point_labels": [1, 0], "multimask_output": False}),
    ("whole_image", "coffee", False, {},
     {"box": [0, 0, 600, 400], "multimask_output": False}),
    ("box_and_point", "chelsea", True,
     {"bbox": {"x1": 120.5, "y1": 40, "x2": 330, "y2": 260}, "points": [{"x": 220, "y": 150, "label": 1}]},
     {"box": [120.5, 40, 330, 260], "point_coords": [[220, 150]], "point_labels": [1],
      "multimask_output": False}),
    ("single_point", "chelsea", True, {"points": [{"x": 200, "y": 120, "label": 1}]},
     {"point_coords": [[200, 120]], "point_labels": [1], "multimask_output": True}),
]


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    return {name: encode_image(load(), FORMATS[name]) for name, load in IMAGES.items()}


@pytest.fixture(scope="module")
def references(reference_model, encoded):
    """One SAM2ImagePredictor per image, its embedding computed once, from the same bytes
    the daemon receives (so JPEG decoding is identical)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    preds = {}
    for name, data in encoded.items():
        p = SAM2ImagePredictor(reference_model)
        with reference_inference():
            p.set_image(np.array(Image.open(io.BytesIO(data)).convert("RGB")))
        preds[name] = p
    return preds


def reference_mask(predictor, kwargs) -> tuple[np.ndarray, float]:
    args = {k: np.asarray(v, dtype=np.float32 if k != "point_labels" else np.int32)
            if isinstance(v, list) else v for k, v in kwargs.items()}
    with reference_inference():
        masks, scores, _ = predictor.predict(**args)
    best = int(np.argmax(scores))
    return masks[best] > 0, float(scores[best])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mask_matches_sam2_image_predictor(daemon, encoded, references, case):
    case_id, name, data_url, prompt, kwargs = case
    data = encoded[name]
    b64 = base64.b64encode(data).decode()
    if data_url:
        b64 = f"data:image/{FORMATS[name].lower()};base64,{b64}"
    height, width = IMAGES[name]().shape[:2]
    request = {"requestId": f"parity-{case_id}", "width": width, "height": height,
               "imageBase64": b64, **prompt}
    with Client(daemon.socket_path) as client:
        reply = client.request(request)
    assert "error" not in reply, reply
    assert reply["requestId"] == f"parity-{case_id}"
    assert (reply["maskWidth"], reply["maskHeight"]) == (width, height)
    raw = base64.b64decode(reply["maskBase64"])
    assert len(raw) == width * height
    mask = np.frombuffer(raw, np.uint8).reshape(height, width)
    assert set(np.unique(mask)) <= {0, 255}

    expected, score = reference_mask(references[name], kwargs)
    got = mask > 0
    assert iou(got, expected) >= 0.99, f"foreground IoU {iou(got, expected):.4f}"
    assert iou(~got, ~expected) >= 0.99, f"background IoU {iou(~got, ~expected):.4f}"
    assert reply["score"] == pytest.approx(score, abs=1e-3)
    assert reply["inferenceTimeMs"] > 0


def test_prompts_change_the_mask(references):
    """Guards the parity test against a degenerate model: different prompts on the same
    random-weight model must give different masks, or parity would prove little."""
    a, _ = reference_mask(references["coffee"], CASES[0][4])
    b, _ = reference_mask(references["coffee"], CASES[1][4])
    assert iou(a, b) < 0.99
