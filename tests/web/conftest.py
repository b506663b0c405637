"""Fixtures for the browser gateway's tests: the integration tests' real daemon (random-weight
SAM2.1-tiny, built once per session) and ``sam2-service web`` processes in front of it.

The gateway runs as its own process, started through the CLI, as a user would start it. The
browser tests' page is Debian's headless Chromium driven by Playwright (:func:`browser_page`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
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

from tests.integration.conftest import (  # noqa: F401
    Daemon,
    checkpoint,
    daemon,
    encode_image,
    start_daemon,
)

READY_TIMEOUT_S = 60.0
#: Limits the test gateway runs with (set through their environment variables).
TEST_LIMITS = {"SAM2_WEB_MAX_SESSIONS": "4", "SAM2_WEB_MAX_MESSAGE_MB": "1",
               "SAM2_WEB_MAX_IMAGE_PIXELS": "250000"}
#: The small daemon's settings (:func:`small_daemon`): random weights, and limits small enough
#: to reach in a test.
SMALL_DAEMON_ARGS = ("--dummy-weights", "--idle-timeout", "1", "--max-queue", "2",
                     "--max-points", "4")


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

    def token(self) -> str:
        """The token in the address a ``--auth token`` gateway printed at start (printed
        just after it starts listening: waited for a little)."""
        deadline = time.monotonic() + 10
        while not (found := re.search(r"/app\?token=(\S+)", self.output())):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert found, f"no token in the gateway's output:\n{self.output()}"
        return found.group(1)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(tmp: Path, socket_path: str, env: dict[str, str] | None = None,
                  port: int | None = None) -> Gateway:
    """Start ``sam2-service web`` on ``port`` (default: a free one); wait until it listens."""
    port = port or free_port()
    out = tmp / f"web-{port}-{time.monotonic_ns()}.out"
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


@pytest.fixture(scope="session")
def small_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A second daemon, random weights (``--dummy-weights``: its ``info`` has a ``warning``),
    closing connections idle for 1 s, 2 places in its queue, 4 points per request
    (:data:`SMALL_DAEMON_ARGS`)."""
    d = start_daemon(tmp_path_factory.mktemp("small-daemon"), *SMALL_DAEMON_ARGS)
    yield d
    d.stop()


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


# ---- headless Chromium (Debian's, driven by Playwright) ------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """Debian's chromium; installed with apt-get when missing and running as root, else skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("the browser test needs Debian's chromium (apt-get install chromium) "
                    "and installs it only when running as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return shutil.which("chromium") or pytest.fail("apt-get installed chromium but it is not on PATH")


@pytest.fixture
def browser_page(tmp_path: Path):
    """A fresh headless Chromium page (its own --user-data-dir), 1400x1000, devicePixelRatio 2."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    executable = chromium_path()
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=executable, args=CHROMIUM_FLAGS,
            headless=True, viewport={"width": 1400, "height": 1000}, device_scale_factor=2,
            has_touch=True)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def artifacts_dir(tmp_path: Path) -> Path:
    path = Path(os.environ.get("SAM2_WEB_ARTIFACTS") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def click_pixel(page, px: int, py: int, width: int, height: int, button: str = "left") -> None:
    """Click the centre of image pixel (px, py) on the overlay as displayed now."""
    box = page.locator("#overlay").bounding_box()
    page.mouse.click(box["x"] + (px + 0.5) * box["width"] / width,
                     box["y"] + (py + 0.5) * box["height"] / height, button=button)
