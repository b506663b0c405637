"""The gateway's security rules (Origin, Host), its limits, /health, and the release of the
daemon's cached embedding when the last session using an image disconnects."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from sam2_service.client import Client
from sam2_service.wire.codecs import encode_png

from .conftest import Conversation, Gateway, data_url, small_photo, start_gateway, stop

pytestmark = pytest.mark.model


async def _handshake(gateway: Gateway, headers: dict[str, str]) -> int:
    """The HTTP status of a WebSocket handshake with ``headers`` (101 when accepted)."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(gateway.ws_url, headers=headers) as ws:
                assert (await Conversation(ws).recv(30))["type"] == "session_created"
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


def test_origin_other_than_the_gateways_own_is_refused(gateway: Gateway) -> None:
    port = gateway.port
    statuses = {origin: asyncio.run(_handshake(gateway, {"Origin": origin} if origin else {}))
                for origin in ("", f"http://localhost:{port}", f"http://127.0.0.1:{port}",
                               "https://evil.example", f"http://evil.example:{port}",
                               f"http://localhost:{port + 1}", f"https://localhost:{port}", "null")}
    assert statuses == {"": 101, f"http://localhost:{port}": 101, f"http://127.0.0.1:{port}": 101,
                        "https://evil.example": 403, f"http://evil.example:{port}": 403,
                        f"http://localhost:{port + 1}": 403, f"https://localhost:{port}": 403,
                        "null": 403}


def test_host_must_name_the_gateway(gateway: Gateway) -> None:
    """DNS rebinding: a page at evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    async def status(host: str, path: str = "/health") -> int:
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + path, headers={"Host": host}) as r:
                return r.status

    port = gateway.port
    assert asyncio.run(status(f"localhost:{port}")) == 200
    assert asyncio.run(status(f"127.0.0.1:{port}", "/app")) == 200
    assert asyncio.run(status(f"evil.example:{port}")) == 421
    assert asyncio.run(status(f"evil.example:{port}", "/app")) == 421
    assert asyncio.run(status(f"localhost:{port + 1}")) == 421
    assert asyncio.run(_handshake(gateway, {"Host": f"evil.example:{port}"})) == 421


def test_health_reports_the_daemon(gateway: Gateway) -> None:
    async def get() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as http:
            async with http.get(gateway.url + "/health") as r:
                return r.status, await r.json()

    status, body = asyncio.run(get())
    assert status == 200
    assert body["ok"] is True and body["gateway"] == "up"
    assert body["daemon"]["reachable"] is True and body["daemon"]["model"] == "tiny"


def test_without_a_daemon_health_is_503_and_init_is_an_error(tmp_path: Path) -> None:
    g = start_gateway(tmp_path, str(tmp_path / "no-daemon.sock"))
    try:
        async def go() -> tuple[int, dict, dict]:
            async with aiohttp.ClientSession() as http:
                async with http.get(g.url + "/health") as r:
                    status, body = r.status, await r.json()
                async with http.ws_connect(g.ws_url) as ws:
                    talk = Conversation(ws)
                    await talk.expect("session_created")
                    await talk.send({"type": "init", "image": data_url(encode_png(small_photo()))})
                    return status, body, await talk.expect("error")

        status, body, error = asyncio.run(go())
    finally:
        stop(g.process)
    assert status == 503 and body["daemon"]["reachable"] is False
    assert "cannot reach the daemon" in error["message"], error
    assert "cannot reach the daemon" in body["daemon"]["error"]


def test_session_and_message_limits(gateway: Gateway) -> None:
    async def go() -> tuple[dict, int | None, int | None]:
        async with aiohttp.ClientSession() as http:
            open_ws = [await http.ws_connect(gateway.ws_url) for _ in range(4)]
            for ws in open_ws:
                await Conversation(ws).expect("session_created")
            async with http.ws_connect(gateway.ws_url) as extra:
                refused = await Conversation(extra).recv(30)
                await extra.receive(timeout=30)
                extra_code = extra.close_code
            for ws in open_ws:
                await ws.close()
            await _wait_for_sessions(http, gateway, 0)
            async with http.ws_connect(gateway.ws_url) as ws:
                await Conversation(ws).expect("session_created")
                await ws.send_str('{"type":"init","image":"' + "A" * (3 << 19) + '"}')  # 1.5 MB
                await ws.receive(timeout=30)
                return refused, extra_code, ws.close_code

    refused, extra_code, big_code = asyncio.run(go())
    assert refused["type"] == "error" and "too many sessions (4" in refused["message"]
    assert extra_code == 1013
    assert big_code == 1009


async def _wait_for_sessions(http: aiohttp.ClientSession, gateway: Gateway, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with http.get(gateway.url + "/health") as r:
            if (await r.json())["sessions"] == count:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway did not get down to {count} sessions")


def test_disconnect_releases_the_embedding_when_no_session_uses_it(gateway: Gateway, daemon) -> None:
    png = encode_png(small_photo()[10:90, 20:140])  # an image no other test sends

    def cached_in_daemon() -> bool:  # embed answers cached=true without computing anything new
        with Client(daemon.socket_path) as c:
            return c.embed(png).cached

    async def go() -> tuple[bool, bool]:
        async with aiohttp.ClientSession() as http:
            first, second = [await http.ws_connect(gateway.ws_url) for _ in range(2)]
            for ws in (first, second):
                talk = Conversation(ws)
                await talk.expect("session_created")
                await talk.send({"type": "init", "image": data_url(png)})
                await talk.expect("image_loaded")
            await first.close()
            await _wait_for_sessions(http, gateway, 1)
            kept = await asyncio.to_thread(cached_in_daemon)
            await second.close()
            await _wait_for_sessions(http, gateway, 0)
            await asyncio.sleep(0.2)  # the release follows the session's removal
            return kept, await asyncio.to_thread(cached_in_daemon)

    kept, still_cached = asyncio.run(go())
    assert kept, "the embedding was released while another session used the image"
    assert not still_cached, "the embedding stayed cached after the last session left"
    with Client(daemon.socket_path) as c:
        c.release(c.embed(png))
