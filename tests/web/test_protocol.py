"""The gateway's WebSocket protocol against a real daemon (random weights), spoken by aiohttp's
WebSocket client as any other client would (docs/web.md, "Protocol")."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

import aiohttp
import numpy as np
import pytest
from PIL import Image

from sam2_service.client import Client
from sam2_service.wire.codecs import encode_png

from .conftest import Conversation, Gateway, data_url, small_photo

pytestmark = pytest.mark.model


@asynccontextmanager
async def session(gateway: Gateway, **headers: str) -> AsyncIterator[Conversation]:
    """A WebSocket session, past its ``session_created``."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gateway.ws_url, headers=headers) as ws:
            talk = Conversation(ws)
            created = await talk.expect("session_created")
            assert uuid.UUID(created["session_id"]).version == 4
            yield talk


def mask_of(message: dict) -> np.ndarray:
    """The mask of a ``segmentation_result``: must be an 8-bit greyscale PNG."""
    with Image.open(io.BytesIO(base64.b64decode(message["mask"]))) as im:
        assert (im.format, im.mode) == ("PNG", "L")
        return np.asarray(im)


def daemon_mask(socket_path: str, png: bytes, points: list[tuple[int, int, int]]) -> np.ndarray:
    """The daemon's own answer for ``points`` on ``png`` (the project's blocking client)."""
    with Client(socket_path) as c:
        return c.segment(png, points=points).mask


def test_full_sequence_and_mask_equals_the_daemons(gateway: Gateway, daemon) -> None:
    png = encode_png(small_photo())
    points = [(60, 40, 1), (20, 80, 0)]

    async def go() -> list[dict]:
        results = []
        async with session(gateway) as talk:
            await talk.send({"type": "init", "image": data_url(png)})
            assert await talk.expect("image_loaded") == {
                "type": "image_loaded", "width": 150, "height": 100,
                "image_id": (await asyncio.to_thread(_image_id, png))}
            for n, (x, y, label) in enumerate(points, 1):
                await talk.send({"type": "click", "x": x, "y": y, "label": label})
                added = await talk.expect("point_added")
                assert added == {"type": "point_added", "x": x, "y": y, "label": label,
                                 "total_points": n}
                results.append(await talk.expect("segmentation_result"))
            await talk.send({"type": "reset"})
            await talk.expect("points_cleared")
            await talk.send({"type": "click", "x": 60, "y": 40, "label": 1})
            assert (await talk.expect("point_added"))["total_points"] == 1
            results.append(await talk.expect("segmentation_result"))
            await talk.send({"type": "close"})
            assert (await talk.ws.receive(timeout=30)).type in (aiohttp.WSMsgType.CLOSE,
                                                                aiohttp.WSMsgType.CLOSED)
        return results

    first, second, after_reset = asyncio.run(go())
    assert [r["num_points"] for r in (first, second, after_reset)] == [1, 2, 1]
    for result, prompt in ((first, points[:1]), (second, points), (after_reset, points[:1])):
        mask = mask_of(result)
        assert mask.shape == (100, 150)
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask, daemon_mask(daemon.socket_path, png, prompt))
        assert isinstance(result["score"], float)


def _image_id(data: bytes) -> str:
    from sam2_service.wire.codecs import compute_image_id

    return compute_image_id(data)


def test_errors_are_answered_and_the_session_goes_on(gateway: Gateway) -> None:
    """Every wrong message gets an ``error`` naming the fault; then a 1x1 PNG (bare base64)
    and a click at (0, 0) still work on the same connection."""
    one = encode_png(np.full((1, 1, 3), 200, np.uint8))
    corrupt = encode_png(small_photo())[:200]  # a valid header, then nothing
    big = encode_png(np.zeros((600, 500), np.uint8))  # 300,000 pixels > the test limit

    cases = [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ({"type": "fly"}, "unknown message type 'fly'"),
        ({"x": 1}, "unknown message type None"),
        ({"type": ["init"]}, "unknown message type ['init']"),
        ({"type": "click", "x": 0, "y": 0, "label": 1}, "no image loaded"),
        ({"type": "init"}, "init needs 'image'"),
        ({"type": "init", "image": "data:image/png;base64,@@@"}, "not valid base64"),
        ({"type": "init", "image": base64.b64encode(b"hello world!").decode()}, "not a PNG or JPEG"),
        ({"type": "init", "image": data_url(big)}, "the limit is 250000"),
        ({"type": "init", "image": data_url(corrupt)}, "image not loaded: the daemon refused"),
    ]
    clicks = [
        ({"type": "click", "x": 1, "y": 0, "label": 1}, "outside the 1x1 image"),
        ({"type": "click", "x": 0, "y": -1, "label": 1}, "outside the 1x1 image"),
        ({"type": "click", "x": "0", "y": 0, "label": 1}, "finite number 'x'"),
        ({"type": "click", "x": 0, "y": 0, "label": 2}, "'label' must be 1"),
        ({"type": "click", "x": 0, "y": 0, "label": True}, "'label' must be 1"),
    ]

    async def go() -> dict:
        async with session(gateway) as talk:
            for message, words in cases:
                await talk.send(message)
                error = await talk.expect("error")
                assert words in error["message"], (message, error)
            await talk.ws.send_bytes(b"\x00\x01")
            assert "binary" in (await talk.expect("error"))["message"]
            await talk.send({"type": "init", "image": base64.b64encode(one).decode()})
            assert await talk.expect("image_loaded") == {
                "type": "image_loaded", "width": 1, "height": 1, "image_id": _image_id(one)}
            for message, words in clicks:
                await talk.send(message)
                assert words in (await talk.expect("error"))["message"], message
            await talk.send({"type": "click", "x": 0, "y": 0, "label": 1})
            assert (await talk.expect("point_added"))["total_points"] == 1
            return await talk.expect("segmentation_result")

    result = asyncio.run(go())
    assert result["num_points"] == 1
    assert mask_of(result).shape == (1, 1)


def test_a_burst_of_clicks_ends_with_the_result_for_all_points(gateway: Gateway, daemon) -> None:
    png = encode_png(small_photo())
    points = [(10 + 20 * i, 10 + 12 * i, i % 2) for i in range(7)]

    async def go() -> list[dict]:
        async with session(gateway) as talk:
            await talk.send({"type": "init", "image": data_url(png)})
            await talk.expect("image_loaded")
            for x, y, label in points:  # all at once, before any result can come
                await talk.send({"type": "click", "x": x, "y": y, "label": label})
            seen: list[dict] = []
            while not seen or seen[-1].get("num_points") != len(points):
                seen.append(await talk.recv())
            return seen

    seen = asyncio.run(go())
    added = [m["total_points"] for m in seen if m["type"] == "point_added"]
    counts = [m["num_points"] for m in seen if m["type"] == "segmentation_result"]
    assert added == list(range(1, len(points) + 1))
    assert counts == sorted(counts) and counts[-1] == len(points)
    assert len(counts) < len(points), "intermediate results were expected to be skipped"
    np.testing.assert_array_equal(mask_of(seen[-1]), daemon_mask(daemon.socket_path, png, points))
