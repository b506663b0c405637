"""Draw a mask and its prompts over the image, for ``sam2-service segment --overlay``.

Pillow and numpy only (no torch), so front-ends can use it too. The mask is blended in
:data:`MASK_COLOR` at :data:`MASK_ALPHA` with a solid contour along its inner edge; each box
(``bbox`` and every one of ``boxes``) is a :data:`BOX_COLOR` rectangle; foreground points
are :data:`FOREGROUND_COLOR` discs and background points :data:`BACKGROUND_COLOR` discs,
each with a white ring. Line widths and marker sizes grow with the image.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from .images import read_rgb

MASK_COLOR = (30, 144, 255)
MASK_ALPHA = 0.45
BOX_COLOR = (255, 200, 0)
FOREGROUND_COLOR = (0, 200, 0)
BACKGROUND_COLOR = (230, 0, 0)
RING_COLOR = (255, 255, 255)

ImageLike = Union[np.ndarray, Image.Image]


def line_width(width: int, height: int) -> int:
    """Box and contour line width in pixels: 1 up to 400 px on the short side, then +1
    per 400 px."""
    return max(1, round(min(width, height) / 400))


def marker_radius(width: int, height: int) -> int:
    """Point marker radius in pixels: 1/80 of the short side, at least 3."""
    return max(3, round(min(width, height) / 80))


def _as_rgb_array(image: ImageLike) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be an HxWx3 uint8 array or a PIL image, "
                         f"got shape {arr.shape} dtype {arr.dtype}")
    return arr.copy()


def _inner_edge(mask: np.ndarray, width: int) -> np.ndarray:
    """Mask pixels within ``width`` pixels (4-connected steps) of a background pixel or
    the image border: the mask less its ``width``-fold erosion by a 3x3 cross.

    Works in the mask's bounding box, with in-place ANDs of shifted slices (no padded
    copies): a few tens of ms for a 4000x3000 mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    edge = np.zeros_like(mask)
    if rows.size == 0:
        return edge
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inner = mask[box].copy()
    for _ in range(width):
        prev = inner.copy()
        inner[1:] &= prev[:-1]
        inner[:-1] &= prev[1:]
        inner[:, 1:] &= prev[:, :-1]
        inner[:, :-1] &= prev[:, 1:]
        # beyond the box's sides lies background (or the image border): erode them too
        inner[0], inner[-1], inner[:, 0], inner[:, -1] = False, False, False, False
    edge[box] = mask[box] & ~inner
    return edge


def blend_mask(rgb: np.ndarray, mask: np.ndarray, color: Sequence[int] = MASK_COLOR,
               alpha: float = MASK_ALPHA, edge: int = 1) -> np.ndarray:
    """``rgb`` (HxWx3 uint8, modified copy returned) with ``color`` blended at ``alpha``
    over ``mask`` (HxW bool) and a solid ``edge``-pixel contour inside the mask's border.

    Each channel goes through a 256-entry lookup table holding
    ``round((1 - alpha) * v + alpha * color)``, so the blend costs one table lookup per
    pixel instead of float arithmetic."""
    values = np.arange(256, dtype=np.float32)[:, None]
    lut = np.clip(np.rint((1.0 - alpha) * values + alpha * np.asarray(color, np.float32)),
                  0, 255).astype(np.uint8)  # (256, 3): lut[v, c]
    out = rgb.copy()
    for c in range(3):
        np.copyto(out[..., c], lut[rgb[..., c], c], where=mask)
    out[_inner_edge(mask, edge)] = np.asarray(color, dtype=np.uint8)
    return out


def draw_prompts(im: Image.Image, bbox: Sequence[float] | None = None,
                 points: Iterable[Sequence[float]] = (),
                 boxes: Iterable[Sequence[float]] = ()) -> None:
    """Draw the box and the boxes of a batched box prompt (XYXY pixels) and the points
    ((x, y) or (x, y, label); label 1 foreground, 0 background) on ``im`` in place."""
    draw = ImageDraw.Draw(im)
    w, h = im.size
    for box in ([bbox] if bbox is not None else []) + list(boxes):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)],
                       outline=BOX_COLOR, width=line_width(w, h))
    r = marker_radius(w, h)
    ring = max(1, r // 4)
    for p in points:
        x, y = float(p[0]), float(p[1])
        label = int(p[2]) if len(p) > 2 else 1
        fill = FOREGROUND_COLOR if label == 1 else BACKGROUND_COLOR
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=RING_COLOR, width=ring)


def draw_overlay(image: ImageLike, mask: np.ndarray, bbox: Sequence[float] | None = None,
                 points: Iterable[Sequence[float]] = (),
                 boxes: Iterable[Sequence[float]] = ()) -> Image.Image:
    """The image with the mask and the prompts drawn on it.

    Args:
        image: HxWx3 uint8 RGB array, or a PIL image (converted to RGB).
        mask: HxW, nonzero/True = foreground (the client's 0/255 uint8 masks work as is).
        bbox: (x1, y1, x2, y2) in pixels, or None.
        points: (x, y) or (x, y, label) in pixels; label 1 foreground (default), 0 background.
        boxes: the (x1, y1, x2, y2) boxes of a batched box prompt, drawn as ``bbox`` is.

    Returns:
        A new RGB PIL image of the image's size; the input is not modified.

    Raises:
        ValueError: the image is not HxWx3 uint8, or the mask is not HxW of the same size.
    """
    rgb = _as_rgb_array(image)
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        got = "x".join(map(str, mask.shape[::-1])) if mask.ndim == 2 else f"of shape {mask.shape}"
        raise ValueError(f"mask and image sizes differ: the mask is {got}, the image is "
                         f"{rgb.shape[1]}x{rgb.shape[0]} (width x height); they must match")
    h, w = mask.shape
    im = Image.fromarray(blend_mask(rgb, mask != 0, edge=line_width(w, h)))
    draw_prompts(im, bbox, points, boxes)
    return im


def write_overlay(image_path: Union[str, os.PathLike], mask: np.ndarray,
                  out_path: Union[str, os.PathLike], bbox: Sequence[float] | None = None,
                  points: Iterable[Sequence[float]] = (),
                  boxes: Iterable[Sequence[float]] = ()) -> Path:
    """Decode ``image_path`` with Pillow (:func:`~.images.read_rgb`: RGB, stored pixel grid,
    no EXIF rotation, as the daemon decodes it; no decompression-bomb warning, the daemon's
    limit having been held against it), draw :func:`draw_overlay` and save it as PNG at
    ``out_path``.

    Raises:
        OSError: the image cannot be read or decoded, or the PNG cannot be written.
        ValueError: see :func:`draw_overlay`.
    """
    overlay = draw_overlay(read_rgb(image_path), mask, bbox, points, boxes)
    out = Path(out_path)
    # fast zlib with the run-length strategy: 5x faster than the default level 6 on a 12 MP
    # photo, and no bigger
    overlay.save(out, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return out
