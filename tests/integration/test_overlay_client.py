"""End-to-end test of a client written only from docs/protocol.md.

The client below mimics the macOS overlay app: one new Unix-socket connection per request,
one frame out (4-byte little-endian length + UTF-8 JSON object), exactly one frame back, close.
Every reply, success or error, is decoded into one strict struct, the way a Swift ``Codable``
struct would decode it. Nothing here imports ``sam2_service``.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pytest
from PIL import Image

from .conftest import encode_image, reference_inference

TIMEOUT_S = 120.0


# --------------------------------------------------------------------------- client


class ProtocolError(Exception):
    """The reply could not be read or decoded strictly."""


@dataclass(frozen=True)
class OverlayReply:
    """The overlay app's single reply struct (Swift Codable style)."""

    requestId: str
    maskWidth: int
    maskHeight: int
    maskBase64: str
    inferenceTimeMs: Optional[float] = None
    error: Optional[str] = None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


def decode_strict(obj: Any) -> OverlayReply:
    """Decode a reply object into ``OverlayReply``; raise on a missing or mistyped field.

    Unknown keys are ignored (as Codable does); an optional key that is present must have the
    right type (``null`` is accepted as absent, as for a Swift optional).
    """
    if not isinstance(obj, dict):
        raise ProtocolError(f"reply is not a JSON object: {type(obj).__name__}")
    def _is_str(v: Any) -> bool:
        return isinstance(v, str)

    required = {"requestId": (_is_str, "string"), "maskWidth": (_is_int, "integer"),
                "maskHeight": (_is_int, "integer"), "maskBase64": (_is_str, "string")}
    for key, (check, what) in required.items():
        if key not in obj:
            raise ProtocolError(f"required field {key!r} missing in {sorted(obj)}")
        val = obj[key]
        if not check(val):
            raise ProtocolError(f"field {key!r} must be {what}, got {type(val).__name__}: {val!r}")
    inference = obj.get("inferenceTimeMs")
    if inference is not None and not _is_number(inference):
        raise ProtocolError(f"field 'inferenceTimeMs' must be a number, got {inference!r}")
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        raise ProtocolError(f"field 'error' must be a string, got {error!r}")
    return OverlayReply(
        requestId=obj["requestId"],
        maskWidth=obj["maskWidth"],
        maskHeight=obj["maskHeight"],
        maskBase64=obj["maskBase64"],
        inferenceTimeMs=None if inference is None else float(inference),
        error=error,
    )


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProtocolError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def overlay_request(socket_path: str, request: dict) -> dict:
    """New connection, one frame out, exactly one frame back, close. Returns the raw object."""
    payload = json.dumps(request).encode("utf-8")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT_S)
        s.connect(socket_path)
        s.sendall(struct.pack("<I", len(payload)) + payload)
        (n,) = struct.unpack("<I", _recv_exact(s, 4))
        body = _recv_exact(s, n)
    obj = json.loads(body.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ProtocolError(f"reply payload is not a JSON object: {obj!r}")
    return obj


def segment_request(width: int, height: int, image_b64: str, **extra: Any) -> dict:
    return {"width": width, "height": height, "imageBase64": image_b64, **extra}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def assert_error_reply(obj: dict, request_id: Optional[str], code: str) -> OverlayReply:
    reply = decode_strict(obj)
    if request_id is not None:
        assert reply.requestId == request_id, obj
    else:
        assert reply.requestId, obj
    assert reply.error, obj
    assert reply.maskWidth == 0 and reply.maskHeight == 0 and reply.maskBase64 == "", obj
    assert obj.get("code") == code, obj
    return reply


# --------------------------------------------------------------------------- tests


def _small_png() -> tuple[bytes, int, int]:
    """A cheap 64x48 PNG for requests that must fail before the model runs."""
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    return encode_image(arr, "PNG"), 64, 48


@pytest.mark.model
def test_overlay_segment_matches_reference(daemon, reference_model) -> None:
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from skimage import data

    image = data.coffee()
    assert image.shape == (400, 600, 3)
    png_bytes = encode_image(image, "PNG")
    request = segment_request(600, 400, b64(png_bytes), requestId="overlay-1",
                              bbox={"x1": 100, "y1": 50, "x2": 400, "y2": 300})
    obj = overlay_request(daemon.socket_path, request)

    reply = decode_strict(obj)
    assert reply.error is None, obj
    assert "code" not in obj, obj
    assert reply.requestId == "overlay-1"
    assert reply.maskWidth == 600
    assert reply.maskHeight == 400
    mask_bytes = base64.b64decode(reply.maskBase64, validate=True)
    assert len(mask_bytes) == 600 * 400
    mask = np.frombuffer(mask_bytes, dtype=np.uint8).reshape(400, 600)  # row-major, top row first
    assert set(np.unique(mask).tolist()) <= {0, 255}

    predictor = SAM2ImagePredictor(reference_model)
    with reference_inference():
        predictor.set_image(np.array(Image.open(io.BytesIO(png_bytes)).convert("RGB")))
        masks, scores, _ = predictor.predict(box=np.array([100, 50, 400, 300], dtype=np.float32),
                                             multimask_output=False)
    ref = masks[0] > 0
    got = mask > 0
    assert ref.shape == got.shape
    assert iou(got, ref) >= 0.99, f"foreground IoU {iou(got, ref):.4f}"
    assert iou(~got, ~ref) >= 0.99, f"background IoU {iou(~got, ~ref):.4f}"
    if "score" in obj:
        score = obj["score"]
        assert isinstance(score, (int, float)) and not isinstance(score, bool), obj
        assert abs(float(score) - float(scores[0])) < 1e-3, (score, float(scores[0]))


@pytest.mark.model
def test_overlay_error_replies_decode_strictly(daemon) -> None:
    png, w, h = _small_png()

    inverted = segment_request(w, h, b64(png), requestId="overlay-inverted",
                               bbox={"x1": 40, "y1": 5, "x2": 10, "y2": 30})
    reply = assert_error_reply(overlay_request(daemon.socket_path, inverted),
                               "overlay-inverted", "invalid_request")
    assert "bbox" in reply.error, reply.error  # the doc: `error` names the field at fault

    wrong_width = segment_request(w + 1, h, b64(png), requestId="overlay-width")
    reply = assert_error_reply(overlay_request(daemon.socket_path, wrong_width),
                               "overlay-width", "invalid_request")
    assert "width" in reply.error, reply.error


@pytest.mark.model
def test_overlay_reply_without_request_id_gets_made_up_id(daemon) -> None:
    obj = overlay_request(daemon.socket_path, segment_request(64, 48, "!!!"))
    reply = assert_error_reply(obj, None, "image_decode")
    assert isinstance(reply.requestId, str) and reply.requestId
    # The doc: a made-up id is "srv-" followed by 16 hex digits.
    assert re.fullmatch(r"srv-[0-9a-fA-F]{16}", reply.requestId), reply.requestId
