"""The gateway against hostile or unlucky input: PNG headers Pillow chokes on, more points than
the daemon takes, odd HTTP requests (long paths, malformed requests, errors' headers), idle
sessions, more simultaneous images than the daemon's queue holds, and a busy port."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from sam2_service.wire.codecs import encode_png

from .conftest import Conversation, Gateway, data_url, small_photo, start_gateway, stop

pytestmark = pytest.mark.model


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def hostile_pngs() -> dict[str, bytes]:
    """PNGs whose header makes Pillow raise ValueError: a zTXt and an iCCP chunk that
    decompress to 2 MB (over its 1 MB MAX_TEXT_CHUNK), and a 5-byte IHDR."""
    sig = b"\x89PNG\r\n\x1a\n"
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
    rest = _chunk(b"IDAT", zlib.compress(b"\x00" * 20)) + _chunk(b"IEND", b"")
    big = zlib.compress(b"a" * (2 << 20))
    return {"zTXt": sig + ihdr + _chunk(b"zTXt", b"k\x00\x00" + big) + rest,
            "iCCP": sig + ihdr + _chunk(b"iCCP", b"p\x00\x00" + big) + rest,
            "IHDR5": sig + _chunk(b"IHDR", b"\x00\x00\x00\x04\x00") + rest}


async def _talk(gateway: Gateway, http: aiohttp.ClientSession) -> Conversation:
    talk = Conversation(await http.ws_connect(gateway.ws_url))
    await talk.expect("session_created")
    return talk


def test_png_headers_pillow_refuses_are_errors_and_the_session_goes_on(gateway: Gateway) -> None:
    """Before: Pillow's ValueError escaped image_size, the gateway closed the connection
    (1000, no error) and the page sent the image again on every reconnect."""
    async def go() -> tuple[list[dict], dict]:
        async with aiohttp.ClientSession() as http:
            talk = await _talk(gateway, http)
            errors = []
            for png in hostile_pngs().values():
                await talk.send({"type": "init", "image": data_url(png)})
                errors.append(await talk.expect("error", 30))
            await talk.send({"type": "init", "image": data_url(encode_png(small_photo()))})
            return errors, await talk.expect("image_loaded")

    errors, loaded = asyncio.run(go())
    for error in errors:
        assert error["message"].startswith("cannot load the image: unreadable PNG or JPEG header"), error
    assert "MAX_TEXT_CHUNK" in errors[0]["message"] and "Truncated IHDR" in errors[2]["message"]
    assert loaded["width"] == 150
    assert "Traceback" not in gateway.output()


@pytest.fixture(scope="module")
def small_gateway(tmp_path_factory: pytest.TempPathFactory, small_daemon) -> Gateway:
    """A gateway with 16 sessions in front of the small daemon (4 points, a queue of 2)."""
    g = start_gateway(tmp_path_factory.mktemp("web-small"), small_daemon.socket_path,
                      {"SAM2_WEB_MAX_SESSIONS": "16"})
    yield g
    stop(g.process)


def test_a_click_beyond_max_points_is_refused_and_the_mask_stays(small_gateway: Gateway) -> None:
    """Before: the 5th click's result was the daemon's "points has 5 entries" error."""
    async def go() -> list[dict]:
        async with aiohttp.ClientSession() as http:
            talk = await _talk(small_gateway, http)
            await talk.send({"type": "init", "image": data_url(encode_png(small_photo()))})
            await talk.expect("image_loaded")
            for i in range(4):
                await talk.send({"type": "click", "x": 10 + 20 * i, "y": 50, "label": 1})
                await talk.expect("point_added")
                assert (await talk.expect("segmentation_result"))["num_points"] == i + 1
            await talk.send({"type": "click", "x": 120, "y": 50, "label": 1})
            refused = await talk.recv()
            await talk.send({"type": "reset"})  # the session goes on
            return [refused, await talk.recv()]

    refused, cleared = asyncio.run(go())
    assert refused["type"] == "error", refused
    assert "4 points" in refused["message"] and "maxPoints 4" in refused["message"], refused
    assert cleared["type"] == "points_cleared"


def test_images_beyond_the_daemons_queue_wait_in_the_gateway(small_gateway: Gateway) -> None:
    """Six sessions load six images at once; the daemon queues 2: before, some were `busy`."""
    photo = small_photo()

    async def one(http: aiohttp.ClientSession, i: int) -> dict:
        talk = await _talk(small_gateway, http)
        await talk.send({"type": "init", "image": data_url(encode_png(np.roll(photo, 7 * i, 1)))})
        answer = await talk.recv(120)
        await talk.ws.close()
        return answer

    async def go() -> list[dict]:
        async with aiohttp.ClientSession() as http:
            return await asyncio.gather(*(one(http, i) for i in range(6)))

    answers = asyncio.run(go())
    assert [a["type"] for a in answers] == ["image_loaded"] * 6, answers


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)  # no half-close: aiohttp drops its answer to a half-closed peer
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_odd_requests_are_short_answers_with_the_safety_headers(gateway: Gateway) -> None:
    """A 8000-character static name is 404 (was 500 with a 10 KB traceback); 404, 421 and
    403 carry nosniff and CSP; a malformed request is one line in the log."""
    async def go() -> dict[str, tuple[int, dict, str]]:
        out = {}
        async with aiohttp.ClientSession() as http:
            for name, path, headers in [
                    ("long", "/static/" + "a" * 8000, {}), ("missing", "/nothing", {}),
                    ("dotdot", "/static/..%2F__init__.py", {}),
                    ("host", "/health", {"Host": "evil.example"}),
                    ("origin", "/ws/realtime", {"Origin": "https://evil.example", "Upgrade":
                                                "websocket", "Connection": "Upgrade",
                                                "Sec-WebSocket-Version": "13",
                                                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}),
                    ("favicon", "/favicon.ico", {}), ("js", "/static/app.js", {})]:
                async with http.get(gateway.url + path, headers=headers) as r:
                    out[name] = (r.status, dict(r.headers), await r.text())
        return out

    answers = asyncio.run(go())
    statuses = {name: a[0] for name, a in answers.items()}
    assert statuses == {"long": 404, "missing": 404, "dotdot": 404, "host": 421, "origin": 403,
                        "favicon": 200, "js": 200}
    for name, (_, headers, body) in answers.items():
        assert headers.get("X-Content-Type-Options") == "nosniff", name
        assert headers.get("Content-Security-Policy") == "frame-ancestors 'none'", name
        assert len(body) < 2000 or name == "js", (name, len(body))
    assert answers["favicon"][1]["Content-Type"] == "image/svg+xml"
    reply = _raw(gateway.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n")
    assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n")[0]
    time.sleep(0.2)
    log = gateway.output()
    assert "bad HTTP request (400): Invalid character in Content-Length" in log
    assert "Traceback" not in log


def test_an_exception_in_a_handler_is_a_short_500_with_the_safety_headers() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from sam2_service.web.app import create_app
    from sam2_service.web.config import WebConfig
    from sam2_service.web.guard import Access

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def go() -> tuple[int, dict, str]:
        app = create_app(WebConfig(port=0), Access("none"))
        app.router.add_get("/boom", boom)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            r = await client.get("/boom")
            return r.status, dict(r.headers), await r.text()

    status, headers, body = asyncio.run(go())
    assert status == 500 and "Traceback" not in body and "a bug" not in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "frame-ancestors 'none'"


def test_idle_sessions_are_closed_and_busy_ones_are_not(tmp_path: Path, daemon) -> None:
    """--idle-timeout 1: a session with no message is told and closed (4000); one that keeps
    talking stays. Before: idle sessions stayed for ever, so 16 idle tabs locked others out."""
    g = start_gateway(tmp_path, daemon.socket_path, {"SAM2_WEB_IDLE_TIMEOUT": "1"})

    async def go() -> tuple[dict, int | None, float, bool]:
        async with aiohttp.ClientSession() as http:
            idle, busy = await _talk(g, http), await _talk(g, http)
            started = time.monotonic()
            for _ in range(8):  # 2 s of a reset every 0.25 s
                await busy.send({"type": "reset"})
                await busy.expect("points_cleared")
                await asyncio.sleep(0.25)
            told = await idle.recv(10)
            await idle.ws.receive(timeout=10)
            return told, idle.ws.close_code, time.monotonic() - started, busy.ws.closed

    try:
        told, code, took, busy_closed = asyncio.run(go())
    finally:
        stop(g.process)
    assert told["type"] == "error" and "--idle-timeout" in told["message"], told
    assert code == 4000 and took < 5
    assert not busy_closed


def test_a_busy_port_names_the_port_setting(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "sam2_service", "web", "--port", str(port),
                               "--socket", str(tmp_path / "none.sock")],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use;" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--port" in done.stderr and "SAM2_WEB_PORT" in done.stderr, done.stderr
