"""Typed requests and responses of wire protocol v1 (docs/protocol.md).

:func:`parse_request` turns a decoded JSON object into a frozen request dataclass,
checking types and shapes and naming the field at fault; geometry against the image
(inverted boxes, points outside the image) is checked later by :mod:`sam2_service.prompts`,
once the image size is known. The ``*_response`` functions build the JSON objects sent
back. Unknown fields are ignored, so that clients may add fields of their own.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any, Union

from .errors import InvalidRequest, UnknownOp

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Point:
    """A point prompt: (x, y) in pixels, x right and y down from the top-left corner;
    label 1 foreground, 0 background (SAM2's ``point_labels``)."""

    x: float
    y: float
    label: int


@dataclass(frozen=True)
class BBox:
    """A box prompt in XYXY pixels: (x1, y1) top-left, (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class SegmentRequest:
    """``op`` absent or ``"segment"``: segment one image with a box and/or points.

    ``width`` and ``height`` are what the client says the image is; the daemon checks
    them against the decoded image. ``image_base64`` is still encoded (plain base64 or a
    ``data:image/...;base64,`` URL); :mod:`sam2_service.imaging` decodes it.
    """

    request_id: str
    width: int
    height: int
    image_base64: str
    bbox: BBox | None
    points: tuple[Point, ...]


@dataclass(frozen=True)
class PingRequest:
    """``{"op": "ping"}``: liveness check, answered without touching the model."""

    request_id: str


@dataclass(frozen=True)
class InfoRequest:
    """``{"op": "info"}``: model, checkpoint, device, dtype and versions."""

    request_id: str


Request = Union[SegmentRequest, PingRequest, InfoRequest]


def new_request_id() -> str:
    """A request id made up by the daemon, for requests that carry no readable one."""
    return "srv-" + uuid.uuid4().hex[:16]


def read_request_id(obj: Any) -> str:
    """The request's ``requestId`` if it is a non-empty string, else a made-up one.

    Never raises: this is what error responses carry, even for requests that fail to parse.
    """
    rid = obj.get("requestId") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and rid else new_request_id()


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _number(obj: dict[str, Any], key: str, path: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{path} must be a number, got {_type_name(value)}", field=path)
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range (stdlib json can produce one)
        number = math.inf
    if not math.isfinite(number):
        raise InvalidRequest(f"{path} must be a finite number, got {str(value)[:24]}", field=path)
    return number


def _positive_int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{key} must be an integer, got {_type_name(value)}", field=key)
    if value <= 0:
        raise InvalidRequest(f"{key} must be positive, got {value}", field=key)
    return value


def _parse_bbox(value: Any) -> BBox | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"bbox must be an object {{x1,y1,x2,y2}}, got {_type_name(value)}",
                             field="bbox")
    return BBox(*(_number(value, k, f"bbox.{k}") for k in ("x1", "y1", "x2", "y2")))


def _parse_points(value: Any, max_points: int) -> tuple[Point, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest(f"points must be a list of {{x, y, label}}, got {_type_name(value)}",
                             field="points")
    if len(value) > max_points:
        raise InvalidRequest(f"points has {len(value)} entries, more than the limit of {max_points}",
                             field="points")
    points = []
    for i, p in enumerate(value):
        path = f"points[{i}]"
        if not isinstance(p, dict):
            raise InvalidRequest(f"{path} must be an object {{x, y, label}}, got {_type_name(p)}",
                                 field=path)
        label = p.get("label", 1)
        if isinstance(label, bool) or label not in (0, 1):
            raise InvalidRequest(f"{path}.label must be 0 (background) or 1 (foreground), "
                                 f"got {label!r}", field=f"{path}.label")
        points.append(Point(_number(p, "x", f"{path}.x"), _number(p, "y", f"{path}.y"), int(label)))
    return tuple(points)


def parse_request(obj: dict[str, Any], *, max_points: int) -> Request:
    """Validate a decoded JSON object and return the typed request.

    Args:
        obj: the frame's JSON object (see :func:`sam2_service.protocol.decode_message`).
        max_points: the most point prompts accepted in one request.

    Raises:
        UnknownOp: ``op`` is a string other than segment, ping or info.
        InvalidRequest: a field is missing or has the wrong type; the message names it.
    """
    request_id = read_request_id(obj)
    if "requestId" in obj and not isinstance(obj["requestId"], str):
        raise InvalidRequest(f"requestId must be a string, got {_type_name(obj['requestId'])}",
                             field="requestId")
    op = obj.get("op", "segment")
    if not isinstance(op, str):
        raise InvalidRequest(f"op must be a string, got {_type_name(op)}", field="op")
    if op == "ping":
        return PingRequest(request_id)
    if op == "info":
        return InfoRequest(request_id)
    if op != "segment":
        raise UnknownOp(f"op {op!r} is not one of segment, ping, info", field="op")
    image = obj.get("imageBase64")
    if not isinstance(image, str) or not image:
        raise InvalidRequest("imageBase64 must be a non-empty string (base64 PNG/JPEG or data URL), "
                             f"got {_type_name(image) if not isinstance(image, str) else 'empty string'}",
                             field="imageBase64")
    return SegmentRequest(
        request_id=request_id,
        width=_positive_int(obj, "width"),
        height=_positive_int(obj, "height"),
        image_base64=image,
        bbox=_parse_bbox(obj.get("bbox")),
        points=_parse_points(obj.get("points"), max_points),
    )


def segment_response(request_id: str, *, width: int, height: int, mask_base64: str,
                     score: float, inference_time_ms: float) -> dict[str, Any]:
    """A successful segment reply. ``mask_base64`` encodes width*height bytes, 0 or 255,
    row-major, top row first; ``score`` is SAM2's IoU prediction for that mask."""
    return {
        "requestId": request_id,
        "maskWidth": width,
        "maskHeight": height,
        "maskBase64": mask_base64,
        "score": score,
        "inferenceTimeMs": round(inference_time_ms, 3),
    }


def error_response(request_id: str, code: str, message: str) -> dict[str, Any]:
    """An error reply; carries empty mask fields so that a client decoding every reply
    into one strict struct (requestId, maskWidth, maskHeight, maskBase64) can read it."""
    return {
        "requestId": request_id,
        "error": message,
        "code": code,
        "maskWidth": 0,
        "maskHeight": 0,
        "maskBase64": "",
    }


def ping_response(request_id: str) -> dict[str, Any]:
    """The reply to ``{"op": "ping"}``."""
    return {"requestId": request_id, "ok": True}
