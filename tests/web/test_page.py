"""The page in headless Chromium when things go wrong or need saying: the daemon down, random
weights, the daemon's point limit, connections closed while the image loads, a restarted
gateway on the same port, greyscale label downloads (read back with Pillow), and status text
that wraps between words."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2_service.wire.codecs import encode_png

from .conftest import Gateway, click_pixel, small_photo, start_gateway, stop

pytestmark = pytest.mark.model

LONG = 120_000  # ms: the model on a shared CPU


def _open(page, tmp_path: Path, pixels: np.ndarray, name: str = "photo.png") -> None:
    path = tmp_path / name
    path.write_bytes(encode_png(pixels))
    page.set_input_files("#file", str(path))


def _goto(page, gateway: Gateway) -> None:
    page.goto(gateway.url + "/app")
    page.wait_for_function("window.sam2 && window.sam2.sessionId !== null", timeout=30_000)


def _inits(frames: list) -> int:
    return sum('"type":"init"' in f.replace(" ", "") for f in frames if isinstance(f, str))


def test_status_wraps_between_words(browser_page, gateway: Gateway) -> None:
    """Before: `word-break: break-all` split words at the panel's edge."""
    page = browser_page
    _goto(page, gateway)
    words = page.evaluate("""() => {
        const el = document.getElementById('status');
        el.textContent = 'the gateway closed the connection three times while loading ' +
                         'this image; it is not sent again (open another image)';
        const node = el.firstChild, text = node.textContent, broken = [];
        let at = 0;
        for (const word of text.split(' ')) {
            const r = document.createRange();
            r.setStart(node, at); r.setEnd(node, at + word.length);
            const tops = new Set([...r.getClientRects()].map((b) => Math.round(b.top)));
            if (tops.size > 1) broken.push(word);
            at += word.length + 1;
        }
        return {broken, height: el.getBoundingClientRect().height};
    }""")
    assert words["broken"] == [] and words["height"] > 40, words  # it wraps, between words


def test_page_says_the_daemon_is_down_and_fails_the_image(browser_page, tmp_path: Path) -> None:
    """Before: "connected", then a click waited for ever on "the image is still loading"."""
    g = start_gateway(tmp_path, str(tmp_path / "no-daemon.sock"))
    page, sent = browser_page, []
    page.on("websocket", lambda ws: ws.on("framesent", lambda f: sent.append(f)))
    try:
        _goto(page, g)
        page.wait_for_function("document.getElementById('daemon').textContent.startsWith('down')",
                               timeout=30_000)
        assert "daemon is down" in page.locator("#status").inner_text()
        assert "no daemon listens" in page.locator("#daemon").inner_text() or \
            "cannot reach" in page.locator("#daemon").inner_text()
        _open(page, tmp_path, small_photo())
        page.wait_for_function("window.sam2.failed !== null", timeout=30_000)
        assert page.locator("#status").inner_text().startswith("image not loaded")
        click_pixel(page, 10, 10, 150, 100)  # the click sends the image again, and says why
        page.wait_for_function("window.sam2.failed !== null && !window.sam2.pending",
                               timeout=30_000)
        status = page.locator("#status").inner_text()
        assert status.startswith(("the image did not load (image not loaded",
                                  "image not loaded: cannot reach the daemon")), status
        assert "still loading" not in status and _inits(sent) == 2
    finally:
        stop(g.process)


@pytest.fixture(scope="module")
def small_gateway(tmp_path_factory: pytest.TempPathFactory, small_daemon):
    """A gateway in front of the small daemon (random weights, 4 points per request)."""
    g = start_gateway(tmp_path_factory.mktemp("page-small"), small_daemon.socket_path)
    yield g
    stop(g.process)


def test_random_weights_warning_points_limit_and_reset(browser_page, small_gateway: Gateway,
                                                       tmp_path: Path) -> None:
    """info's warning is shown; a 5th point (maxPoints 4) is refused with the mask kept;
    "Reset points" says so (before: the status still said "mask for 4 points")."""
    page = browser_page
    _goto(page, small_gateway)
    page.wait_for_function("!document.getElementById('warning').hidden", timeout=30_000)
    assert "DUMMY WEIGHTS" in page.locator("#warning").inner_text()
    assert page.locator("#daemon").inner_text().startswith("up (")
    _open(page, tmp_path, small_photo())
    page.wait_for_function("window.sam2.loaded", timeout=LONG)
    for i in range(4):
        click_pixel(page, 20 + 25 * i, 50, 150, 100)
        page.wait_for_function(f"window.sam2.lastResult?.num_points === {i + 1}", timeout=LONG)
    click_pixel(page, 140, 50, 150, 100)
    status = page.locator("#status").inner_text()
    assert "the daemon's limit (maxPoints)" in status, status
    assert page.evaluate("[window.sam2.points.length, window.sam2.current !== null]") == [4, True]
    page.click("#reset")
    assert page.locator("#status").inner_text() == "points cleared; click on the object"


def test_an_image_too_large_for_the_gateway_is_sent_once(browser_page, gateway: Gateway,
                                                         tmp_path: Path) -> None:
    """Over --max-message-mb (1 MB here) the gateway closes with 1009. Before: the page sent
    the image again on every reconnect, for ever."""
    page, sent = browser_page, []
    page.on("websocket", lambda ws: ws.on("framesent", lambda f: sent.append(f)))
    _goto(page, gateway)
    noise = np.random.default_rng(5).integers(0, 256, (500, 700, 3), np.uint8)  # ~1.4 MB sent
    _open(page, tmp_path, noise, "noise.png")
    page.wait_for_function("window.sam2.gaveUp !== null", timeout=30_000)
    page.wait_for_function("window.sam2.sessionId !== null", timeout=30_000)  # reconnected
    page.wait_for_timeout(3000)
    assert _inits(sent) == 1
    assert "larger than the gateway accepts (--max-message-mb)" in page.locator("#status").inner_text()


def test_after_repeated_closes_while_loading_the_image_is_not_sent_again(
        browser_page, gateway: Gateway, tmp_path: Path) -> None:
    """Each connection drops right after the image is sent (as the gateway did on Pillow's
    ValueError): three tries, then the page stops and says why."""
    page, sent = browser_page, []
    page.on("websocket", lambda ws: ws.on("framesent", lambda f: sent.append(f)))
    _goto(page, gateway)
    page.evaluate("""() => {
        const send = WebSocket.prototype.send;
        WebSocket.prototype.send = function (data) {
            send.call(this, data);
            if (String(data).includes('"init"')) this.close();
        };
    }""")
    _open(page, tmp_path, small_photo())
    page.wait_for_function("window.sam2.gaveUp !== null", timeout=30_000)
    page.wait_for_timeout(3000)
    assert _inits(sent) == 3
    status = page.locator("#status").inner_text()
    assert "closed the connection 3 times while loading this image; it is not sent again" in status


def test_the_image_is_not_sent_to_another_gateway_instance(browser_page, daemon,
                                                           tmp_path: Path) -> None:
    """The gateway restarts on the same port (or another program takes it): the page sees
    another instance id in session_created and sends nothing to it."""
    first = start_gateway(tmp_path, daemon.socket_path)
    page, frames = browser_page, {}
    page.on("websocket", lambda ws: ws.on(
        "framesent", lambda f, ws=ws: frames.setdefault(id(ws), []).append(f)))
    try:
        _goto(page, first)
        _open(page, tmp_path, small_photo())
        page.wait_for_function("window.sam2.loaded", timeout=LONG)
    finally:
        stop(first.process)
    assert len(frames) == 1 and _inits(next(iter(frames.values()))) == 1
    second = start_gateway(tmp_path, daemon.socket_path, port=first.port)
    try:
        page.wait_for_function("window.sam2.foreign", timeout=30_000)
        page.wait_for_timeout(1000)
        click_pixel(page, 10, 10, 150, 100)
    finally:
        stop(second.process)
    later = [f for key, fs in frames.items() if key != next(iter(frames)) for f in fs]
    assert later == [], later
    assert "not the one this page came from" in page.locator("#status").inner_text()


def test_label_downloads_are_greyscale_8_or_16_bit(browser_page, gateway: Gateway) -> None:
    """docs/web.md: 8-bit greyscale up to 255 objects, else 16-bit (before: an RGBA PNG)."""
    page = browser_page
    _goto(page, gateway)
    modes = {}
    for count in (3, 300):
        page.evaluate("""(count) => {
            const w = 20, h = 15, S = window.sam2;
            S.image = {width: w, height: h, name: `objects-${count}.png`};
            S.current = null;
            S.objects = Array.from({length: count}, (_, k) => {
                const mask = new Uint8Array(w * h);
                mask[k % (w * h)] = 255; mask[(7 * k + 3) % (w * h)] = 255;
                return {mask};
            });
            updateControls();
        }""", count)
        with page.expect_download() as download:
            page.click("#download-labels")
        with Image.open(download.value.path()) as im:
            modes[count] = im.mode
            labels = np.asarray(im)
        want = np.zeros(20 * 15, np.int64)
        for k in range(count):  # later objects on top
            want[k % 300] = k + 1
            want[(7 * k + 3) % 300] = k + 1
        np.testing.assert_array_equal(labels.reshape(-1).astype(np.int64), want)
    assert modes == {3: "L", 300: "I;16"}, modes
    png = base64.b64decode(page.evaluate("""async () => {
        const blob = await window.sam2png.labelPng([new Uint8Array([0, 255])], 2, 1);
        const bytes = new Uint8Array(await blob.arrayBuffer());
        return btoa(String.fromCharCode(...bytes)); }"""))
    with Image.open(io.BytesIO(png)) as im:
        assert (im.mode, im.size, np.asarray(im).tolist()) == ("L", (2, 1), [[0, 1]])
