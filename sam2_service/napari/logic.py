"""The napari plugin's layer logic as pure numpy functions (no Qt, no napari, no I/O but the
exporters): label ids, how a new mask is combined with a label map, world -> pixel mapping,
image normalisation, region text positions, and the label table.

Coordinate order: napari layers index arrays as (..., row, col) = (..., y, x); the daemon
wants prompts as (x, y) pixels, x to the right and y down, origin at the top-left pixel's
corner as in the client (:meth:`~sam2_service.client.Client.segment`). Functions here say
which order they take and give.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: How a new mask joins the label map. ``add``: a new label on top of everything. On a chosen
#: label: ``union`` adds the mask's pixels to it, ``intersection`` keeps only its pixels inside
#: the mask, ``overwrite`` replaces the label's pixels with the mask.
MODES = ("add", "union", "intersection", "overwrite")


def next_label_id(labels: np.ndarray) -> int:
    """The id for a new segment: the largest id in ``labels`` (any int array) + 1 (1 if
    empty). Ids are never reused while a larger one is present."""
    return int(labels.max()) + 1 if labels.size else 1


def combine(labels: np.ndarray, mask: np.ndarray, mode: str, label_id: int) -> np.ndarray:
    """``labels`` (HxW int) with ``mask`` (HxW bool, or uint8 0/255) applied for ``label_id``.

    Returns a new array (the input is not changed). ``add`` and ``union`` paint the mask's
    pixels with ``label_id`` (over other labels); ``intersection`` clears the pixels of
    ``label_id`` outside the mask (other labels untouched); ``overwrite`` clears all pixels
    of ``label_id`` and then paints the mask.

    Raises:
        ValueError: an unknown mode or shapes that differ.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
    if mask.shape != labels.shape:
        raise ValueError(f"mask shape {mask.shape} is not the label map's {labels.shape}")
    inside = mask.astype(bool)
    out = labels.copy()
    if mode == "intersection":
        out[(out == label_id) & ~inside] = 0
        return out
    if mode == "overwrite":
        out[out == label_id] = 0
    out[inside] = label_id
    return out


def world_to_data(world: Sequence[float], scale: Sequence[float],
                  translate: Sequence[float]) -> np.ndarray:
    """A world coordinate (napari order, (..., row, col)) in a layer's data coordinates:
    ``(world - translate) / scale`` per axis (the layer's affine is assumed identity)."""
    w = np.asarray(world, dtype=float)
    return (w - np.asarray(translate, dtype=float)[-w.size:]) / np.asarray(scale, dtype=float)[-w.size:]


def data_to_xy(data: Sequence[float]) -> tuple[float, float]:
    """The daemon's (x, y) pixel for a data coordinate (..., row, col) of an image layer.

    napari's pixel centres sit at integer data coordinates; the daemon's pixel (i, j) covers
    x in [i, i + 1), so the centre of pixel column c is x = c + 0.5."""
    return float(data[-1]) + 0.5, float(data[-2]) + 0.5


def world_to_xy(world: Sequence[float], scale: Sequence[float],
                translate: Sequence[float]) -> tuple[float, float]:
    """:func:`world_to_data` then :func:`data_to_xy`: world (..., row, col) -> (x, y)."""
    return data_to_xy(world_to_data(world, scale, translate))


def box_to_xyxy(corners_xy: np.ndarray, width: int, height: int) -> tuple[float, ...]:
    """A rectangle's corners (N x 2 daemon (x, y) pixels, e.g. from :func:`data_to_xy`) ->
    the daemon's box (x1, y1, x2, y2), clipped to the image ``[0, width] x [0, height]``."""
    xs, ys = corners_xy[:, 0], corners_xy[:, 1]
    x1, x2 = np.clip([xs.min(), xs.max()], 0, width)
    y1, y2 = np.clip([ys.min(), ys.max()], 0, height)
    return float(x1), float(y1), float(x2), float(y2)


@dataclass(frozen=True)
class Plane:
    """The 2-D image the daemon gets for an image layer.

    Attributes:
        image: HxW or HxWx3 uint8 (alpha dropped, other dtypes normalised).
        index: the leading (slice) indices of the plane in the layer's data, () for 2-D.
    """

    image: np.ndarray
    index: tuple[int, ...]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``image`` as uint8: uint8 as is; anything else min-max normalised to 0..255 over the
    whole array (as micro-sam's ``_to_image``); a constant image gives zeros."""
    if image.dtype == np.uint8:
        return image
    f = image.astype(np.float32)
    lo, hi = float(np.nanmin(f)), float(np.nanmax(f))
    if hi <= lo:
        return np.zeros(f.shape, np.uint8)
    return np.clip(np.round((f - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def image_plane(data: np.ndarray, rgb: bool, current_step: Sequence[int]) -> Plane:
    """The displayed 2-D plane of an image layer's ``data`` for the daemon.

    Args:
        data: (..., H, W) greyscale or (..., H, W, 3|4) when ``rgb``; any numeric dtype.
        rgb: the layer's ``rgb`` flag (last axis is colour; RGBA's alpha is dropped).
        current_step: the layer's indices along its leading axes (the viewer's dims
            ``current_step`` for the layer's dims); only the leading ``ndim - 2`` are used.

    Raises:
        ValueError: fewer than two spatial axes.
    """
    spatial = data.ndim - (1 if rgb else 0)
    if spatial < 2:
        raise ValueError(f"an image needs two spatial axes; got shape {data.shape}")
    lead = spatial - 2
    index = tuple(int(i) for i in list(current_step)[-spatial:][:lead]) if lead else ()
    plane = np.asarray(data[index] if index else data)
    if rgb:
        plane = plane[..., :3]
    return Plane(to_uint8(plane), index)


def region_centres(labels: np.ndarray) -> dict[int, tuple[float, float]]:
    """id -> (row, col) of a pixel of each region, for its name's text: the region's pixel
    nearest its centroid (so it lies inside even for a ring). ``labels``: HxW int."""
    out: dict[int, tuple[float, float]] = {}
    for lab in np.unique(labels):
        if lab == 0:
            continue
        rows, cols = np.nonzero(labels == lab)
        k = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
        out[int(lab)] = (float(rows[k]), float(cols[k]))
    return out


def label_table(labels: np.ndarray, names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """One row per id of ``labels`` (HxW int): ``id``, ``name`` ('' if none), ``area``
    (pixels), ``bbox`` [x1, y1, x2, y2] (pixel corners, x2/y2 exclusive)."""
    names = names or {}
    table = []
    for lab in np.unique(labels):
        if lab == 0:
            continue
        rows, cols = np.nonzero(labels == lab)
        table.append({"id": int(lab), "name": names.get(int(lab), ""), "area": int(rows.size),
                      "bbox": [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]})
    return table


def export_labels(labels: np.ndarray, path: str | Path) -> Path:
    """Write ``labels`` (int array, ids < 65536) as 16-bit: ``.png`` (Pillow, 2-D only) or
    ``.tif``/``.tiff`` (tifffile). Returns the path.

    Raises:
        ValueError: another suffix, ids over 65535, or a PNG of more than two dimensions.
    """
    path = Path(path)
    if labels.size and int(labels.max()) > 65535:
        raise ValueError("label ids over 65535 do not fit 16 bits")
    data = labels.astype(np.uint16)
    suffix = path.suffix.lower()
    if suffix == ".png":
        if data.ndim != 2:
            raise ValueError("PNG export takes a 2-D label map; use TIFF for stacks")
        from PIL import Image

        Image.fromarray(data).save(path)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, data)
    else:
        raise ValueError(f"export to .png, .tif or .tiff, not {suffix or 'no suffix'}")
    return path


def export_table(labels: np.ndarray, names: dict[int, str], path: str | Path) -> Path:
    """Write ``{"names": {id: name}, "labels": label_table}`` as JSON to ``path``."""
    path = Path(path)
    doc = {"names": {str(k): v for k, v in sorted(names.items())},
           "labels": label_table(labels, names)}
    path.write_text(json.dumps(doc, indent=1))
    return path
