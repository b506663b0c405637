"""Validate a segment request's prompts against the decoded image and shape them for SAM2.

The output, :class:`Prompts`, holds exactly the arguments of
``SAM2ImagePredictor.predict`` (sam2/sam2_image_predictor.py): ``point_coords`` Nx2,
``point_labels`` N, ``box`` XYXY, ``multimask_output``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...wire.errors import InvalidRequest
from ...wire.schema import BBox, SegmentRequest


@dataclass(frozen=True)
class Prompts:
    """Prompts ready for ``SAM2ImagePredictor.predict``.

    Attributes:
        point_coords: Nx2 float32, (x, y) in pixels of the original image, or None.
        point_labels: N int32, 1 foreground / 0 background, or None.
        box: length-4 float32, XYXY in pixels, or None; Bx4 for a request's ``boxes``
            (SAM2's batched box prompt, one mask per box).
        multimask_output: ask SAM2 for 3 masks and keep the best-scoring one.
        mask_input: 1x256x256 float32 low-resolution mask logits of an earlier prediction
            (SAM2's ``mask_input``), or None.
    """

    point_coords: np.ndarray | None
    point_labels: np.ndarray | None
    box: np.ndarray | None
    multimask_output: bool
    mask_input: np.ndarray | None = None


def check_size(width: int | None, height: int | None, image_hw: tuple[int, int]) -> None:
    """Check a request's ``width``/``height`` (None: not given, not checked) against the
    image's (H, W) in pixels.

    Raises:
        InvalidRequest: a given size differs from the image's (names ``width`` or ``height``).
    """
    img_h, img_w = image_hw
    for name, claimed, actual in (("width", width, img_w), ("height", height, img_h)):
        if claimed is not None and claimed != actual:
            raise InvalidRequest(
                f"{name} is {claimed} but the decoded image is {img_w}x{img_h} (width x height)",
                field=name)


def _box(request: SegmentRequest, height: int, width: int) -> np.ndarray | None:
    return None if request.bbox is None else _check_box(request.bbox, "bbox", height, width)


def _check_box(b: BBox, name: str, height: int, width: int) -> np.ndarray:
    """A box checked against the image (``name`` is its field, ``bbox`` or ``boxes[i]``):
    length-4 float32 XYXY clipped to the image."""
    if b.x2 <= b.x1 or b.y2 <= b.y1:
        raise InvalidRequest(
            f"{name} is inverted or empty: need x1 < x2 and y1 < y2, got "
            f"x1={b.x1:g}, y1={b.y1:g}, x2={b.x2:g}, y2={b.y2:g}", field=name)
    x1, x2 = np.clip([b.x1, b.x2], 0, width)
    y1, y2 = np.clip([b.y1, b.y2], 0, height)
    box = np.array([x1, y1, x2, y2], dtype=np.float32)
    # checked in float32, what SAM2 gets: y2=1e-300 > y1=0 in float64 but is 0 in float32
    if box[2] <= box[0] or box[3] <= box[1]:
        raise InvalidRequest(
            f"{name} ({b.x1:g}, {b.y1:g}, {b.x2:g}, {b.y2:g}) has no area inside the "
            f"{width}x{height} image", field=name)
    return box


def validate(request: SegmentRequest, image_hw: tuple[int, int]) -> Prompts:
    """Check the request against the decoded image and build SAM2's prompt arrays.

    Args:
        request: the parsed segment request.
        image_hw: (H, W) of the decoded image, in pixels.

    Rules (docs/protocol.md, "Prompts"):
      * ``width``/``height`` must equal the decoded image's size;
      * a bbox needs x1 < x2 and y1 < y2, is clipped to the image, and must keep some area;
      * points must lie inside the image, 0 <= x <= W and 0 <= y <= H;
      * no bbox and no points: the box is the whole image, (0, 0, W, H);
      * one point and no box: ``multimask_output=True`` (SAM2's advice for ambiguous
        prompts), anything else ``False``;
      * ``boxes`` (a protocol addition): each box checked like ``bbox``, stacked Bx4,
        ``multimask_output=False``; ``multimask: true``: ``multimask_output=True``.

    Raises:
        InvalidRequest: naming the field at fault.
    """
    height, width = image_hw
    check_size(request.width, request.height, image_hw)
    box = _box(request, height, width)
    coords = labels = None
    if request.points:
        for i, p in enumerate(request.points):
            if not (0 <= p.x <= width and 0 <= p.y <= height):
                raise InvalidRequest(
                    f"points[{i}] ({p.x:g}, {p.y:g}) lies outside the {width}x{height} image",
                    field=f"points[{i}]")
        coords = np.array([(p.x, p.y) for p in request.points], dtype=np.float32)
        labels = np.array([p.label for p in request.points], dtype=np.int32)
    if request.boxes:
        box = np.stack([_check_box(b, f"boxes[{i}]", height, width)
                        for i, b in enumerate(request.boxes)])
        return Prompts(None, None, box, False)
    if box is None and coords is None:
        box = np.array([0, 0, width, height], dtype=np.float32)
    multimask = box is None and coords is not None and len(coords) == 1
    return Prompts(coords, labels, box, multimask or request.multimask)
