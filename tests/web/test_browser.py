"""The page in headless Chromium (Debian's ``chromium``, driven by Playwright through
``executable_path``; no browser download): load /app, open an image, click at two display
scales with devicePixelRatio 2, and check that each click reached the daemon as the right image
pixel, that the overlay is drawn and the score shown; then reconnection, "new object", the
mask and label downloads, touch (tap, long press), and a 1x1 image dropped on the page.
The screenshot is kept (under
``$SAM2_WEB_ARTIFACTS`` when set, else the test's temp directory)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_service.client import Client
from sam2_service.wire.codecs import encode_png

from .conftest import Gateway, artifacts_dir, click_pixel

pytestmark = pytest.mark.model

#: Pixels of the overlay canvas with anything drawn on them.
PAINTED = """() => {
    const c = document.getElementById('overlay');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""


def test_page_click_to_segment_at_two_display_scales(browser_page, gateway: Gateway, daemon,
                                                     tmp_path: Path) -> None:
    from skimage import data

    photo = data.coffee()  # 600x400
    png = encode_png(photo)
    image_file = tmp_path / "coffee.png"
    image_file.write_bytes(png)
    page, sent, received = browser_page, [], []
    page.on("websocket", lambda ws: (ws.on("framesent", lambda f: sent.append(f)),
                                     ws.on("framereceived", lambda f: received.append(f))))
    page.goto(gateway.url + "/app")
    page.wait_for_function("window.sam2 && window.sam2.sessionId !== null", timeout=30_000)
    assert page.locator("#session").inner_text() == page.evaluate("window.sam2.sessionId")
    page.set_input_files("#file", str(image_file))
    page.wait_for_function("window.sam2.loaded", timeout=120_000)
    assert page.locator("#size").inner_text() == "600 × 400"

    page.select_option("#zoom", "2")  # 1200x800 CSS pixels, 2400x1600 device pixels
    assert page.locator("#overlay").bounding_box()["width"] == 1200
    click_pixel(page, 450, 300, 600, 400)
    page.wait_for_function("window.sam2.lastResult && window.sam2.lastResult.num_points === 1",
                           timeout=120_000)
    page.select_option("#zoom", "0.5")  # 300x200 CSS pixels: one CSS pixel = 2 image pixels
    assert page.locator("#overlay").bounding_box()["width"] == 300
    click_pixel(page, 101, 351, 600, 400, button="right")
    page.wait_for_function("window.sam2.lastResult && window.sam2.lastResult.num_points === 2",
                           timeout=120_000)

    clicks = [json.loads(t) for t in sent if '"click"' in t]
    assert [(c["x"], c["y"], c["label"]) for c in clicks] == [(450, 300, 1), (101, 351, 0)]
    results = [json.loads(t) for t in received if '"segmentation_result"' in t]
    with Client(daemon.socket_path) as c:
        expected = c.segment(png, points=[(450, 300, 1), (101, 351, 0)]).mask
    with Image.open(io.BytesIO(base64.b64decode(results[-1]["mask"]))) as im:
        np.testing.assert_array_equal(np.asarray(im), expected)  # what the daemon answers for them
    assert page.locator("#points").inner_text() == "2"
    assert page.locator("#score").inner_text() == f"{results[-1]['score']:.3f}"
    assert page.locator("#latency").inner_text().endswith("ms)")

    overlay_drawn_and_screenshot_kept(page, expected, tmp_path)
    reconnect_and_new_object(page, daemon.socket_path, png, expected, tmp_path)


def overlay_drawn_and_screenshot_kept(page, mask: np.ndarray, tmp_path: Path) -> None:
    """The mask is painted on the overlay (more than the markers alone); keep a screenshot."""
    page.select_option("#zoom", "fit")
    assert mask.any(), "these points were chosen for a non-empty mask with the test's weights"
    with_mask = page.evaluate(PAINTED)
    page.uncheck("#show-mask")
    markers_only = page.evaluate(PAINTED)
    page.check("#show-mask")
    assert with_mask > markers_only > 0, (with_mask, markers_only)
    shot = artifacts_dir(tmp_path) / "web-screenshot.png"
    page.screenshot(path=str(shot), scale="css")
    assert shot.stat().st_size > 10_000


def reconnect_and_new_object(page, socket_path: str, png: bytes, first: np.ndarray,
                             tmp_path: Path) -> None:
    """The connection drops: the page reconnects, resends the image and its points and gets
    the same mask. Then "New object" keeps that mask, a click starts object 2, and the
    downloads give object 2's mask and a label image of both."""
    old = page.evaluate("window.sam2.sessionId")
    page.evaluate("window.sam2.lastResult = null; window.sam2.ws.close()")
    page.wait_for_function(f"window.sam2.sessionId && window.sam2.sessionId !== '{old}' && "
                           "window.sam2.lastResult && window.sam2.lastResult.num_points === 2",
                           timeout=120_000)
    assert page.locator("#session").inner_text() != old
    page.click("#new-object")
    assert page.evaluate("[window.sam2.objects.length, window.sam2.points.length]") == [1, 0]
    click_pixel(page, 150, 100, 600, 400)
    page.wait_for_function("window.sam2.lastResult && window.sam2.lastResult.num_points === 1",
                           timeout=120_000)
    with Client(socket_path) as c:
        second = c.segment(png, points=[(150, 100, 1)]).mask
    with page.expect_download() as download:
        page.click("#download")
    np.testing.assert_array_equal(_png_array(download.value.path()), second)
    with page.expect_download() as download:
        page.click("#download-labels")
    with Image.open(download.value.path()) as im:  # greyscale, as docs/web.md says (was RGBA)
        assert (im.format, im.mode) == ("PNG", "L")
        labels = np.asarray(im)
    want = np.where(second > 0, 2, np.where(first > 0, 1, 0))
    np.testing.assert_array_equal(labels, want)
    touch(page)
    drop_a_one_pixel_image(page)


def drop_a_one_pixel_image(page) -> None:
    """Clear the image, drop a 1x1 PNG on the page (drag and drop), click: pixel (0, 0)."""
    page.click("#clear")
    assert page.evaluate("window.sam2.image") is None
    assert "empty" in page.get_attribute("#stage", "class")
    one = base64.b64encode(encode_png(np.full((1, 1, 3), 90, np.uint8))).decode()
    page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'one.png', {type: 'image/png'}));
        document.getElementById('stage').dispatchEvent(
            new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", one)
    page.wait_for_function("window.sam2.loaded && window.sam2.image.width === 1", timeout=120_000)
    box = page.locator("#overlay").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("window.sam2.lastResult && window.sam2.lastResult.num_points === 1",
                           timeout=120_000)
    assert page.evaluate("window.sam2.points") == [{"x": 0, "y": 0, "label": 1}]
    assert page.locator("#size").inner_text() == "1 × 1"


def touch(page) -> None:
    """A tap adds a foreground point, a long press (0.8 s) a background point."""
    page.click("#reset")
    box = page.locator("#overlay").bounding_box()
    scale = box["width"] / 600
    page.touchscreen.tap(box["x"] + 200.5 * scale, box["y"] + 150.5 * scale)
    cdp = page.context.new_cdp_session(page)
    where = {"x": box["x"] + 250.5 * scale, "y": box["y"] + 150.5 * scale}
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [where]})
    page.wait_for_timeout(800)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    page.wait_for_function("window.sam2.points.length === 2", timeout=10_000)
    assert page.evaluate("window.sam2.points") == [{"x": 200, "y": 150, "label": 1},
                                                   {"x": 250, "y": 150, "label": 0}]


def _png_array(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im)
