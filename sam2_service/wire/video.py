"""Video session messages (docs/protocol.md, "Video sessions"): requests, replies, checks.

No I/O and no model. :func:`parse_video_request` turns a ``video*`` op's JSON object into a
frozen request; the ``*_reply`` functions build what the daemon sends back. Frames are
counted from 0; coordinates are pixels of the video's frames, x right and y down; boxes are
XYXY; masks are HxW, 0 background and 255 foreground, in a ``maskEncoding`` of
:data:`sam2_service.wire.codecs.MASK_ENCODINGS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .codecs import decode_base64
from .errors import InvalidRequest
from .fields import number, rounded_timings, type_name

#: Propagation directions: ``both`` is forward, then backward, from the earliest prompted frame.
DIRECTIONS = ("forward", "backward", "both")
MASK_ENCODING_NAMES = ("raw", "rle", "png")
#: Object ids are integers 0 .. MAX_OBJECT_ID (a 16-bit label map holds 1 .. 65535).
MAX_OBJECT_ID = 2**31 - 1
#: Longest ``sessionId`` read (the daemon's are 33 characters).
MAX_SESSION_ID_CHARS = 128


@dataclass(frozen=True)
class VideoOpen:
    """``videoOpen``: a new session over ``frames`` (PNG/JPEG files, decoded base64 not yet
    read) or ``video`` (one video file's bytes); exactly one is set."""

    request_id: str
    frames: tuple[str, ...] | None
    video: str | None


@dataclass(frozen=True)
class VideoAppend:
    """``videoAppend``: more PNG/JPEG frames (base64) at the end of a session's video."""

    request_id: str
    session_id: str
    frames: tuple[str, ...]


@dataclass(frozen=True)
class VideoPrompt:
    """``videoPrompt``: the prompt of ``object_id`` on ``frame``, replacing that object's
    earlier prompt there: ``points`` ((x, y, label) pixels, label 1 foreground, 0
    background) and/or ``box`` (XYXY pixels), or ``mask`` (the encoded mask object:
    ``maskPng``, ``maskRle`` or ``maskBase64``, the video's size)."""

    request_id: str
    session_id: str
    frame: int
    object_id: int
    points: tuple[tuple[float, float, int], ...]
    box: tuple[float, float, float, float] | None
    mask: dict[str, Any] | None
    mask_encoding: str = "raw"


@dataclass(frozen=True)
class VideoPropagate:
    """``videoPropagate``: track every object through frames ``start`` .. ``end``
    (inclusive; None: the first / last frame) in ``direction``."""

    request_id: str
    session_id: str
    direction: str
    start: int | None
    end: int | None
    mask_encoding: str = "raw"


@dataclass(frozen=True)
class VideoObjectRequest:
    """``videoRemoveObject`` (``object_id`` set) and ``videoClearPrompts`` (``frame`` set;
    ``object_id`` None: every object's prompts on that frame)."""

    request_id: str
    session_id: str
    op: str
    frame: int | None = None
    object_id: int | None = None


@dataclass(frozen=True)
class VideoSessionRequest:
    """``videoReset``, ``videoCancel`` and ``videoClose``: an op on a whole session."""

    request_id: str
    session_id: str
    op: str


VIDEO_OPS = ("videoOpen", "videoAppend", "videoPrompt", "videoRemoveObject",
             "videoClearPrompts", "videoReset", "videoPropagate", "videoCancel", "videoClose")


def _session_id(obj: dict[str, Any]) -> str:
    value = obj.get("sessionId")
    if not isinstance(value, str) or not value or len(value) > MAX_SESSION_ID_CHARS:
        raise InvalidRequest("sessionId must be the sessionId of a videoOpen reply, got "
                             f"{type_name(value)}", field="sessionId")
    return value


def _int(obj: dict[str, Any], key: str, low: int, high: int, required: bool = True
         ) -> int | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{key} must be an integer, got {type_name(value)}", field=key)
    if not low <= value <= high:
        raise InvalidRequest(f"{key} must be between {low} and {high}, got {value}", field=key)
    return value


def _frames(obj: dict[str, Any]) -> tuple[str, ...]:
    value = obj.get("frames")
    if not isinstance(value, list) or not value:
        raise InvalidRequest("frames must be a non-empty list of base64 PNG or JPEG files, got "
                             f"{type_name(value) if value != [] else 'an empty list'}",
                             field="frames")
    for i, f in enumerate(value):
        if not isinstance(f, str) or not f:
            raise InvalidRequest(f"frames[{i}] must be a non-empty base64 string, got "
                                 f"{type_name(f)}", field=f"frames[{i}]")
    return tuple(value)


def _encoding(obj: dict[str, Any]) -> str:
    encoding = obj.get("maskEncoding", "raw")
    if encoding not in MASK_ENCODING_NAMES:
        raise InvalidRequest(f"maskEncoding must be one of {', '.join(MASK_ENCODING_NAMES)}, "
                             f"got {str(encoding)[:32]!r}", field="maskEncoding")
    return encoding


def _points(value: Any, max_points: int) -> tuple[tuple[float, float, int], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest(f"points must be a list of {{x, y, label}}, got {type_name(value)}",
                             field="points")
    if len(value) > max_points:
        raise InvalidRequest(f"points has {len(value)} entries, more than the limit of "
                             f"{max_points}", field="points")
    out = []
    for i, p in enumerate(value):
        path = f"points[{i}]"
        if not isinstance(p, dict):
            raise InvalidRequest(f"{path} must be an object {{x, y, label}}, got {type_name(p)}",
                                 field=path)
        label = p.get("label", 1)
        if isinstance(label, bool) or label not in (0, 1):
            raise InvalidRequest(f"{path}.label must be 0 (background) or 1 (foreground), got "
                                 f"{label!r}", field=f"{path}.label")
        out.append((number(p, "x", f"{path}.x"), number(p, "y", f"{path}.y"), int(label)))
    return tuple(out)


def _box(value: Any) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"bbox must be an object {{x1,y1,x2,y2}}, got {type_name(value)}",
                             field="bbox")
    x1, y1, x2, y2 = (number(value, k, f"bbox.{k}") for k in ("x1", "y1", "x2", "y2"))
    if not (x1 < x2 and y1 < y2):
        raise InvalidRequest("bbox is inverted or empty: need x1 < x2 and y1 < y2, got "
                             f"x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g}", field="bbox")
    return (x1, y1, x2, y2)


def _mask(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not any(k in value for k in
                                              ("maskPng", "maskRle", "maskBase64")):
        raise InvalidRequest("mask must be an object with maskPng, maskRle or maskBase64, got "
                             f"{type_name(value)}", field="mask")
    return value


def _prompt(obj: dict[str, Any], rid: str, max_points: int) -> VideoPrompt:
    points, box, mask = _points(obj.get("points"), max_points), _box(obj.get("bbox")), \
        _mask(obj.get("mask"))
    if mask is not None and (points or box is not None):
        raise InvalidRequest("mask cannot be combined with points or bbox: a frame's prompt "
                             "for an object is a mask, or points and/or a box", field="mask")
    if mask is None and not points and box is None:
        raise InvalidRequest("a videoPrompt needs points, bbox or mask", field="points")
    return VideoPrompt(rid, _session_id(obj), _int(obj, "frame", 0, 2**31 - 1),
                       _int(obj, "objectId", 0, MAX_OBJECT_ID), points, box, mask,
                       _encoding(obj))


def _propagate(obj: dict[str, Any], rid: str) -> VideoPropagate:
    direction = obj.get("direction", "both")
    if direction not in DIRECTIONS:
        raise InvalidRequest(f"direction must be one of {', '.join(DIRECTIONS)}, got "
                             f"{str(direction)[:32]!r}", field="direction")
    start = _int(obj, "start", 0, 2**31 - 1, required=False)
    end = _int(obj, "end", 0, 2**31 - 1, required=False)
    if start is not None and end is not None and start > end:
        raise InvalidRequest(f"start ({start}) is after end ({end})", field="start")
    return VideoPropagate(rid, _session_id(obj), direction, start, end, _encoding(obj))


def _open(obj: dict[str, Any], rid: str) -> VideoOpen:
    has_frames, has_video = "frames" in obj, "video" in obj
    if has_frames == has_video:
        raise InvalidRequest("send either frames (PNG/JPEG files) or video (one video file), "
                             "and only one", field="frames")
    if has_video:
        video = obj.get("video")
        if not isinstance(video, str) or not video:
            raise InvalidRequest(f"video must be a non-empty base64 string, got "
                                 f"{type_name(video)}", field="video")
        return VideoOpen(rid, None, video)
    return VideoOpen(rid, _frames(obj), None)


def parse_video_request(obj: dict[str, Any], op: str, request_id: str, max_points: int) -> Any:
    """The typed request of a ``video*`` op (``op`` one of :data:`VIDEO_OPS`).

    Raises:
        InvalidRequest: a field is missing or wrong; the message and ``field`` name it.
    """
    if op == "videoOpen":
        return _open(obj, request_id)
    if op == "videoAppend":
        return VideoAppend(request_id, _session_id(obj), _frames(obj))
    if op == "videoPrompt":
        return _prompt(obj, request_id, max_points)
    if op == "videoPropagate":
        return _propagate(obj, request_id)
    if op == "videoRemoveObject":
        return VideoObjectRequest(request_id, _session_id(obj), op,
                                  object_id=_int(obj, "objectId", 0, MAX_OBJECT_ID))
    if op == "videoClearPrompts":
        return VideoObjectRequest(request_id, _session_id(obj), op,
                                  frame=_int(obj, "frame", 0, 2**31 - 1),
                                  object_id=_int(obj, "objectId", 0, MAX_OBJECT_ID,
                                                 required=False))
    return VideoSessionRequest(request_id, _session_id(obj), op)


def decode_frames(frames: tuple[str, ...]) -> list[bytes]:
    """Each ``frames[i]``'s bytes (base64 or a data URL). Raises ImageDecodeError naming it."""
    return [decode_base64(f, f"frames[{i}]") for i, f in enumerate(frames)]


# -- replies -------------------------------------------------------------------------------


def open_reply(request_id: str, session_id: str, frame_count: int, width: int, height: int,
               timings: dict[str, float]) -> dict[str, Any]:
    """The reply to ``videoOpen`` and ``videoAppend``: the session, its frame count and size."""
    return {"requestId": request_id, "ok": True, "sessionId": session_id,
            "frameCount": frame_count, "width": width, "height": height,
            "timingsMs": rounded_timings(timings)}


def prompt_reply(request_id: str, session_id: str, frame: int, object_id: int,
                 object_score: float | None, width: int, height: int, encoding: str,
                 mask: tuple[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """The reply to ``videoPrompt``: the object's mask on that frame (``mask`` is
    ``(key, value)`` of :func:`sam2_service.wire.codecs.encode_mask_as`) and its object
    score logit (> 0: SAM2 sees the object)."""
    return {"requestId": request_id, "ok": True, "sessionId": session_id, "frame": frame,
            "objectId": object_id, "objectScore": object_score, "maskWidth": width,
            "maskHeight": height, "maskEncoding": encoding, mask[0]: mask[1],
            "timingsMs": rounded_timings(timings)}


def frame_reply(request_id: str, session_id: str, frame: int, width: int, height: int,
                encoding: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    """One streamed ``videoPropagate`` reply: ``done`` false, the frame's index and each
    object's ``{"objectId", "objectScore", <mask key>: ...}``."""
    return {"requestId": request_id, "sessionId": session_id, "done": False, "frame": frame,
            "maskWidth": width, "maskHeight": height, "maskEncoding": encoding,
            "objects": objects}


def final_reply(request_id: str, session_id: str, frames: int, cancelled: bool,
                timings: dict[str, float]) -> dict[str, Any]:
    """The last ``videoPropagate`` reply: ``done`` true, how many frames were sent and
    whether a ``videoCancel`` stopped it."""
    return {"requestId": request_id, "ok": True, "sessionId": session_id, "done": True,
            "frames": frames, "cancelled": cancelled, "timingsMs": rounded_timings(timings)}


def ok_reply(request_id: str, session_id: str, **fields: Any) -> dict[str, Any]:
    """The reply to the other ``video*`` ops: ``ok`` and the op's own fields."""
    return {"requestId": request_id, "ok": True, "sessionId": session_id, **fields}
