"""Each label's whole mask, for an auto request with ``objectMasks``: pure numpy.

A label of the painted map shows only the pixels of its mask that no smaller mask covers;
COCO annotations want the object's whole mask from SAM2. Untiled, that is the generator's
own RLE of the mask the label was painted from (sam2.utils.amg's uncompressed, column-major
RLE, unchanged). Tiled, a label may join pieces of several tiles: its whole mask is the union
of the masks of every piece visible in a tile's inner part (the pieces the stitched map takes
pixels from), each placed at its tile's position in the image; so the label's pixels always
lie inside it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...wire.codecs import encode_rle
from .generator import GeneratedMasks
from .labels import Tile


def object_rles(labels: np.ndarray, tiles: Sequence[Tile], maps: Sequence[np.ndarray],
                kept: Sequence[np.ndarray], results: Sequence[GeneratedMasks]
                ) -> list[dict[str, Any]]:
    """COCO uncompressed RLE (``{"size": [H, W], "counts": [...]}``, column-major, first
    run background; :func:`~sam2_service.wire.codecs.encode_rle`) of the whole mask of
    each id 1..N of ``labels``.

    Args:
        labels: the final HxW uint16 map (stitched when tiled).
        tiles: the tiles (one covering the whole image when untiled).
        maps: per tile, its painted outer-region map (ids local to the tile).
        kept: per tile, ``kept[t][k]`` the index in ``results[t]`` of local id k+1.
        results: per tile, the generator's masks (RLEs in the tile's outer region).
    """
    n = int(labels.max(initial=0))
    if len(tiles) == 1:
        return [results[0].rle(int(kept[0][k])) for k in range(n)]
    pieces: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for t, tile in enumerate(tiles):
        (y0, y1, x0, x1), (oy, _, ox, _) = tile.inner, tile.outer
        local = maps[t][y0 - oy:y1 - oy, x0 - ox:x1 - ox].ravel()
        final = labels[y0:y1, x0:x1].ravel()
        pairs = np.unique(np.stack([local, final])[:, local > 0], axis=1)
        for lo, fi in pairs.T.tolist():
            pieces[fi - 1].append((t, int(kept[t][lo - 1])))
    out = []
    for parts in pieces:
        whole = np.zeros(labels.shape, dtype=bool)
        for t, i in parts:
            oy0, oy1, ox0, ox1 = tiles[t].outer
            whole[oy0:oy1, ox0:ox1] |= results[t].mask(i)
        out.append(encode_rle(whole))
    return out
