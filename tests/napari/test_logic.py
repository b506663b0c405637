"""The plugin's pure layer logic (no Qt, no daemon): ids, combine modes, coordinate mapping,
image normalisation, region text positions, label table and export round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sam2_service.napari import logic

tifffile = pytest.importorskip("tifffile", reason="pip install -e '.[napari]'")


def test_next_label_id_is_max_plus_one() -> None:
    assert logic.next_label_id(np.zeros((3, 3), np.uint16)) == 1
    assert logic.next_label_id(np.array([[0, 7], [2, 0]])) == 8


A = np.array([[1, 1, 0, 0],
              [1, 1, 2, 0],
              [0, 0, 2, 0]], np.int32)
M = np.array([[0, 1, 1, 0],
              [0, 1, 1, 0],
              [0, 0, 0, 0]], np.uint8) * 255


@pytest.mark.parametrize("mode, expected", [
    ("add", [[1, 5, 5, 0], [1, 5, 5, 0], [0, 0, 2, 0]]),
    ("union", [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 2, 0]]),
    ("intersection", [[0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 2, 0]]),
    ("overwrite", [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 2, 0]]),
])
def test_combine_modes_on_known_masks(mode: str, expected: list) -> None:
    label = 5 if mode == "add" else 1
    before = A.copy()
    assert logic.combine(A, M, mode, label).tolist() == expected
    assert (A == before).all()  # the input is left alone


def test_combine_rejects_unknown_mode_and_shape() -> None:
    with pytest.raises(ValueError, match="unknown mode"):
        logic.combine(A, M, "xor", 1)
    with pytest.raises(ValueError, match="shape"):
        logic.combine(A, M[:2], "add", 1)


def test_world_to_xy_undoes_scale_and_translate_and_swaps_axes() -> None:
    # a layer with scale (2, 0.5) and translate (10, -4): data (row 3, col 8) is world (16, 0)
    assert logic.world_to_xy((16.0, 0.0), (2.0, 0.5), (10.0, -4.0)) == (8.5, 3.5)
    # a 3-D layer: leading axis dropped, last two used
    assert logic.world_to_xy((5.0, 3.0, 8.0), (1, 1, 1), (0, 0, 0)) == (8.5, 3.5)


def test_box_to_xyxy_takes_min_and_max_and_clips() -> None:
    corners = np.array([[3.5, 2.5], [9.5, 2.5], [9.5, 5.5], [3.5, 5.5]])  # (x, y)
    assert logic.box_to_xyxy(corners, 100, 100) == (3.5, 2.5, 9.5, 5.5)
    assert logic.box_to_xyxy(np.array([[-5, -5], [200, 200]], float), 50, 40) == (0, 0, 50, 40)


def test_to_uint8_normalises_like_micro_sam() -> None:
    u8 = np.array([[0, 255]], np.uint8)
    assert logic.to_uint8(u8) is u8
    assert logic.to_uint8(np.array([[100, 300, 500]], np.uint16)).tolist() == [[0, 128, 255]]
    assert logic.to_uint8(np.array([[-1.0, 1.0]])).tolist() == [[0, 255]]
    assert logic.to_uint8(np.full((2, 2), 7.0)).tolist() == [[0, 0], [0, 0]]


def test_image_plane_drops_alpha_and_takes_the_current_slice() -> None:
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 3] = 255
    plane = logic.image_plane(rgba, True, (0, 0))
    assert plane.image.shape == (4, 5, 3) and plane.index == ()
    stack = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    plane = logic.image_plane(stack, False, (2, 0, 0))
    assert plane.index == (2,) and plane.image.dtype == np.uint8 and plane.image.shape == (4, 5)
    assert plane.image[0, 0] == 0 and plane.image[-1, -1] == 255  # normalised within the slice
    with pytest.raises(ValueError, match="two spatial axes"):
        logic.image_plane(np.zeros(5), False, (0,))


def test_region_centres_lie_inside_their_region() -> None:
    ring = np.zeros((9, 9), np.int32)
    ring[1:8, 1:8] = 3
    ring[3:6, 3:6] = 0
    (lab, (r, c)), = logic.region_centres(ring).items()
    assert lab == 3 and ring[int(r), int(c)] == 3


def test_label_table_and_exports_round_trip(tmp_path) -> None:
    labels = np.zeros((6, 7), np.uint16)
    labels[1:3, 2:5] = 1
    labels[4:6, 0:1] = 300
    names = {1: "cell", 300: "nucleus"}
    table = logic.label_table(labels, names)
    assert table == [{"id": 1, "name": "cell", "area": 6, "bbox": [2, 1, 5, 3]},
                     {"id": 300, "name": "nucleus", "area": 2, "bbox": [0, 4, 1, 6]}]
    png = logic.export_labels(labels, tmp_path / "l.png")
    assert np.array_equal(np.asarray(Image.open(png)), labels)
    tif = logic.export_labels(labels, tmp_path / "l.tif")
    back = tifffile.imread(tif)
    assert back.dtype == np.uint16 and np.array_equal(back, labels)
    doc = json.loads(logic.export_table(labels, names, tmp_path / "l.json").read_text())
    assert doc["names"] == {"1": "cell", "300": "nucleus"} and doc["labels"] == table
    with pytest.raises(ValueError, match="65535"):
        logic.export_labels(labels.astype(np.int32) + 70000, tmp_path / "x.png")
    with pytest.raises(ValueError, match="not .bmp"):
        logic.export_labels(labels, tmp_path / "x.bmp")
