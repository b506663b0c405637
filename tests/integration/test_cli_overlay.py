"""``sam2-service segment --overlay`` against the real daemon: mask PNG and overlay PNG."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw

from sam2_service import cli
from sam2_service.client.overlay import line_width, marker_radius

from .conftest import encode_image

pytestmark = pytest.mark.model

BBOX = (100, 50, 400, 300)
POINTS = [(250, 180), (120, 60, 0)]


def prompt_zone(size: tuple[int, int]) -> np.ndarray:
    """True where the box outline or a point marker may have been drawn (with a margin)."""
    w, h = size
    zone = Image.new("1", size, 0)
    draw = ImageDraw.Draw(zone)
    margin = line_width(w, h) + 2
    x1, y1, x2, y2 = BBOX
    draw.rectangle([x1 - margin, y1 - margin, x2 + margin, y2 + margin], outline=1,
                   width=2 * margin + 1)
    r = marker_radius(w, h) + 2
    for x, y, *_ in POINTS:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
    return np.asarray(zone, dtype=bool)


def test_segment_writes_mask_and_overlay(daemon, tmp_path, capsys):
    image = skimage.data.coffee()
    src = tmp_path / "coffee.png"
    src.write_bytes(encode_image(image, "PNG"))
    mask_path, overlay_path = tmp_path / "mask.png", tmp_path / "overlay.png"
    args = ["segment", "--socket", daemon.socket_path, "--image", str(src),
            "--bbox", ",".join(map(str, BBOX)), "--output", str(mask_path),
            "--overlay", str(overlay_path)]
    for p in POINTS:
        args += ["--point", ",".join(map(str, p))]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"wrote {mask_path}" in out and f"wrote {overlay_path}" in out

    mask = np.asarray(Image.open(mask_path)) > 0
    with Image.open(overlay_path) as im:
        assert im.format == "PNG" and im.size == (image.shape[1], image.shape[0])
        overlay = np.asarray(im.convert("RGB"))
    assert mask.shape == image.shape[:2]
    assert mask.any() and not mask.all(), "a trivial mask from the random weights: change prompts"
    changed = (overlay != image).any(axis=2)
    away = ~prompt_zone(im.size)
    np.testing.assert_array_equal(changed[away], mask[away])


def test_every_box_is_drawn_and_the_mask_id_printed(daemon, tmp_path, capsys):
    """``--box`` given twice: both boxes in the overlay (before, only ``--bbox`` was drawn),
    and a plain segment prints the ``maskId`` that ``--mask-input`` takes."""
    from sam2_service.client.overlay import BOX_COLOR

    image = skimage.data.coffee()
    src = tmp_path / "coffee.png"
    src.write_bytes(encode_image(image, "PNG"))
    overlay_path = tmp_path / "overlay.png"
    boxes = [(100, 50, 400, 300), (420, 80, 580, 380)]
    args = ["segment", "--socket", daemon.socket_path, "--image", str(src),
            "--overlay", str(overlay_path)]
    for box in boxes:
        args += ["--box", ",".join(map(str, box))]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("maskId=m") for line in out.splitlines()), out
    drawn = np.asarray(Image.open(overlay_path).convert("RGB"))
    for x1, y1, x2, y2 in boxes:
        for x, y in ((x1, y1), (x2, y1), (x1, y2), (x2, y2)):
            assert tuple(drawn[y, x]) == BOX_COLOR, (x, y)
