"""prompts.validate: geometry against the decoded image, and SAM2's prompt arrays."""

from __future__ import annotations

import numpy as np
import pytest

from sam2_service.daemon.inference.prompts import validate
from sam2_service.wire.errors import InvalidRequest
from sam2_service.wire.schema import BBox, Point, SegmentRequest

W, H = 40, 30  # non-square on purpose: (H, W) vs (W, H) mix-ups show


def req(bbox=None, points=(), width=W, height=H):
    return SegmentRequest("r1", width, height, "AAAA", bbox, tuple(points))


def invalid(request, field, hw=(H, W)):
    with pytest.raises(InvalidRequest) as info:
        validate(request, hw)
    assert info.value.code == "invalid_request"
    assert info.value.field == field
    return info.value


# --- size -------------------------------------------------------------------------------


def test_width_mismatch_names_width():
    err = invalid(req(width=W + 1), "width")
    assert "width" in err.message and str(W + 1) in err.message


def test_height_mismatch_names_height():
    err = invalid(req(height=H - 1), "height")
    assert "height" in err.message


def test_swapped_width_height_rejected():
    # image_hw is (H, W); a request claiming W x H must not pass against a H x W image
    invalid(req(), "width", hw=(W, H))


# --- bbox -------------------------------------------------------------------------------


def test_bbox_inside_unchanged():
    p = validate(req(bbox=BBox(1.5, 2, 30, 20)), (H, W))
    np.testing.assert_array_equal(p.box, np.array([1.5, 2, 30, 20], dtype=np.float32))
    assert p.box.dtype == np.float32
    assert p.box.shape == (4,)
    assert p.point_coords is None and p.point_labels is None
    assert p.multimask_output is False


@pytest.mark.parametrize("box", [BBox(10, 5, 9, 20), BBox(10, 20, 30, 5)])
def test_inverted_bbox_rejected(box):
    err = invalid(req(bbox=box), "bbox")
    assert "inverted" in err.message


@pytest.mark.parametrize("box", [BBox(10, 5, 10, 20), BBox(10, 5, 20, 5)])
def test_zero_area_bbox_rejected(box):
    invalid(req(bbox=box), "bbox")


def test_bbox_partly_outside_is_clipped():
    p = validate(req(bbox=BBox(-10, -5, 50, 25)), (H, W))
    np.testing.assert_array_equal(p.box, np.array([0, 0, W, 25], dtype=np.float32))


def test_bbox_clipped_on_far_edges():
    p = validate(req(bbox=BBox(35, 20, 100, 100)), (H, W))
    np.testing.assert_array_equal(p.box, np.array([35, 20, W, H], dtype=np.float32))


def test_bbox_covering_whole_image_exactly():
    p = validate(req(bbox=BBox(0, 0, W, H)), (H, W))
    np.testing.assert_array_equal(p.box, [0, 0, W, H])


@pytest.mark.parametrize("box", [
    BBox(W + 1, 0, W + 10, 10),   # right of the image
    BBox(-20, 0, -1, 10),         # left
    BBox(0, H, 10, H + 5),        # below (touches bottom edge only)
    BBox(0, -9, 10, 0),           # above (touches top edge only)
    BBox(W, 0, W + 5, H),         # touches the right edge only
])
def test_bbox_fully_outside_rejected(box):
    err = invalid(req(bbox=box), "bbox")
    assert "no area" in err.message


# --- points -----------------------------------------------------------------------------


@pytest.mark.parametrize("pt", [Point(-0.1, 5, 1), Point(5, -1, 1), Point(W + 0.5, 5, 1),
                                Point(5, H + 1, 0)])
def test_point_outside_rejected_naming_index(pt):
    err = invalid(req(points=[Point(1, 1, 1), Point(2, 2, 0), pt]), "points[2]")
    assert "points[2]" in err.message


def test_points_on_the_border_accepted():
    p = validate(req(points=[Point(0, 0, 1), Point(W, H, 0)]), (H, W))
    np.testing.assert_array_equal(p.point_coords, [[0, 0], [W, H]])


def test_no_prompts_means_whole_image_box():
    p = validate(req(), (H, W))
    np.testing.assert_array_equal(p.box, np.array([0, 0, W, H], dtype=np.float32))
    assert p.box.dtype == np.float32
    assert p.point_coords is None and p.point_labels is None
    assert p.multimask_output is False


def test_single_point_without_box_is_multimask():
    p = validate(req(points=[Point(3.5, 4.25, 1)]), (H, W))
    assert p.multimask_output is True
    assert p.box is None
    assert p.point_coords.dtype == np.float32 and p.point_coords.shape == (1, 2)
    assert p.point_labels.dtype == np.int32 and p.point_labels.shape == (1,)
    np.testing.assert_array_equal(p.point_coords, [[3.5, 4.25]])
    np.testing.assert_array_equal(p.point_labels, [1])


def test_single_point_with_box_is_not_multimask():
    p = validate(req(bbox=BBox(1, 1, 20, 20), points=[Point(5, 5, 1)]), (H, W))
    assert p.multimask_output is False
    assert p.box.shape == (4,)
    assert p.point_coords.shape == (1, 2)


def test_two_points_not_multimask():
    p = validate(req(points=[Point(5, 6, 1), Point(7, 8, 0)]), (H, W))
    assert p.multimask_output is False
    assert p.box is None
    assert p.point_coords.shape == (2, 2)
    assert p.point_coords.dtype == np.float32
    assert p.point_labels.dtype == np.int32
    np.testing.assert_array_equal(p.point_coords, [[5, 6], [7, 8]])  # (x, y) order kept
    np.testing.assert_array_equal(p.point_labels, [1, 0])


def test_many_points_shapes():
    pts = [Point(i, i / 2, i % 2) for i in range(7)]
    p = validate(req(points=pts), (H, W))
    assert p.point_coords.shape == (7, 2)
    assert p.point_labels.shape == (7,)
    np.testing.assert_array_equal(p.point_labels, [0, 1, 0, 1, 0, 1, 0])


def test_size_checked_before_prompts():
    # both wrong: the size error wins
    invalid(req(width=1, bbox=BBox(5, 5, 1, 1)), "width")
