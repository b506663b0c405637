"""The batch pieces that need no model: inputs, the COCO writer, the manifest, whole masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from sam2_service.batch.coco import compress_rle, object_annotations, write_coco
from sam2_service.batch.inputs import collect_inputs
from sam2_service.batch.manifest import Manifest
from sam2_service.batch.runner import auto_request
from sam2_service.wire.codecs import encode_rle


def _tree(root: Path) -> Path:
    for name in ("a.png", "sub/b.jpg", "sub/deep/c.tif", "sub/notes.txt", "x/d.png"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".txt"):
            path.write_text("hi")
        else:
            Image.new("RGB", (4, 4)).save(path)
    return root


def test_folders_walk_recursively_by_image_extension(tmp_path: Path) -> None:
    root = _tree(tmp_path / "in")
    names = [i.name for i in collect_inputs([root])]
    assert names == ["a.png", "sub/b.jpg", "sub/deep/c.tif", "x/d.png"]


def test_files_globs_and_lists_name_relative_to_their_input(tmp_path: Path) -> None:
    root = _tree(tmp_path / "in")
    assert [i.name for i in collect_inputs([root / "sub" / "b.jpg"])] == ["b.jpg"]
    assert [i.name for i in collect_inputs([f"{root}/sub/**/*.*"])] == ["b.jpg", "deep/c.tif"]
    listing = root / "list.txt"
    listing.write_text("# images\na.png\n\nsub\n")
    assert [i.name for i in collect_inputs([f"@{listing}"])] == ["a.png", "b.jpg", "deep/c.tif"]
    both = collect_inputs([root, root / "a.png"])  # the same file twice is taken once
    assert [i.name for i in both].count("a.png") == 1


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    root = _tree(tmp_path / "in")
    with pytest.raises(ValueError, match="no such file or folder"):
        collect_inputs([root / "missing"])
    with pytest.raises(ValueError, match="matches no image"):
        collect_inputs([f"{root}/*.bmp"])
    Image.new("RGB", (4, 4)).save(root / "a.jpg")
    with pytest.raises(ValueError, match="would both be written as a.png"):
        collect_inputs([root])
    with pytest.raises(ValueError, match="unknown auto settings: points"):
        auto_request({"points": 3})
    with pytest.raises(ValueError, match="pointsPerSide"):
        auto_request({"points_per_side": 0})


def test_compressed_rle_is_pycocotools_encode(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    mask[0, 0] = True
    expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    got = compress_rle(encode_rle(mask))
    assert got == {"size": [37, 53], "counts": expected["counts"].decode("ascii")}
    table = [{"id": 1, "score": 0.5, "stabilityScore": 0.9, "maskRle": encode_rle(mask)}]
    (ann,) = object_annotations(table)
    assert ann["area"] == int(mask.sum()) and ann["label_id"] == 1
    ys, xs = np.nonzero(mask)
    assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    n = write_coco(tmp_path / "c.json", [{"name": "a/b.png", "width": 53, "height": 37,
                                          "objects": [ann, ann]}])
    coco = COCO(str(tmp_path / "c.json"))
    assert n == 2 and [a["id"] for a in coco.dataset["annotations"]] == [1, 2]
    np.testing.assert_array_equal(coco.annToMask(coco.loadAnns([2])[0]), mask)


def test_manifest_resumes_drops_a_torn_line_and_resets_on_new_settings(tmp_path: Path) -> None:
    m = Manifest.open(tmp_path, {"auto": {"points_per_side": 4}, "tile_shape": (64, 64)})
    m.add({"name": "a.png", "sha256": "1" * 64, "status": "done"})
    m.coco_written()
    m.add({"name": "b.png", "sha256": "2" * 64, "status": "failed", "code": "image_decode",
           "message": "x"})
    m.close()
    with open(tmp_path / "manifest.jsonl", "ab") as f:
        f.write(b'{"kind":"image","name":"c.p')  # killed mid-line
    again = Manifest.open(tmp_path, {"auto": {"points_per_side": 4}, "tile_shape": [64, 64]})
    assert not again.changed and set(again.records) == {"a.png", "b.png"}
    assert not again.coco_current  # b.png came after the last COCO write
    again.add({"name": "c.png", "sha256": "3" * 64, "status": "done"})
    again.close()
    lines = (tmp_path / "manifest.jsonl").read_bytes().splitlines()
    assert all(isinstance(orjson.loads(line), dict) for line in lines)
    other = Manifest.open(tmp_path, {"auto": {"points_per_side": 8}})
    assert other.changed and other.records == {}
    other.close()


def test_tiled_whole_masks_join_the_pieces_of_a_stitched_label() -> None:
    from sam2_service.daemon.auto.generator import GeneratedMasks
    from sam2_service.daemon.auto.labels import paint_labels, stitch_tiles, tile_grid
    from sam2_service.daemon.auto.masks import object_rles

    h, w = 8, 16
    tiles = tile_grid(h, w, (8, 8), (0, 2))
    results, maps, kept = [], [], []
    for t in tiles:  # one bar across the border, cut by each tile's outer region
        oy0, oy1, ox0, ox1 = t.outer
        bar = np.zeros((h, w), bool)
        bar[2:5, 1:15] = True
        small = np.zeros((h, w), bool)
        small[6:8, t.inner[2] + 2:t.inner[2] + 4] = True
        masks = [bar[oy0:oy1, ox0:ox1], small[oy0:oy1, ox0:ox1]]
        rles = [encode_rle(m) for m in masks]
        results.append(GeneratedMasks(rles, np.array([m.sum() for m in masks]),
                                      np.ones(2), np.ones(2)))
        m, k = paint_labels(masks[0].shape, results[-1].areas, results[-1].mask)
        maps.append(m)
        kept.append(k)
    labels, _ = stitch_tiles((h, w), tiles, maps)
    rles = object_rles(labels, tiles, maps, kept, results)
    assert len(rles) == int(labels.max()) == 3  # the bar (merged) and two small squares
    from sam2_service.wire.codecs import decode_rle

    for k, rle in enumerate(rles, start=1):
        whole = decode_rle(rle, w, h) > 0
        assert not ((labels == k) & ~whole).any()
    bar_id = int(labels[3, 8])
    expected = np.zeros((h, w), bool)
    expected[2:5, 1:15] = True
    np.testing.assert_array_equal(decode_rle(rles[bar_id - 1], w, h) > 0, expected)


def test_object_masks_field_is_checked() -> None:
    from sam2_service.wire.auto import parse_auto_request
    from sam2_service.wire.errors import InvalidRequest

    base = {"width": 4, "height": 4, "imageId": "0" * 64}
    assert parse_auto_request(base, "r").object_masks is False
    assert parse_auto_request({**base, "objectMasks": True}, "r").object_masks is True
    with pytest.raises(InvalidRequest, match="objectMasks must be true or false") as err:
        parse_auto_request({**base, "objectMasks": 1}, "r")
    assert err.value.field == "objectMasks"
