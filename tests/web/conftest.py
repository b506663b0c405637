"""Fixtures for the browser gateway's tests: the integration tests' real daemon (random-weight
SAM2.1-tiny, built once per session) and ``sam2-service web`` processes in front of it.

The gateway runs as its own process, started through the CLI, as a user would start it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import numpy as np
import pytest

from tests.integration.conftest import Daemon, checkpoint, daemon, encode_image  # noqa: F401

READY_TIMEOUT_S = 60.0
#: Limits the test gateway runs with (set through their environment variables).
TEST_LIMITS = {"SAM2_WEB_MAX_SESSIONS": "4", "SAM2_WEB_MAX_MESSAGE_MB": "1",
               "SAM2_WEB_MAX_IMAGE_PIXELS": "250000"}


@dataclass
class Gateway:
    """A running ``sam2-service web`` process."""

    port: int
    process: subprocess.Popen
    output_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/realtime"

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(tmp: Path, socket_path: str, env: dict[str, str] | None = None) -> Gateway:
    """Start ``sam2-service web`` on a free port; wait until it answers HTTP."""
    port = free_port()
    out = tmp / f"web-{port}.out"
    cmd = [sys.executable, "-m", "sam2_service", "web", "--port", str(port), "--socket", socket_path]
    with open(out, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    gateway = Gateway(port, proc, out)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{gateway.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return gateway
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"gateway not listening after {READY_TIMEOUT_S} s:\n{gateway.output()}")


def stop(process: subprocess.Popen) -> None:
    """Terminate a process started here and wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, daemon: Daemon) -> Iterator[Gateway]:  # noqa: F811
    """The gateway in front of the session's daemon, with small limits (:data:`TEST_LIMITS`)."""
    g = start_gateway(tmp_path_factory.mktemp("web"), daemon.socket_path, TEST_LIMITS)
    yield g
    stop(g.process)


def small_photo() -> np.ndarray:
    """skimage's coffee photo at a quarter size (100x150): small and quick to send."""
    from skimage import data

    return np.ascontiguousarray(data.coffee()[::4, ::4])


def data_url(png: bytes, kind: str = "png") -> str:
    """``data:image/<kind>;base64,...`` of image bytes."""
    return f"data:image/{kind};base64," + base64.b64encode(png).decode()


class Conversation:
    """A WebSocket client of the gateway (aiohttp's), reading JSON messages with a timeout."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any] | str) -> None:
        """Send a JSON object, or raw text as it is."""
        await (self.ws.send_str(message) if isinstance(message, str) else self.ws.send_json(message))

    async def recv(self, timeout: float = 120.0) -> dict[str, Any]:
        """The next message; fails on a close or after ``timeout`` seconds."""
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text message, got {msg.type} {msg.data!r}"
        return msg.json()

    async def expect(self, kind: str, timeout: float = 120.0) -> dict[str, Any]:
        """The next message, which must be of type ``kind``."""
        message = await self.recv(timeout)
        assert message["type"] == kind, f"expected {kind}, got {message}"
        return message
