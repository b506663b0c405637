"""Session logic without a daemon: a busy or vanished daemon becomes an ``error`` message and
the session goes on; settings come from flags, then environment variables."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from sam2_service.client import ClientError, ImageRef, RequestFailed
from sam2_service.web.config import WebConfig, add_flags, config_from_args
from sam2_service.web.session import ImageUsers, Session

from .conftest import data_url, small_photo


class FakeClient:
    """Stands in for AsyncClient: ``embed`` fails with ``failure`` once, then succeeds."""

    def __init__(self, failure: Exception) -> None:
        self.failure: Exception | None = failure
        self.released: list[str] = []

    async def embed(self, data: bytes) -> ImageRef:
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        return ImageRef("ab" * 32, 150, 100)

    async def release(self, image_id: str) -> bool:
        self.released.append(image_id)
        return True

    async def info(self) -> dict:
        return {"ok": True, "limits": {"maxPoints": 64}, "queue": {"maxQueue": 8}}

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("failure, words", [
    (RequestFailed("busy", "queue full", "r1"), "the daemon is busy"),
    (ClientError("cannot connect to /x.sock"), "cannot reach the daemon"),
])
def test_daemon_failure_is_an_error_message_and_the_session_goes_on(failure, words) -> None:
    from sam2_service.wire.codecs import encode_png

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def go() -> FakeClient:
        fake = FakeClient(failure)
        session = Session(WebConfig(), ImageUsers(fake), send)
        session.client = fake
        init = '{"type":"init","image":"%s"}' % data_url(encode_png(small_photo()))
        if isinstance(failure, RequestFailed):  # a refusal is not retried: one error, then a retry works
            assert await session.handle(init)
            assert await session.handle(init)
        else:  # a connection failure is retried once at once
            assert await session.handle(init)
        await session.close()
        return fake

    fake = asyncio.run(go())
    kinds = [m["type"] for m in sent]
    if isinstance(failure, RequestFailed):
        assert kinds == ["error", "image_loaded"] and words in sent[0]["message"]
    else:
        assert kinds == ["image_loaded"]
    assert fake.released == ["ab" * 32]  # closing the last session using it releases it


def test_flags_win_over_environment_over_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    env = {"SAM2_WEB_PORT": "9001", "SAM2_WEB_MAX_MESSAGE_MB": "2", "SAM2_WEB_HOST": "::1"}
    config = config_from_args(parser.parse_args(["--port", "9002"]), env)
    assert (config.port, config.max_message_bytes, config.host) == (9002, 2 << 20, "::1")
    assert config_from_args(parser.parse_args([]), {}) == WebConfig()
    with pytest.raises(ValueError, match="SAM2_WEB_MAX_SESSIONS='many'"):
        config_from_args(parser.parse_args([]), {"SAM2_WEB_MAX_SESSIONS": "many"})
    with pytest.raises(ValueError, match="--max-sessions / SAM2_WEB_MAX_SESSIONS out of range: 0"):
        config_from_args(parser.parse_args(["--max-sessions", "0"]), {})


def test_the_web_commands_settings_come_through_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ``sam2-service web``'s own parser: the client commands' ``--timeout`` default
    (300 s) must not stand in for SAM2_WEB_TIMEOUT (before: every gateway waited 300 s)."""
    from sam2_service.cli import parse_args

    monkeypatch.setenv("SAM2_WEB_TIMEOUT", "3")
    monkeypatch.setenv("SAM2_WEB_HEALTH_TIMEOUT", "1.5")
    monkeypatch.delenv("SAM2_SERVICE_TIMEOUT", raising=False)
    config = config_from_args(parse_args(["web", "--port", "9003"]))
    assert (config.timeout, config.health_timeout, config.port) == (3.0, 1.5, 9003)
    config = config_from_args(parse_args(["web", "--timeout", "7"]))
    assert config.timeout == 7.0
    monkeypatch.delenv("SAM2_WEB_TIMEOUT")
    assert config_from_args(parse_args(["web"])).timeout == WebConfig().timeout


def test_every_setting_is_in_the_docs_table() -> None:
    import dataclasses
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "web.md").read_text()
    for f in dataclasses.fields(WebConfig):
        flag, env = f.metadata["flag"], f.metadata["env"]
        row = next((l for l in docs.splitlines() if l.startswith(f"| `{flag}` |")), None)
        assert row is not None, f"{flag} missing from docs/web.md's settings table"
        default = f.default // (2**20) if f.name == "max_message_bytes" else f.default
        assert f"`{env}`" in row and f"`{default}`" in row, row


def test_the_gateway_imports_no_torch() -> None:
    """The gateway's environment needs no model stack: importing it leaves torch out."""
    import subprocess
    import sys

    code = ("import sys, sam2_service.web.app, sam2_service.web.session\n"
            "print(','.join(m for m in ('torch', 'torchvision', 'sam2', 'hydra') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


class PngDaemon:
    """Stands in for AsyncClient on the click path: ``embed`` gives a ref; ``request`` answers
    segment requests with a fixed ``maskPng`` (after ``lost`` ``unknown_image`` answers)."""

    PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="

    def __init__(self, lost: int = 0) -> None:
        self.lost = lost
        self.embeds = 0
        self.requests: list[dict] = []

    async def embed(self, data: bytes) -> ImageRef:
        self.embeds += 1
        return ImageRef("ab" * 32, 150, 100)

    async def info(self) -> dict:
        return {"ok": True, "limits": {"maxPoints": 64}, "queue": {"maxQueue": 8}}

    async def request(self, message: dict) -> dict:
        self.requests.append(message)
        if self.lost:
            self.lost -= 1
            return {"requestId": message["requestId"], "error": "not cached", "code": "unknown_image"}
        return {"requestId": message["requestId"], "maskWidth": 150, "maskHeight": 100,
                "maskBase64": "", "score": 0.75, "inferenceTimeMs": 9.0, "imageId": "ab" * 32,
                "cached": True, "timingsMs": {}, "maskEncoding": "png", "maskPng": self.PNG,
                "maskId": "m1"}

    async def release(self, image_id: str) -> bool:
        return True

    async def close(self) -> None:
        pass


def click_and_wait(lost: int) -> tuple[PngDaemon, list[dict]]:
    """init, one click at (3, 4), and the messages sent until its result."""
    from sam2_service.wire.codecs import encode_png

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def go() -> PngDaemon:
        fake = PngDaemon(lost)
        session = Session(WebConfig(), ImageUsers(fake), send)
        session.client = fake
        await session.start()
        await session.handle('{"type":"init","image":"%s"}' % data_url(encode_png(small_photo())))
        await session.handle('{"type":"click","x":3,"y":4,"label":1}')
        for _ in range(1000):
            if sent[-1]["type"] in ("segmentation_result", "error"):
                break
            await asyncio.sleep(0.001)
        await session.close()
        return fake

    return asyncio.run(go()), sent


def test_clicks_go_by_image_id_and_the_daemons_png_is_forwarded_as_it_is() -> None:
    fake, sent = click_and_wait(lost=0)
    assert [m["type"] for m in sent] == ["session_created", "image_loaded", "point_added",
                                         "segmentation_result"]
    assert sent[-1] == {"type": "segmentation_result", "mask": PngDaemon.PNG, "score": 0.75,
                        "num_points": 1, "inference_time_ms": 9.0}
    (request,) = fake.requests
    assert request["imageId"] == "ab" * 32 and "imageBase64" not in request
    assert request["maskEncoding"] == "png"
    assert request["points"] == [{"x": 3.0, "y": 4.0, "label": 1}]
    assert fake.embeds == 1  # at init only


def test_an_image_the_daemon_lost_is_embedded_again_once() -> None:
    fake, sent = click_and_wait(lost=1)
    assert sent[-1]["type"] == "segmentation_result" and sent[-1]["mask"] == PngDaemon.PNG
    assert fake.embeds == 2 and len(fake.requests) == 2
    fake, sent = click_and_wait(lost=2)  # lost again at once: an error, the session goes on
    assert sent[-1]["type"] == "error" and "no longer has the image" in sent[-1]["message"]


def test_a_bug_while_handling_a_message_is_an_error_and_the_session_goes_on() -> None:
    """The catch-all around each message: before, an exception escaped ``handle`` (as
    Pillow's ValueError did) and the gateway closed the connection without a word."""
    from sam2_service.wire.codecs import encode_png

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def go() -> bool:
        fake = FakeClient(ZeroDivisionError("a bug"))
        session = Session(WebConfig(), ImageUsers(fake), send)
        session.client = fake
        init = '{"type":"init","image":"%s"}' % data_url(encode_png(small_photo()))
        kept = await session.handle(init) and await session.handle(init)
        await session.close()
        return kept

    assert asyncio.run(go()) is True
    assert [m["type"] for m in sent] == ["error", "image_loaded"], sent
    assert sent[0]["message"].startswith("the gateway failed on this init message "
                                         "(ZeroDivisionError: a bug)"), sent
