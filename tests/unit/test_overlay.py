"""sam2_service.client.overlay: the mask blended in, the box and the point markers drawn on top."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam2_service.client import overlay
from sam2_service.client.overlay import (
    BACKGROUND_COLOR,
    BOX_COLOR,
    FOREGROUND_COLOR,
    MASK_ALPHA,
    MASK_COLOR,
    draw_overlay,
    marker_radius,
    write_overlay,
)

H, W = 120, 160


@pytest.fixture
def image() -> np.ndarray:
    """Random mid-range colours (60..199): no pixel equals any of the overlay's colours."""
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, size=(H, W, 3), dtype=np.uint8)


@pytest.fixture
def mask() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[30:80, 40:100] = 255
    return m


def changed(a: Image.Image, b: np.ndarray) -> np.ndarray:
    return (np.asarray(a) != b).any(axis=2)


def test_mask_pixels_change_and_the_rest_stays(image, mask):
    out = draw_overlay(image, mask)
    assert out.mode == "RGB" and out.size == (W, H)
    np.testing.assert_array_equal(changed(out, image), mask > 0)
    inside = np.asarray(out)[50, 70].astype(float)  # inside, away from the contour
    expected = (1 - MASK_ALPHA) * image[50, 70] + MASK_ALPHA * np.array(MASK_COLOR)
    np.testing.assert_allclose(inside, expected, atol=1)
    assert tuple(np.asarray(out)[30, 70]) == MASK_COLOR  # contour on the mask's top edge


def test_input_is_not_modified_and_pil_input_works(image, mask):
    before = image.copy()
    a = draw_overlay(image, mask)
    b = draw_overlay(Image.fromarray(image).convert("RGBA"), mask.astype(bool))
    np.testing.assert_array_equal(image, before)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_box_edges_have_the_box_colour(image):
    out = np.asarray(draw_overlay(image, np.zeros((H, W), bool), bbox=(20, 10, 140, 100)))
    for y, x in ((10, 80), (100, 80), (55, 20), (55, 140)):
        assert tuple(out[y, x]) == BOX_COLOR, (y, x)
    np.testing.assert_array_equal(out[55, 80], image[55, 80])  # inside, away from the edges
    np.testing.assert_array_equal(out[5, 5], image[5, 5])  # outside


def test_point_markers(image):
    points = [(30, 30), (120, 90, 0), (70, 60, 1)]
    out = np.asarray(draw_overlay(image, np.zeros((H, W), bool), points=points))
    assert tuple(out[30, 30]) == FOREGROUND_COLOR
    assert tuple(out[60, 70]) == FOREGROUND_COLOR
    assert tuple(out[90, 120]) == BACKGROUND_COLOR
    r = marker_radius(W, H)
    np.testing.assert_array_equal(out[30, 30 + r + 3], image[30, 30 + r + 3])


def test_marker_size_and_line_width_grow_with_the_image():
    assert marker_radius(160, 120) == 3
    assert marker_radius(4000, 3000) == 38
    assert overlay.line_width(160, 120) == 1 and overlay.line_width(4000, 3000) == 8


@pytest.mark.parametrize("bad_mask, words", [
    (np.zeros((H, W + 1), bool), ["161x120", "160x120"]),
    (np.zeros((H, W, 1), bool), ["shape (120, 160, 1)"]),
])
def test_size_mismatch_raises_a_clear_value_error(image, bad_mask, words):
    with pytest.raises(ValueError, match="mask and image sizes differ") as info:
        draw_overlay(image, bad_mask)
    for w in words:
        assert w in str(info.value)


def test_non_rgb_array_is_refused(mask):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        draw_overlay(np.zeros((H, W), np.uint8), mask)


def test_write_overlay_saves_a_png(tmp_path, image, mask):
    src = tmp_path / "in.jpg"
    Image.fromarray(image).save(src, quality=95)
    out = write_overlay(src, mask, tmp_path / "out.png", bbox=(1, 1, 150, 110), points=[(70, 50)])
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (W, H)


@pytest.mark.parametrize("top, left", [(30, 40), (0, 0)])
def test_contour_is_edge_pixels_wide_also_on_the_image_border(top, left):
    """A rectangle's contour is the ring ``edge`` pixels wide inside it; where the rectangle
    touches the image border that border counts as background."""
    m = np.zeros((H, W), bool)
    m[top:80, left:100] = True
    ring = m.copy()
    ring[top + 3:77, left + 3:97] = False
    np.testing.assert_array_equal(overlay._inner_edge(m, 3), ring)
    assert not overlay._inner_edge(np.zeros((H, W), bool), 3).any()


def test_blend_is_the_rounded_mix_for_every_value():
    """Every uint8 value in every channel blends to round((1 - alpha) * v + alpha * colour)."""
    rgb = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # (1, 256, 3)
    out = overlay.blend_mask(rgb, np.ones((1, 256), bool), edge=0)
    expected = np.rint((1 - MASK_ALPHA) * rgb.astype(float) + MASK_ALPHA * np.array(MASK_COLOR))
    np.testing.assert_allclose(out, expected, atol=1)
