"""The ``{"op": "auto"}`` request and reply: automatic mask generation into a label map.

Settings default to ``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator``'s defaults
(sam2 1.1.0); :data:`AUTO_DEFAULTS` lists them with their wire names. Each is checked
against the range SAM2AutomaticMaskGenerator accepts, and an out-of-range value is
:class:`InvalidRequest` naming the field. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pybase64

from .errors import InvalidRequest
from .fields import image_base64, image_id, number, positive_int, rounded_timings, type_name

#: Most labels a uint16 label map can hold (0 is background).
MAX_LABELS = 65535


@dataclass(frozen=True)
class AutoSettings:
    """SAM2AutomaticMaskGenerator's settings (its keyword names), defaults as in sam2 1.1.0.

    Attributes:
        points_per_side: grid points along each side of the image (or tile); int >= 1.
        points_per_batch: points run through the mask decoder at once (one daemon step).
        pred_iou_thresh: keep masks whose predicted IoU is > this; 0..1 (0 keeps all).
        stability_score_thresh: keep masks whose stability score is >= this; 0..1.
        stability_score_offset: logit offset of the stability score; >= 0.
        box_nms_thresh: box IoU above which duplicates are suppressed; 0..1.
        crop_n_layers: extra layers of image crops (layer i has 4**i crops); 0..3 here.
        min_mask_region_area: holes and islands smaller than this (pixels) are removed by
            SAM2ImagePredictor's post-processing (needs sam2's CUDA extension; without it
            sam2 warns and skips); >= 0.
        multimask_output: three masks per point (True) or one.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    min_mask_region_area: int = 0
    multimask_output: bool = True


#: wire name -> (AutoSettings field, kind, minimum, maximum); kind is int, float or bool.
AUTO_FIELDS: dict[str, tuple[str, str, float, float]] = {
    "pointsPerSide": ("points_per_side", "int", 1, 256),
    "pointsPerBatch": ("points_per_batch", "int", 1, 1024),
    "predIouThresh": ("pred_iou_thresh", "float", 0.0, 1.0),
    "stabilityScoreThresh": ("stability_score_thresh", "float", 0.0, 1.0),
    "stabilityScoreOffset": ("stability_score_offset", "float", 0.0, 1e6),
    "boxNmsThresh": ("box_nms_thresh", "float", 0.0, 1.0),
    "cropNLayers": ("crop_n_layers", "int", 0, 3),
    "minMaskRegionArea": ("min_mask_region_area", "int", 0, 2**31 - 1),
    "multimaskOutput": ("multimask_output", "bool", 0, 1),
}
#: The defaults, by wire name (SAM2AutomaticMaskGenerator's).
AUTO_DEFAULTS = {wire: getattr(AutoSettings(), name) for wire, (name, *_) in AUTO_FIELDS.items()}


@dataclass(frozen=True)
class AutoRequest:
    """``{"op": "auto"}``: every object of one image as a label map.

    Exactly one of ``image_base64`` and ``image_id`` is set (as for segment).
    ``tile_shape`` (h, w) pixels turns tiling on (None: the whole image in one pass);
    ``halo`` (h, w) pixels is the overlap added around each tile, (0, 0) by default.
    ``object_masks`` (``objectMasks``) asks for each label's whole mask in its table entry.
    """

    request_id: str
    width: int
    height: int
    image_base64: str | None
    image_id: str | None
    settings: AutoSettings
    tile_shape: tuple[int, int] | None = None
    halo: tuple[int, int] = (0, 0)
    object_masks: bool = False


def _setting(obj: dict[str, Any], key: str) -> Any:
    name, kind, low, high = AUTO_FIELDS[key]
    value = obj[key]
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidRequest(f"{key} must be true or false, got {type_name(value)}", field=key)
        return value
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidRequest(f"{key} must be an integer, got {type_name(value)}", field=key)
    got = number(obj, key, key)
    if not low <= got <= high:
        raise InvalidRequest(f"{key} must be in [{low:g}, {high:g}], got {value}", field=key)
    return value if kind == "int" else got


def _pair(obj: dict[str, Any], key: str, minimum: int) -> tuple[int, int] | None:
    value = obj.get(key)
    if value is None:
        return None
    ok = (isinstance(value, list) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value))
    if not ok:
        raise InvalidRequest(f"{key} must be [height, width], two integers >= {minimum} "
                             f"(pixels), got {str(value)[:40]}", field=key)
    return value[0], value[1]


def parse_auto_request(obj: dict[str, Any], request_id: str) -> AutoRequest:
    """The typed auto request of a decoded JSON object.

    Raises:
        InvalidRequest: a field is missing, of the wrong type or out of range (named).
    """
    has_image, has_id = "imageBase64" in obj, "imageId" in obj
    if has_image and has_id:
        raise InvalidRequest("send either imageBase64 or imageId, not both", field="imageId")
    settings = AutoSettings(**{AUTO_FIELDS[k][0]: _setting(obj, k)
                               for k in AUTO_FIELDS if obj.get(k) is not None})
    tile = _pair(obj, "tileShape", 64)
    halo = _pair(obj, "halo", 0) or (0, 0)
    if tile is not None and (2 * halo[0] >= tile[0] or 2 * halo[1] >= tile[1]):
        raise InvalidRequest(f"halo {list(halo)} must be less than half of tileShape "
                             f"{list(tile)} on each axis", field="halo")
    object_masks = obj.get("objectMasks")
    object_masks = False if object_masks is None else object_masks
    if not isinstance(object_masks, bool):
        raise InvalidRequest(f"objectMasks must be true or false, got {type_name(object_masks)}",
                             field="objectMasks")
    return AutoRequest(request_id=request_id, width=positive_int(obj, "width"),
                       height=positive_int(obj, "height"),
                       image_base64=None if has_id else image_base64(obj),
                       image_id=image_id(obj) if has_id else None, settings=settings,
                       tile_shape=tile, halo=halo, object_masks=object_masks)


def auto_response(request_id: str, *, width: int, height: int, labels_base64: str,
                  labels: list[dict[str, Any]], image_id: str,
                  timings: dict[str, float]) -> dict[str, Any]:
    """The reply to ``{"op": "auto"}``. ``labels_base64`` encodes width*height uint16
    little-endian label ids, row-major, top row first (0 background); ``labels`` holds one
    ``{id, score, stabilityScore, area, bbox: {x1, y1, x2, y2}}`` per id 1..N (and
    ``maskRle`` with ``objectMasks``)."""
    return {"requestId": request_id, "ok": True, "labelsWidth": width, "labelsHeight": height,
            "labelsBase64": labels_base64, "labels": labels, "imageId": image_id,
            "timingsMs": rounded_timings(timings)}


def encode_labels(labels: np.ndarray) -> str:
    """Base64 of an HxW label map as uint16 little-endian, row-major (``labelsBase64``)."""
    return pybase64.b64encode_as_string(np.ascontiguousarray(labels, dtype="<u2").tobytes())


def decode_labels(text: str, width: int, height: int) -> np.ndarray:
    """The HxW uint16 label map of ``labelsBase64``.

    Raises:
        ValueError: the decoded length is not width * height * 2 bytes.
    """
    raw = pybase64.b64decode(text, validate=True)
    if len(raw) != width * height * 2:
        raise ValueError(f"labelsBase64 holds {len(raw)} bytes, not {width}x{height}x2")
    return np.frombuffer(raw, dtype="<u2").reshape(height, width).astype(np.uint16)
