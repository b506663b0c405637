"""The ``{"op": "auto"}`` request and reply, I/O-free: request built, reply read into a numpy
label map and its table (the operation itself is :func:`~.ops.auto_steps`), and the label
map's colours for an overlay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pybase64

from ..wire.auto import AUTO_FIELDS, decode_labels
from .core import ClientError, ImageRef, PreparedImage, check_response, new_request_id

#: Python keyword -> wire name of the auto settings (``points_per_side`` -> ``pointsPerSide``).
AUTO_KEYWORDS = {name: wire for wire, (name, *_) in AUTO_FIELDS.items()}


@dataclass(frozen=True)
class AutoResult:
    """An auto reply: ``labels`` HxW uint16 (0 background, ids 1..N), ``table`` one dict
    per id (``id``, ``score``, ``stabilityScore``, ``area``, ``bbox``), and ``raw``: the
    reply without ``labelsBase64`` (``timingsMs``, ``imageId``...)."""

    labels: np.ndarray
    table: list[dict[str, Any]]
    raw: dict[str, Any]

    def __iter__(self):  # so that ``labels, table = client.auto(...)`` works
        return iter((self.labels, self.table))


def build_auto_request(image: ImageRef | PreparedImage, *,
                       tile_shape: Sequence[int] | None = None, halo: Sequence[int] | None = None,
                       request_id: str | None = None, object_masks: bool = False,
                       **settings: Any) -> dict[str, Any]:
    """A protocol v1 auto request.

    Args:
        image: a prepared image (sent as base64) or an :class:`ImageRef` (sent by id).
        tile_shape, halo: (h, w) pixels; tiling is on when ``tile_shape`` is given.
        object_masks: ask for each label's whole mask (``objectMasks``): every table entry
            then holds ``maskRle``, COCO uncompressed RLE (column-major counts).
        settings: SAM2AutomaticMaskGenerator keywords (``points_per_side=8``...); None
            values are left out (the daemon's default).

    Raises:
        TypeError: an unknown setting.
    """
    unknown = set(settings) - set(AUTO_KEYWORDS)
    if unknown:
        raise TypeError(f"unknown auto settings: {', '.join(sorted(unknown))}")
    msg: dict[str, Any] = {"op": "auto", "requestId": request_id or new_request_id(),
                           "width": image.width, "height": image.height}
    if isinstance(image, ImageRef):
        msg["imageId"] = image.image_id
    else:
        msg["imageBase64"] = pybase64.b64encode_as_string(image.data)
    msg.update({AUTO_KEYWORDS[k]: v for k, v in settings.items() if v is not None})
    if tile_shape is not None:
        msg["tileShape"] = [int(v) for v in tile_shape]
    if halo is not None:
        msg["halo"] = [int(v) for v in halo]
    if object_masks:
        msg["objectMasks"] = True
    return msg


def parse_auto_response(response: dict[str, Any]) -> AutoResult:
    """The :class:`AutoResult` of an auto reply.

    Raises:
        RequestFailed: an error reply.
        ClientError: the label map does not match labelsWidth x labelsHeight.
    """
    check_response(response)
    try:
        labels = decode_labels(response["labelsBase64"], response["labelsWidth"],
                               response["labelsHeight"])
    except (KeyError, ValueError) as exc:
        raise ClientError(f"malformed auto reply: {exc}") from None
    rest = {k: v for k, v in response.items() if k != "labelsBase64"}
    return AutoResult(labels, list(response.get("labels", [])), rest)


def label_colours(n: int) -> np.ndarray:
    """(n+1)x3 uint8 RGB colours for ids 0..n: black for 0, then well-spread colours
    (golden-ratio hue steps at full saturation, value alternating 1.0/0.75), so that ids
    numbered near each other differ in hue."""
    ids = np.arange(1, n + 1)
    h = (ids * 0.618033988749895) % 1.0 * 6.0
    v = np.where(ids % 2 == 0, 0.75, 1.0)
    x = 1.0 - np.abs(h % 2.0 - 1.0)
    sector = h.astype(int)
    rgb = np.zeros((n, 3))
    table = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)]
    for s, (r, g, b) in enumerate(table):
        sel = sector == s
        for c, val in enumerate((r, g, b)):
            rgb[sel, c] = val[sel] if isinstance(val, np.ndarray) else val
    out = np.zeros((n + 1, 3), np.uint8)
    out[1:] = np.round(rgb * v[:, None] * 255).astype(np.uint8)
    return out


def label_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` (HxWx3 uint8 RGB) with each label of ``labels`` (HxW uint16) blended in its
    own colour (:func:`label_colours`) at ``alpha``; background pixels unchanged.

    Raises:
        ValueError: the shapes differ.
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but the label map is "
                         f"{labels.shape[1]}x{labels.shape[0]}")
    colours = label_colours(int(labels.max(initial=0)))[labels].astype(np.float32)
    out = image.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[fg]
    return np.round(out).astype(np.uint8)
