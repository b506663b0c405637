"""Label maps from masks, tile grids and the stitching of tiled label maps: pure numpy.

A label map is an HxW ``uint16`` array, 0 background and 1..N objects. Coordinates are
pixels, rows (y) down and columns (x) right from the top-left corner; boxes and tile
extents are half-open, ``[y0, y1) x [x0, x1)``.

Stitching (used by ``{"op": "auto"}`` with ``tileShape``; after micro-sam's tiled automatic
segmentation, which segments each tile with a halo, keeps the inner tile and merges labels
that overlap across tile borders). Here:

1. The image is cut into inner tiles of ``tile`` (h, w) pixels (the last row and column
   smaller); each is segmented over its *outer* region, the inner tile grown by ``halo``
   on every side and clipped to the image.
2. The stitched map takes each inner tile from its own tile's labels, with ids offset so
   that no two tiles share an id.
3. For every pair of tiles sharing an edge, labels are compared where both tiles have a
   segmentation: the overlap of their outer regions (``2 * halo`` wide across the border).
   Two labels are merged (union-find) when their IoU in that overlap is at least
   ``iou_threshold`` (:data:`STITCH_IOU`). With a halo of 0 there is no overlap, and the
   two one-pixel lines facing each other across the border are compared instead.
4. Merged labels take one id; ids are renumbered 1..N by decreasing visible area.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

#: IoU in the tiles' overlap above which two labels across a tile border are one object.
#: Half: the labels mostly agree (micro-sam's stitching thresholds overlap likewise).
STITCH_IOU = 0.5


def paint_labels(shape: tuple[int, int], areas: Sequence[int],
                 get_mask: Callable[[int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Paint masks largest first into a label map, so smaller masks stay visible on top.

    Masks are painted by decreasing ``areas`` (stable: equal areas keep their order) with
    ids 1, 2, ... in that order; masks that end up entirely hidden are then dropped and the
    ids made consecutive again, keeping their order, so every id 1..N is in the map.

    Args:
        shape: (H, W) of the map.
        areas: pixel count of each mask (SAM2AutomaticMaskGenerator's ``area``).
        get_mask: ``get_mask(i)`` is mask i, HxW bool (decoded lazily, one at a time).

    Returns:
        (label map HxW uint16, kept) where ``kept[k]`` is the index of the mask with id k+1.

    Raises:
        ValueError: more than 65,535 masks would be visible (a uint16 map cannot hold them).
    """
    return paint_patches(shape, areas, lambda i: (0, 0, get_mask(i)))


def paint_patches(shape: tuple[int, int], areas: Sequence[int],
                  get_patch: Callable[[int], tuple[int, int, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`paint_labels` with each mask given as ``get_patch(i)`` = (y0, x0, h x w bool),
    its pixels within the box at row y0, column x0 (its bounding box, so that painting
    costs the box's pixels rather than the map's). Same result, same errors."""
    order = np.argsort(-np.asarray(areas, dtype=np.int64), kind="stable")
    labels = np.zeros(shape, dtype=np.int32)
    for k, i in enumerate(order):
        y0, x0, patch = get_patch(int(i))
        labels[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]][patch] = k + 1
    present = np.bincount(labels.ravel(), minlength=len(order) + 1)[1:] > 0
    if int(present.sum()) > 65535:
        raise ValueError(f"{int(present.sum())} visible masks, more than the 65,535 a uint16 "
                         "label map can hold")
    lut = np.zeros(len(order) + 1, dtype=np.uint16)
    lut[1:][present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint16)
    return lut[labels], order[present]


def label_stats(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Visible area and bounding box of each id 1..N of a label map.

    Returns:
        (areas, boxes): ``areas[k]`` pixels of id k+1 (int64, N); ``boxes[k]`` its
        half-open box (x1, y1, x2, y2) in pixels (int64, Nx4; zeros for an absent id).
    """
    n = int(labels.max(initial=0))
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)[1:].astype(np.int64)
    boxes = np.zeros((n, 4), dtype=np.int64)
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return areas, boxes
    ids = flat[idx]
    order = np.argsort(ids, kind="stable")
    ids, idx = ids[order], idx[order]
    ys, xs = np.divmod(idx, labels.shape[1])
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    rows = ids[starts].astype(np.int64) - 1
    boxes[rows, 0] = np.minimum.reduceat(xs, starts)
    boxes[rows, 1] = np.minimum.reduceat(ys, starts)
    boxes[rows, 2] = np.maximum.reduceat(xs, starts) + 1
    boxes[rows, 3] = np.maximum.reduceat(ys, starts) + 1
    return areas, boxes


@dataclass(frozen=True)
class Tile:
    """One tile: ``inner`` and ``outer`` (y0, y1, x0, x1), half-open, in image pixels;
    ``row``, ``col`` its place in the grid."""

    row: int
    col: int
    inner: tuple[int, int, int, int]
    outer: tuple[int, int, int, int]


def tile_grid(height: int, width: int, tile: tuple[int, int],
              halo: tuple[int, int]) -> list[Tile]:
    """Tiles of ``tile`` (h, w) covering an image row by row, each grown by ``halo``
    (h, w) on every side and clipped to the image."""
    tiles = []
    for r, y0 in enumerate(range(0, height, tile[0])):
        for c, x0 in enumerate(range(0, width, tile[1])):
            y1, x1 = min(y0 + tile[0], height), min(x0 + tile[1], width)
            outer = (max(0, y0 - halo[0]), min(height, y1 + halo[0]),
                     max(0, x0 - halo[1]), min(width, x1 + halo[1]))
            tiles.append(Tile(r, c, (y0, y1, x0, x1), outer))
    return tiles


def _crop(tile_labels: np.ndarray, tile: Tile, box: tuple[int, int, int, int]) -> np.ndarray:
    oy, ox = tile.outer[0], tile.outer[2]
    return tile_labels[box[0] - oy:box[1] - oy, box[2] - ox:box[3] - ox]


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def _merge_pairs(a: np.ndarray, b: np.ndarray, parent: np.ndarray, iou: float) -> None:
    """Union labels of two aligned global-id arrays whose IoU over them is >= ``iou``."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return
    pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    ua, ca = np.unique(a[a > 0], return_counts=True)
    ub, cb = np.unique(b[b > 0], return_counts=True)
    size_a, size_b = dict(zip(ua.tolist(), ca.tolist())), dict(zip(ub.tolist(), cb.tolist()))
    for (la, lb), n in zip(pairs.T.tolist(), counts.tolist()):
        if n / (size_a[la] + size_b[lb] - n) >= iou:
            ra, rb = _find(parent, la), _find(parent, lb)
            parent[max(ra, rb)] = min(ra, rb)


def _border_views(ta: Tile, la: np.ndarray, tb: Tile, lb: np.ndarray,
                  out: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """What to compare across the border of edge-neighbours ``ta`` (left/above) and ``tb``:
    both tiles' labels over their outer overlap, or with no overlap (halo 0) the stitched
    map's two facing pixel lines."""
    y0, y1 = max(ta.outer[0], tb.outer[0]), min(ta.outer[1], tb.outer[1])
    x0, x1 = max(ta.outer[2], tb.outer[2]), min(ta.outer[3], tb.outer[3])
    if y1 > y0 and x1 > x0:
        box = (y0, y1, x0, x1)
        return _crop(la, ta, box), _crop(lb, tb, box)
    if ta.row == tb.row:  # vertical border at x = tb.inner[2]
        x, (y0, y1) = tb.inner[2], (ta.inner[0], ta.inner[1])
        return out[y0:y1, x - 1], out[y0:y1, x]
    y, (x0, x1) = tb.inner[0], (ta.inner[2], ta.inner[3])
    return out[y - 1, x0:x1], out[y, x0:x1]


def stitch_tiles(shape: tuple[int, int], tiles: Sequence[Tile], tile_labels: Sequence[np.ndarray],
                 iou_threshold: float = STITCH_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Stitch per-tile label maps into one (see the module docstring for the method).

    Args:
        shape: (H, W) of the image.
        tiles: from :func:`tile_grid`.
        tile_labels: per tile, its outer region's label map (uint16, ids 1..n_t).
        iou_threshold: IoU at which labels across a border merge.

    Returns:
        (labels, source): the stitched HxW uint16 map, ids 1..N by decreasing area; and for
        each id k+1, ``source[k] = (tile index, local id)`` of its largest visible piece
        (int64, Nx2), to carry that piece's scores.

    Raises:
        ValueError: more than 65,535 labels after stitching.
    """
    offsets = np.cumsum([0] + [int(t.max(initial=0)) for t in tile_labels])
    glob = [t.astype(np.int64) + np.where(t > 0, offsets[i], 0) for i, t in enumerate(tile_labels)]
    out = np.zeros(shape, dtype=np.int64)
    for tile, g in zip(tiles, glob):
        out[tile.inner[0]:tile.inner[1], tile.inner[2]:tile.inner[3]] = _crop(g, tile, tile.inner)
    parent = np.arange(offsets[-1] + 1)
    where = {(t.row, t.col): i for i, t in enumerate(tiles)}
    for i, t in enumerate(tiles):
        for j in (where.get((t.row, t.col + 1)), where.get((t.row + 1, t.col))):
            if j is not None:
                a, b = _border_views(t, glob[i], tiles[j], glob[j], out)
                _merge_pairs(a, b, parent, iou_threshold)
    roots = np.array([_find(parent, i) for i in range(len(parent))])
    piece_area = np.bincount(out.ravel(), minlength=len(parent))
    piece_area[0] = 0
    group_area = np.bincount(roots, weights=piece_area, minlength=len(parent))
    groups = np.flatnonzero(group_area > 0)
    groups = groups[np.argsort(-group_area[groups], kind="stable")]
    if len(groups) > 65535:
        raise ValueError(f"{len(groups)} labels after stitching, more than the 65,535 a uint16 "
                         "label map can hold")
    lut = np.zeros(len(parent), dtype=np.uint16)
    lut[groups] = np.arange(1, len(groups) + 1)
    best = np.zeros(len(parent), dtype=np.int64)  # per root: its largest piece
    for piece in np.argsort(piece_area, kind="stable"):
        if piece_area[piece] > 0:
            best[roots[piece]] = piece
    tile_of = np.searchsorted(offsets, best[groups], side="left") - 1
    source = np.stack([tile_of, best[groups] - offsets[tile_of]], axis=1)
    return lut[roots][out], source
