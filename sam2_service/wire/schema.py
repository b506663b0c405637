"""Typed requests and responses of wire protocol v1 (docs/protocol.md).

:func:`parse_request` turns a decoded JSON object into a frozen request dataclass,
checking types and shapes and naming the field at fault; geometry against the image
(inverted boxes, points outside the image) is checked later by :mod:`sam2_service.daemon.inference.prompts`,
once the image size is known. The ``*_response`` functions build the JSON objects sent
back (the ``info`` reply is built by :func:`sam2_service.daemon.serving.dispatch.info_response`,
from the daemon's settings). Unknown fields are ignored, so that clients may add fields of
their own. The field validators shared with :mod:`.auto` are :mod:`.fields`'.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable, Union

from .auto import AutoRequest, parse_auto_request
from .errors import InvalidRequest, UnknownOp
from .fields import image_base64, image_id, number, positive_int, rounded_timings, type_name
from .video import (
    VIDEO_OPS,
    VideoAppend,
    VideoObjectRequest,
    VideoOpen,
    VideoPrompt,
    VideoPropagate,
    VideoSessionRequest,
    parse_video_request,
)

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
    them against the image. Exactly one of ``image_base64`` (still encoded: plain base64 or
    a ``data:image/...;base64,`` URL; :mod:`sam2_service.daemon.inference.imaging` decodes it) and
    ``image_id`` (an ``imageId`` from an earlier reply, 64 hex characters) is set.
    """

    request_id: str
    width: int
    height: int
    image_base64: str | None
    bbox: BBox | None
    points: tuple[Point, ...]
    image_id: str | None = None
    #: The protocol additions' options (docs/protocol.md, "Protocol additions"); all opt-in.
    #: ``maskEncoding``: a key of :data:`sam2_service.wire.codecs.MASK_ENCODINGS`.
    mask_encoding: str = "raw"
    #: ``multimask``: reply with SAM2's three candidates (``multimask_output=True``).
    multimask: bool = False
    #: ``boxes``: SAM2's batched box prompt, one mask per box (empty: not used).
    boxes: tuple[BBox, ...] = ()
    #: ``maskInput``: a ``maskId`` whose low-resolution logits go to SAM2 as ``mask_input``.
    mask_input: str | None = None
    #: True when the request used any of the options above (so its reply is the extended
    #: one, with ``maskId``); False keeps protocol v1's reply byte for byte.
    extended: bool = False


@dataclass(frozen=True)
class EmbedRequest:
    """``{"op": "embed"}``: compute (or find) an image's embedding and return its
    ``imageId``; no mask. ``width``/``height`` are optional here and checked when given."""

    request_id: str
    image_base64: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class ReleaseRequest:
    """``{"op": "release", "imageId": ...}``: drop that image's cached embedding."""

    request_id: str
    image_id: str


@dataclass(frozen=True)
class PingRequest:
    """``{"op": "ping"}``: liveness check, answered without touching the model."""

    request_id: str


@dataclass(frozen=True)
class InfoRequest:
    """``{"op": "info"}``: model, checkpoint, device, dtype and versions."""

    request_id: str


#: Every typed request :func:`parse_request` returns.
Request = Union[SegmentRequest, EmbedRequest, ReleaseRequest, PingRequest, InfoRequest,
                AutoRequest, VideoOpen, VideoAppend, VideoPrompt, VideoPropagate,
                VideoObjectRequest, VideoSessionRequest]
#: op name -> the request type :func:`parse_request` makes of it (a handler table's keys).
REQUEST_TYPES: dict[str, type] = {
    "segment": SegmentRequest, "embed": EmbedRequest, "release": ReleaseRequest,
    "ping": PingRequest, "info": InfoRequest, "auto": AutoRequest,
    "videoOpen": VideoOpen, "videoAppend": VideoAppend, "videoPrompt": VideoPrompt,
    "videoPropagate": VideoPropagate, "videoRemoveObject": VideoObjectRequest,
    "videoClearPrompts": VideoObjectRequest, "videoReset": VideoSessionRequest,
    "videoCancel": VideoSessionRequest, "videoClose": VideoSessionRequest,
}
#: The op names, in the order an ``unknown_op`` error lists them.
OPS = tuple(REQUEST_TYPES)


def new_request_id() -> str:
    """A request id made up by the daemon, for requests that carry no readable one."""
    return "srv-" + uuid.uuid4().hex[:16]


#: Longest ``requestId`` echoed and logged; a longer one is ``invalid_request`` (answered
#: under a made-up id), so that a client cannot make every reply and log line megabytes long.
MAX_REQUEST_ID_CHARS = 256


def read_request_id(obj: Any) -> str:
    """The request's ``requestId`` if it is a string of 1 to :data:`MAX_REQUEST_ID_CHARS`
    characters, else a made-up one (:func:`new_request_id`, a new one each call: read it once
    per request).

    Never raises: this is what error responses carry, even for requests that fail to parse.
    """
    rid = obj.get("requestId") if isinstance(obj, dict) else None
    if isinstance(rid, str) and 0 < len(rid) <= MAX_REQUEST_ID_CHARS:
        return rid
    return new_request_id()


def _parse_bbox(value: Any) -> BBox | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"bbox must be an object {{x1,y1,x2,y2}}, got {type_name(value)}",
                             field="bbox")
    return BBox(*(number(value, k, f"bbox.{k}") for k in ("x1", "y1", "x2", "y2")))


def _parse_points(value: Any, max_points: int) -> tuple[Point, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest(f"points must be a list of {{x, y, label}}, got {type_name(value)}",
                             field="points")
    if len(value) > max_points:
        raise InvalidRequest(f"points has {len(value)} entries, more than the limit of {max_points}",
                             field="points")
    points = []
    for i, p in enumerate(value):
        path = f"points[{i}]"
        if not isinstance(p, dict):
            raise InvalidRequest(f"{path} must be an object {{x, y, label}}, got {type_name(p)}",
                                 field=path)
        label = p.get("label", 1)
        if isinstance(label, bool) or label not in (0, 1):
            raise InvalidRequest(f"{path}.label must be 0 (background) or 1 (foreground), "
                                 f"got {label!r}", field=f"{path}.label")
        points.append(Point(number(p, "x", f"{path}.x"), number(p, "y", f"{path}.y"), int(label)))
    return tuple(points)


#: The request fields of the protocol additions (maskEncoding, multimask, boxes, maskInput);
#: any of them present makes a segment request ``extended``.
EXTENSION_FIELDS = ("maskEncoding", "multimask", "boxes", "maskInput")
#: ``maskEncoding`` values (the keys of :data:`sam2_service.wire.codecs.MASK_ENCODINGS`).
MASK_ENCODING_NAMES = ("raw", "rle", "png")
#: Longest ``maskInput`` read: a longer one is refused as it is parsed (``invalid_request``);
#: a shorter one naming no kept mask is ``unknown_mask``. A ``maskId`` is 33 characters
#: (:func:`new_mask_id`); the bound leaves room for longer ids of later versions.
MAX_MASK_INPUT_CHARS = 128


def new_mask_id() -> str:
    """A fresh ``maskId``: ``m`` and 32 random hex characters (128 bits, so never guessed)."""
    return "m" + uuid.uuid4().hex


def _parse_boxes(value: Any, max_boxes: int) -> tuple[BBox, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest("boxes must be a non-empty list of {x1,y1,x2,y2}, got "
                             f"{type_name(value) if value != [] else 'an empty list'}",
                             field="boxes")
    if len(value) > max_boxes:
        raise InvalidRequest(f"boxes has {len(value)} entries, more than the limit of {max_boxes} "
                             "(--max-boxes)", field="boxes")
    boxes = []
    for i, b in enumerate(value):
        path = f"boxes[{i}]"
        if not isinstance(b, dict):
            raise InvalidRequest(f"{path} must be an object {{x1,y1,x2,y2}}, got {type_name(b)}",
                                 field=path)
        boxes.append(BBox(*(number(b, k, f"{path}.{k}") for k in ("x1", "y1", "x2", "y2"))))
    return tuple(boxes)


def _extensions(obj: dict[str, Any], max_boxes: int) -> dict[str, Any]:
    """The protocol additions' fields of a segment request, checked (docs/protocol.md)."""
    if not any(k in obj for k in EXTENSION_FIELDS):
        return {}
    encoding = obj.get("maskEncoding", "raw")
    if encoding not in MASK_ENCODING_NAMES:
        got = repr(encoding[:32]) if isinstance(encoding, str) else type_name(encoding)
        raise InvalidRequest(f"maskEncoding must be one of {', '.join(MASK_ENCODING_NAMES)}, "
                             f"got {got}", field="maskEncoding")
    multimask = obj.get("multimask", False)
    if not isinstance(multimask, bool):
        raise InvalidRequest(f"multimask must be true or false, got {type_name(multimask)}",
                             field="multimask")
    boxes = _parse_boxes(obj["boxes"], max_boxes) if "boxes" in obj else ()
    mask_input = obj.get("maskInput")
    if "maskInput" in obj and (not isinstance(mask_input, str) or not mask_input
                               or len(mask_input) > MAX_MASK_INPUT_CHARS):
        raise InvalidRequest("maskInput must be the maskId of an earlier reply on this image, "
                             f"got {type_name(mask_input)}", field="maskInput")
    if boxes:
        for other, why in (("bbox", "bbox and boxes are two box prompts: send one"),
                           ("points", "SAM2's batched box prompt takes no points"),
                           ("multimask", "each box gets one mask; multimask is for one prompt"),
                           ("maskInput", "a mask input refines one mask, not a batch")):
            if obj.get(other) not in (None, False, []):
                raise InvalidRequest(f"{other} cannot be combined with boxes: {why}", field=other)
    return dict(mask_encoding=encoding, multimask=multimask, boxes=boxes, mask_input=mask_input,
                extended=True)


def _segment_request(obj: dict[str, Any], request_id: str, max_points: int,
                     max_boxes: int) -> SegmentRequest:
    has_image, has_id = "imageBase64" in obj, "imageId" in obj
    if has_image and has_id:
        raise InvalidRequest("send either imageBase64 or imageId, not both", field="imageId")
    return SegmentRequest(
        request_id=request_id,
        width=positive_int(obj, "width"),
        height=positive_int(obj, "height"),
        image_base64=None if has_id else image_base64(obj),
        bbox=_parse_bbox(obj.get("bbox")),
        points=_parse_points(obj.get("points"), max_points),
        image_id=image_id(obj) if has_id else None,
        **_extensions(obj, max_boxes),
    )


def _embed_request(obj: dict[str, Any], request_id: str) -> EmbedRequest:
    image = image_base64(obj)
    size = [None if obj.get(k) is None else positive_int(obj, k) for k in ("width", "height")]
    return EmbedRequest(request_id, image, size[0], size[1])


#: op name -> its parser (obj, request id, max points, max boxes) -> request.
_PARSERS: dict[str, Callable[[dict[str, Any], str, int, int], Request]] = {
    "segment": _segment_request,
    "embed": lambda obj, rid, _points, _boxes: _embed_request(obj, rid),
    "release": lambda obj, rid, _points, _boxes: ReleaseRequest(rid, image_id(obj)),
    "ping": lambda obj, rid, _points, _boxes: PingRequest(rid),
    "info": lambda obj, rid, _points, _boxes: InfoRequest(rid),
    "auto": lambda obj, rid, _points, _boxes: parse_auto_request(obj, rid),
    **{op: (lambda obj, rid, points, _boxes, op=op: parse_video_request(obj, op, rid, points))
       for op in VIDEO_OPS},
}


def parse_request(obj: dict[str, Any], *, max_points: int, max_boxes: int = 64,
                  request_id: str | None = None) -> Request:
    """Validate a decoded JSON object and return the typed request.

    Args:
        obj: the frame's JSON object (see :func:`sam2_service.wire.frames.decode_message`).
        max_points: the most point prompts accepted in one request.
        max_boxes: the most entries in a segment request's ``boxes`` (``--max-boxes``).
        request_id: the id the request goes by, already read with :func:`read_request_id`
            (so that a request without one keeps one made-up id); None reads it here.

    Raises:
        UnknownOp: ``op`` is a string other than those in :data:`OPS`.
        InvalidRequest: a field is missing or has the wrong type (``requestId`` too: a string
            of at most :data:`MAX_REQUEST_ID_CHARS` characters); the message names it.
    """
    if request_id is None:
        request_id = read_request_id(obj)
    if "requestId" in obj and not isinstance(obj["requestId"], str):
        raise InvalidRequest(f"requestId must be a string, got {type_name(obj['requestId'])}",
                             field="requestId")
    if len(obj.get("requestId", "")) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequest(f"requestId has {len(obj['requestId'])} characters, more than the "
                             f"limit of {MAX_REQUEST_ID_CHARS}", field="requestId")
    op = obj.get("op", "segment")
    if not isinstance(op, str):
        raise InvalidRequest(f"op must be a string, got {type_name(op)}", field="op")
    parser = _PARSERS.get(op)
    if parser is None:
        raise UnknownOp(f"op {op[:64]!r} is not one of {', '.join(OPS)}", field="op")
    return parser(obj, request_id, max_points, max_boxes)


#: The stages of the daemon's own work (``mask``, the base64 encoding, runs after the
#: inference thread's part); ``inferenceTimeMs`` is their sum.
INFERENCE_STAGES = ("decode", "encode", "predict", "mask")


def segment_response(request_id: str, *, width: int, height: int, mask_base64: str,
                     score: float, image_id: str, cached: bool,
                     timings: dict[str, float]) -> dict[str, Any]:
    """A successful segment reply. ``mask_base64`` encodes width*height bytes, 0 or 255,
    row-major, top row first; ``score`` is SAM2's IoU prediction for that mask;
    ``image_id`` the image's ``imageId``; ``cached`` whether its embedding was reused;
    ``timings`` milliseconds by stage (:data:`INFERENCE_STAGES`, ``queue``, ``total``);
    ``inferenceTimeMs`` is the sum of :data:`INFERENCE_STAGES`."""
    return {
        "requestId": request_id,
        "maskWidth": width,
        "maskHeight": height,
        "maskBase64": mask_base64,
        "score": score,
        "imageId": image_id,
        "cached": cached,
        "inferenceTimeMs": round(sum(timings.get(k, 0.0) for k in INFERENCE_STAGES), 3),
        "timingsMs": rounded_timings(timings),
    }


def mask_entry(score: float, mask: tuple[str, Any], mask_id: str) -> dict[str, Any]:
    """One entry of an extended reply's ``candidates`` or ``masks``: ``score`` (SAM2's IoU
    prediction), the mask as ``mask`` = (reply key, value) from
    :func:`sam2_service.wire.codecs.encode_mask_as`, and its ``maskId``."""
    return {"score": score, mask[0]: mask[1], "maskId": mask_id}


def extended_segment_response(request_id: str, *, width: int, height: int, encoding: str,
                              mask: tuple[str, Any], score: float, mask_id: str, image_id: str,
                              cached: bool, timings: dict[str, float],
                              candidates: list[dict[str, Any]] | None = None,
                              masks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The reply to a segment request that used a protocol addition (maskEncoding,
    multimask, boxes, maskInput): :func:`segment_response`'s fields in the same order
    (``maskBase64`` is ``""`` unless ``encoding`` is ``raw``), then ``maskEncoding``, the
    mask under its own key (``maskRle`` or ``maskPng``), ``maskId``, and ``candidates``
    (``multimask``) or ``masks`` (``boxes``), lists of :func:`mask_entry`."""
    key, value = mask
    reply = segment_response(request_id, width=width, height=height,
                             mask_base64=value if key == "maskBase64" else "", score=score,
                             image_id=image_id, cached=cached, timings=timings)
    reply["maskEncoding"] = encoding
    if key != "maskBase64":
        reply[key] = value
    reply["maskId"] = mask_id
    if candidates is not None:
        reply["candidates"] = candidates
    if masks is not None:
        reply["masks"] = masks
    return reply


def embed_response(request_id: str, *, width: int, height: int, image_id: str, cached: bool,
                   timings: dict[str, float]) -> dict[str, Any]:
    """The reply to ``{"op": "embed"}``: the image's ``imageId`` and size, no mask."""
    return {"requestId": request_id, "ok": True, "imageId": image_id, "width": width,
            "height": height, "cached": cached, "timingsMs": rounded_timings(timings)}


def release_response(request_id: str, *, image_id: str, released: bool) -> dict[str, Any]:
    """The reply to ``{"op": "release"}``; ``released`` is False if nothing was cached."""
    return {"requestId": request_id, "ok": True, "imageId": image_id, "released": released}


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
