"""Propagation through a stack as pure numpy functions (no Qt, no napari, no I/O): the frames a
video session gets for an image layer, which slices to fill, the prompts of one slice as the
daemon's (frame, x, y), which label each prompt becomes, the label <-> object id table of a
session, and writing a propagated mask into one slice for one label.

A 3-D (Z, Y, X) or time (T, Y, X[, C]) image layer is a video whose frames are its slices:
frame ``i`` is data index ``i`` along the leading axis. Coordinates the daemon gets are (x, y)
pixels of a frame, origin at the top-left pixel's corner (napari's pixel centre at data
(..., row, col) is x = col + 0.5, y = row + 0.5); boxes are XYXY pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from . import logic


def volume_frames(data: np.ndarray, rgb: bool) -> np.ndarray:
    """The frames for a video session of an image layer's ``data``: (T, H, W) greyscale or
    (T, H, W, 3) colour (RGBA's alpha dropped), in the layer's dtype (the client scales
    non-uint8 arrays to 0..255 over the whole array's min..max).

    Raises:
        ValueError: not exactly one leading (slice) axis before the two spatial axes.
    """
    spatial = data.ndim - (1 if rgb else 0)
    if spatial != 3:
        raise ValueError(f"propagation needs a 3-D (Z, Y, X) or time (T, Y, X[, C]) image; "
                         f"this one has shape {tuple(data.shape)}")
    frames = np.asarray(data)
    return frames[..., :3] if rgb else frames


def frame_range(count: int, start: int | None = None, end: int | None = None) -> tuple[int, int]:
    """The slices to fill, ``start .. end`` inclusive, of a stack of ``count`` slices; None:
    the first / the last slice.

    Raises:
        ValueError: ``start`` after ``end``, or either outside ``0 .. count - 1``.
    """
    lo = 0 if start is None else int(start)
    hi = count - 1 if end is None else int(end)
    if not (0 <= lo < count and 0 <= hi < count):
        raise ValueError(f"slices {lo}..{hi} are not all inside 0..{count - 1}")
    if lo > hi:
        raise ValueError(f"the first slice ({lo}) is after the last ({hi})")
    return lo, hi


def to_frame_xy(data: Sequence[float]) -> tuple[int, float, float]:
    """A data coordinate (z, row, col) of a 3-D layer -> (frame, x, y): the slice (rounded)
    and the daemon's pixel (:func:`.logic.data_to_xy`)."""
    x, y = logic.data_to_xy(data)
    return int(round(float(data[-3]))), x, y


@dataclass(frozen=True)
class SlicePrompts:
    """The prompts of one slice, in the daemon's pixels.

    Attributes:
        frame: the slice's index along the leading axis.
        points: (x, y, label) per point, label 1 foreground, 0 background.
        boxes: (x1, y1, x2, y2) XYXY per rectangle, clipped to the frame.
    """

    frame: int
    points: tuple[tuple[float, float, int], ...]
    boxes: tuple[tuple[float, float, float, float], ...]


def slice_prompts(frame: int, points_world: np.ndarray, foreground: Sequence[bool],
                  rects_world: Iterable[np.ndarray], scale: Sequence[float],
                  translate: Sequence[float], width: int, height: int) -> SlicePrompts:
    """The prompts lying on slice ``frame``.

    Args:
        frame: the slice (data index along the leading axis).
        points_world: (N, 3) world (z, y, x) of the points; ``foreground`` their N labels.
        rects_world: each rectangle's (4, 3) world corners.
        scale, translate: the image layer's (3 values each).
        width, height: the frame's size in pixels (boxes are clipped to it).
    """
    def on(world: np.ndarray) -> list[tuple[int, float, float]]:
        return [to_frame_xy(logic.world_to_data(w, scale, translate))
                for w in np.asarray(world, float).reshape(-1, 3)]

    points = tuple((x, y, 1 if fg else 0) for (f, x, y), fg in zip(on(points_world), foreground)
                   if f == frame)
    boxes = []
    for rect in rects_world:
        corners = on(rect)
        if corners and all(f == frame for f, _, _ in corners):
            xy = np.array([(x, y) for _, x, y in corners])
            boxes.append(logic.box_to_xyxy(xy, width, height))
    return SlicePrompts(frame, points, tuple(boxes))


def choose_labels(mode: str, target: int, count: int, live_ids: Sequence[int],
                  next_id: int) -> list[int]:
    """The label each of ``count`` prompts (the points, or each rectangle) of a slice becomes.

    In a refine mode (union, intersection, overwrite) it is the target label, so at most one
    prompt; in ``add`` mode prompt ``k`` keeps the id its result already has on the slice
    (``live_ids[k]``), else gets a new one from ``next_id`` up (the label layer's largest + 1).

    Raises:
        ValueError: an unknown mode, or several prompts for one target label.
    """
    if mode not in logic.MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(logic.MODES)}")
    if mode != "add":
        if count > 1:
            raise ValueError(f"{mode} refines one label: keep one rectangle on the slice for "
                             f"label {target}, or use add mode (one label per rectangle)")
        return [int(target)] * count
    out, fresh = [], max(int(next_id), max(live_ids, default=0) + 1)
    for k in range(count):
        if k < len(live_ids):
            out.append(int(live_ids[k]))
        else:
            out.append(fresh)
            fresh += 1
    return out


@dataclass
class ObjectTable:
    """A session's objects: (label layer name, label id) <-> object id (1, 2, ... in the order
    first prompted), so the same label of two layers is two objects."""

    ids: dict[tuple[str, int], int] = field(default_factory=dict)

    def object_id(self, layer: str, label: int) -> int:
        """The object of ``label`` in ``layer`` (a new id the first time)."""
        key = (layer, int(label))
        if key not in self.ids:
            self.ids[key] = max(self.ids.values(), default=0) + 1
        return self.ids[key]

    def label_of(self, object_id: int) -> tuple[str, int] | None:
        """(layer, label) of an object id, None for an unknown one."""
        return next((k for k, v in self.ids.items() if v == object_id), None)

    def clear(self) -> None:
        """Forget every object (the session was reset)."""
        self.ids.clear()


def write_label(plane: np.ndarray, mask: np.ndarray, label: int, mode: str) -> np.ndarray:
    """``plane`` (HxW int labels of one slice) with a propagated ``mask`` (HxW bool or uint8
    0/255) written for ``label``; other labels are never erased. Returns a new array.

    ``add`` and ``overwrite``: the label's pixels become the mask's (its old pixels outside
    the mask cleared, the mask painted where no other label is); ``union``: the mask painted
    where no other label is, the label's old pixels kept; ``intersection``: the label's
    pixels outside the mask cleared.

    Raises:
        ValueError: an unknown mode or shapes that differ.
    """
    if mode not in logic.MODES:
        raise ValueError(f"unknown mode {mode!r}; one of {', '.join(logic.MODES)}")
    if mask.shape != plane.shape:
        raise ValueError(f"mask shape {mask.shape} is not the slice's {plane.shape}")
    inside, out = mask.astype(bool), plane.copy()
    mine = out == label
    if mode == "intersection":
        out[mine & ~inside] = 0
        return out
    if mode in ("add", "overwrite"):
        out[mine & ~inside] = 0
    out[inside & ((out == 0) | mine)] = label
    return out


def write_frame(plane: np.ndarray, masks: dict[int, np.ndarray], mode: str) -> np.ndarray:
    """:func:`write_label` for each ``label -> mask`` of one slice, in increasing label order
    (where two masks overlap, the lower label keeps the pixel)."""
    out = plane
    for label in sorted(masks):
        out = write_label(out, masks[label], label, mode)
    return out
