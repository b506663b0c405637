"""Label maps, tile grids and stitching (sam2_service.daemon.auto.labels), on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from sam2_service.daemon.auto.labels import label_stats, paint_labels, paint_patches, stitch_tiles, tile_grid
from sam2_service.wire.auto import decode_labels, encode_labels


def _rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_paint_largest_first_keeps_small_masks_visible_and_drops_hidden_ones():
    shape = (10, 10)
    masks = [_rect(shape, 2, 4, 2, 4),      # 4 px, on top of the big one
             _rect(shape, 0, 10, 0, 10),    # 100 px, painted first
             _rect(shape, 2, 3, 2, 3),      # 1 px, inside mask 0: painted last
             _rect(shape, 6, 8, 6, 8),      # 4 px
             _rect(shape, 6, 8, 6, 8)]      # 4 px, same: hides mask 3 entirely
    labels, kept = paint_labels(shape, [int(m.sum()) for m in masks], masks.__getitem__)
    assert labels.dtype == np.uint16
    # paint order: 1 (100), 0 (4), 3 (4), 4 (4), 2 (1); mask 3 is hidden by mask 4
    assert kept.tolist() == [1, 0, 4, 2]
    assert labels[0, 0] == 1 and labels[3, 3] == 2 and labels[7, 7] == 3 and labels[2, 2] == 4
    assert set(np.unique(labels).tolist()) == {1, 2, 3, 4}


def test_paint_refuses_more_labels_than_uint16_holds():
    shape = (1, 65536)
    with pytest.raises(ValueError, match="65,535"):
        paint_labels(shape, [1] * 65536, lambda i: _rect(shape, 0, 1, i, i + 1))


def test_label_stats_areas_and_half_open_boxes():
    labels = np.zeros((6, 8), np.uint16)
    labels[1:3, 2:5] = 1
    labels[4, 7] = 2
    areas, boxes = label_stats(labels)
    assert areas.tolist() == [6, 1]
    assert boxes.tolist() == [[2, 1, 5, 3], [7, 4, 8, 5]]


def test_labels_round_trip_little_endian():
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    text = encode_labels(labels)
    import base64
    assert base64.b64decode(text)[:4] == bytes([0, 0, 0x88, 0x13])  # 0, 5000 LE
    assert np.array_equal(decode_labels(text, 4, 3), labels)


def test_tile_grid_covers_image_with_clipped_halo():
    tiles = tile_grid(100, 150, (64, 64), (8, 8))
    assert [(t.row, t.col) for t in tiles][:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert tiles[0].inner == (0, 64, 0, 64) and tiles[0].outer == (0, 72, 0, 72)
    assert tiles[4].inner == (64, 100, 64, 128) and tiles[4].outer == (56, 100, 56, 136)
    cover = np.zeros((100, 150), int)
    for t in tiles:
        cover[t.inner[0]:t.inner[1], t.inner[2]:t.inner[3]] += 1
    assert (cover == 1).all()


def _tile_maps(truth, tiles):
    """Each tile's outer region of a known label map, relabelled 1..n per tile."""
    maps = []
    for t in tiles:
        crop = truth[t.outer[0]:t.outer[1], t.outer[2]:t.outer[3]]
        _, inv = np.unique(crop, return_inverse=True)
        ids = np.unique(crop)
        local = inv.reshape(crop.shape) + (0 if ids[0] == 0 else 1)
        maps.append(local.astype(np.uint16))
    return maps


def _same_partition(a, b):
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(pairs.T) == len(np.unique(a)) == len(np.unique(b))


@pytest.mark.parametrize("halo", [(0, 0), (4, 4)])
def test_stitching_recovers_objects_crossing_tile_borders(halo):
    truth = np.zeros((40, 40), np.uint16)
    truth[5:35, 15:25] = 1   # crosses the vertical border at x=20 and the horizontal at y=20
    truth[2:8, 2:8] = 2      # inside tile (0, 0)
    truth[25:38, 28:39] = 3  # inside tile (1, 1)
    truth[18:23, 0:10] = 4   # crosses y=20 only
    tiles = tile_grid(40, 40, (20, 20), halo)
    labels, source = stitch_tiles((40, 40), tiles, _tile_maps(truth, tiles))
    assert labels.dtype == np.uint16
    assert _same_partition(labels, truth)
    ids = np.unique(labels)
    assert ids.tolist() == list(range(0, 5))  # 1..N, no gaps, no duplicates
    areas = np.bincount(labels.ravel())[1:]
    assert (np.diff(areas) <= 0).all()  # numbered by decreasing area
    assert len(source) == 4


def test_stitching_keeps_touching_different_objects_apart():
    truth = np.zeros((20, 40), np.uint16)
    truth[:, 0:20] = 1  # ends at the border
    truth[:, 20:40] = 2  # starts at it: touches object 1 along the whole border
    tiles = tile_grid(20, 40, (20, 20), (0, 4))
    labels, _ = stitch_tiles((20, 40), tiles, _tile_maps(truth, tiles))
    assert _same_partition(labels, truth) and labels.max() == 2


def test_stitching_does_not_merge_low_overlap():
    """A tile's halo view of a label that disagrees with its neighbour stays apart."""
    tiles = tile_grid(10, 20, (10, 10), (0, 2))
    left = np.zeros((10, 12), np.uint16)
    left[:, 5:12] = 1        # left tile sees one object reaching x=12
    right = np.zeros((10, 12), np.uint16)  # outer x 8..20
    right[0:2, 0:12] = 1     # right tile: a thin object, low IoU with the left's
    labels, _ = stitch_tiles((10, 20), tiles, [left, right])
    assert labels.max() == 2


def test_label_colours_distinct_and_overlay_blends_only_labels():
    from sam2_service.client.auto import label_colours, label_overlay

    colours = label_colours(50)
    assert colours.shape == (51, 3) and colours[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in colours[1:].tolist()}) == 50
    image = np.full((4, 4, 3), 100, np.uint8)
    labels = np.zeros((4, 4), np.uint16)
    labels[0, 0] = 3
    out = label_overlay(image, labels, alpha=0.5)
    assert (out[1:] == 100).all()
    assert out[0, 0].tolist() == np.round(50 + colours[3] / 2).astype(int).tolist()
    with pytest.raises(ValueError):
        label_overlay(image, labels[:2])


def test_paint_patches_equals_painting_whole_masks():
    """Masks given by their boxes' pixels paint the same map as the whole masks."""
    from sam2_service.daemon.auto.fastgen import PackedMasks

    rng = np.random.default_rng(5)
    shape = (40, 50)
    packed, masks = PackedMasks(shape), []
    for _ in range(30):
        m = np.zeros(shape, bool)
        y0, x0 = rng.integers(0, 30), rng.integers(0, 40)
        m[y0:y0 + rng.integers(1, 10), x0:x0 + rng.integers(1, 10)] = True
        m &= rng.random(shape) < 0.8  # holes: a box is not the mask
        masks.append(m)
        ys, xs = np.nonzero(m)
        box = (xs.min(), ys.min(), xs.max(), ys.max()) if len(ys) else (0, 0, 0, 0)
        packed.add(m, tuple(int(v) for v in box), (0, 0))
    areas = [int(m.sum()) for m in masks]
    expected, kept = paint_labels(shape, areas, masks.__getitem__)
    got, kept2 = paint_patches(shape, areas, packed.patch)
    assert np.array_equal(got, expected) and np.array_equal(kept, kept2)
    assert expected.max() > 10
    for i in (0, 7, 29):
        assert np.array_equal(packed.mask(i), masks[i])
    sub = packed.take(np.array([3, 1]))
    assert np.array_equal(sub.mask(0), masks[3]) and np.array_equal(sub.mask(1), masks[1])


def test_packed_masks_place_a_crop_in_the_frame_and_give_its_rle():
    from sam2_service.daemon.auto.fastgen import PackedMasks
    from sam2_service.wire.codecs import decode_rle

    crop = np.zeros((6, 8), bool)
    crop[2:4, 1:5] = True
    packed = PackedMasks((20, 30))
    packed.add(crop, (1, 2, 4, 3), (10, 20))  # the crop's top-left at row 10, column 20
    whole = np.zeros((20, 30), bool)
    whole[12:14, 21:25] = True
    assert np.array_equal(packed.mask(0), whole)
    assert packed.patch(0)[:2] == (12, 21)
    rle = packed.rle(0)
    assert rle["size"] == [20, 30] and np.array_equal(decode_rle(rle, 30, 20) > 0, whole)
