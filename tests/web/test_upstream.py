"""The gateway's connections to the daemon: closed by the daemon's idle time-out (``/health``
and releases go on), and a daemon that stopped answering (SIGSTOP: ``/health`` answers within
``--health-timeout``, a click within one ``--timeout``, never retried after it)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from sam2_service.client import Client
from sam2_service.wire.codecs import encode_png

from .conftest import Conversation, Gateway, data_url, small_photo, start_gateway, stop

pytestmark = pytest.mark.model


async def _health(http: aiohttp.ClientSession, gateway: Gateway) -> tuple[int, dict, float]:
    started = time.monotonic()
    async with http.get(gateway.url + "/health", timeout=aiohttp.ClientTimeout(total=15)) as r:
        return r.status, await r.json(), time.monotonic() - started


def test_health_and_release_after_the_daemon_closed_idle_connections(tmp_path: Path,
                                                                    small_daemon) -> None:
    """The small daemon closes connections idle for 1 s. Before: the second /health answered
    503 "connection lost", and the second release failed (its embedding stayed cached)."""
    g = start_gateway(tmp_path, small_daemon.socket_path)
    first, second = (encode_png(np.roll(small_photo(), k, 0)) for k in (31, 57))

    async def load_and_leave(http: aiohttp.ClientSession, png: bytes) -> None:
        async with http.ws_connect(g.ws_url) as ws:
            talk = Conversation(ws)
            await talk.expect("session_created")
            await talk.send({"type": "init", "image": data_url(png)})
            await talk.expect("image_loaded")

    async def go() -> list[int]:
        async with aiohttp.ClientSession() as http:
            statuses = [(await _health(http, g))[0]]
            await load_and_leave(http, first)  # released on the gateway's shared connection
            await asyncio.sleep(1.6)  # ... which the daemon closes after 1 s
            statuses.append((await _health(http, g))[0])
            await load_and_leave(http, second)
            await asyncio.sleep(0.5)
            return statuses

    try:
        statuses = asyncio.run(go())
    finally:
        stop(g.process)
    assert statuses == [200, 200]
    with Client(small_daemon.socket_path) as c:
        assert not c.embed(second).cached, "the second image's embedding was not released"
        c.release(c.embed(second))


def test_a_stopped_daemon_is_reported_within_the_timeouts(tmp_path: Path, small_daemon) -> None:
    """SIGSTOP: /health answers 503 within --health-timeout 1 (before: 120 s, the daemon
    timeout) and a click's error comes after one --timeout 3 (before: two, with a retry)."""
    g = start_gateway(tmp_path, small_daemon.socket_path,
                      {"SAM2_WEB_TIMEOUT": "3", "SAM2_WEB_HEALTH_TIMEOUT": "1"})
    png = encode_png(small_photo())
    with Client(small_daemon.socket_path, timeout=120) as c:
        c.embed(png)  # cached: the gateway's init is answered well within its 3 s

    async def go() -> tuple[int, dict, float, dict, float]:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(g.ws_url) as ws:
                talk = Conversation(ws)
                await talk.expect("session_created")
                await talk.send({"type": "init", "image": data_url(png)})
                await talk.expect("image_loaded")
                os.kill(small_daemon.process.pid, signal.SIGSTOP)
                status, body, health_s = await _health(http, g)
                started = time.monotonic()
                await talk.send({"type": "click", "x": 5, "y": 5, "label": 1})
                await talk.expect("point_added")
                error = await talk.expect("error", 20)
                return status, body, health_s, error, time.monotonic() - started

    try:
        status, body, health_s, error, click_s = asyncio.run(go())
    finally:
        os.kill(small_daemon.process.pid, signal.SIGCONT)
        stop(g.process)
    assert status == 503 and body["daemon"]["reachable"] is False
    assert "--health-timeout" in body["daemon"]["error"] and health_s < 2.5, (body, health_s)
    assert "no reply within 3" in error["message"], error
    assert 2.5 < click_s < 5.0, click_s
