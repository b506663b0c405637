"""The daemon over a real socket: error responses, request ordering, info, log, CLI."""

from __future__ import annotations

import base64
import os
import stat
import struct
import subprocess
import sys

import numpy as np
import orjson
import pytest
import skimage.data
from PIL import Image

from sam2_service.client import Client, RequestFailed

from .conftest import TEST_DEVICE, TEST_DTYPE, connect_raw, encode_image

pytestmark = pytest.mark.model


def send_frame(sock, obj) -> None:
    body = orjson.dumps(obj)
    sock.sendall(struct.pack("<I", len(body)) + body)


def recv_exact(sock, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "connection closed early"
        buf += chunk
    return buf


def recv_frame(sock) -> dict:
    (n,) = struct.unpack("<I", recv_exact(sock, 4))
    return orjson.loads(recv_exact(sock, n))


@pytest.fixture(scope="module")
def coffee_png() -> bytes:
    return encode_image(skimage.data.coffee(), "PNG")


def good_request(png: bytes, **extra) -> dict:
    return {"width": 600, "height": 400, "imageBase64": base64.b64encode(png).decode(), **extra}


def assert_error(reply: dict, request_id: str, code: str, *words: str) -> None:
    assert reply["requestId"] == request_id
    assert reply["code"] == code
    assert (reply["maskWidth"], reply["maskHeight"], reply["maskBase64"]) == (0, 0, "")
    for w in words:
        assert w in reply["error"], reply["error"]


def test_socket_is_owner_only(daemon):
    mode = os.stat(daemon.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


BAD_REQUESTS = [
    ("inverted_bbox", {"bbox": {"x1": 400, "y1": 50, "x2": 100, "y2": 300}}, "invalid_request",
     ["bbox", "inverted"]),
    ("width_mismatch", {"width": 601}, "invalid_request", ["width", "601", "600x400"]),
    ("height_mismatch", {"height": 399}, "invalid_request", ["height"]),
    ("bad_base64", {"imageBase64": "not*base64!"}, "image_decode", ["imageBase64", "base64"]),
    ("not_an_image", {"imageBase64": base64.b64encode(b"GIF89a" + bytes(40)).decode()},
     "image_decode", ["imageBase64", "PNG or JPEG"]),
    ("point_outside", {"points": [{"x": 601, "y": 10}]}, "invalid_request", ["points[0]", "outside"]),
    ("bad_label", {"points": [{"x": 1, "y": 1, "label": 3}]}, "invalid_request", ["points[0].label"]),
    ("bbox_outside", {"bbox": {"x1": 700, "y1": 0, "x2": 800, "y2": 10}}, "invalid_request",
     ["bbox", "no area"]),
    ("missing_width", {"width": None}, "invalid_request", ["width"]),
    ("unknown_op", {"op": "explode"}, "unknown_op", ["explode"]),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_error_and_connection_stays_usable(daemon, coffee_png, case):
    name, override, code, words = case
    request = good_request(coffee_png, requestId=f"bad-{name}")
    request.update(override)
    request = {k: v for k, v in request.items() if v is not None}
    with connect_raw(daemon.socket_path) as sock:
        send_frame(sock, request)
        assert_error(recv_frame(sock), f"bad-{name}", code, *words)
        send_frame(sock, {"op": "ping", "requestId": "after"})
        assert recv_frame(sock) == {"requestId": "after", "ok": True}


def test_invalid_frames_get_invalid_request(daemon):
    with connect_raw(daemon.socket_path) as sock:
        for body in (b"", b"\xff\xfe", b"[1, 2]", b'{"x": NaN}', b"{" * 3 + b"}"):
            sock.sendall(struct.pack("<I", len(body)) + body)
            reply = recv_frame(sock)
            assert reply["code"] == "invalid_request"
            assert reply["requestId"].startswith("srv-")
            assert reply["maskBase64"] == ""
        send_frame(sock, {"op": "ping", "requestId": "still-here"})
        assert recv_frame(sock)["ok"] is True


def test_oversize_frame_is_refused_from_its_prefix_then_closed(daemon):
    with connect_raw(daemon.socket_path) as sock:
        sock.sendall(struct.pack("<I", 2**32 - 1))  # no body sent at all
        reply = recv_frame(sock)
        assert reply["code"] == "frame_too_large"
        assert sock.recv(1) == b""  # closed by the daemon
    assert Client(daemon.socket_path).ping()["ok"] is True


def test_pipelined_requests_answered_in_order(daemon, coffee_png):
    with connect_raw(daemon.socket_path) as sock:
        send_frame(sock, {"op": "ping", "requestId": "p1"})
        send_frame(sock, good_request(coffee_png, requestId="p2", width=1))
        send_frame(sock, {"op": "info", "requestId": "p3"})
        send_frame(sock, {"op": "ping", "requestId": "p4"})
        ids = [recv_frame(sock)["requestId"] for _ in range(4)]
    assert ids == ["p1", "p2", "p3", "p4"]


def test_info_reports_model_and_versions(daemon):
    info = Client(daemon.socket_path).info()
    assert info["model"] == "tiny"
    assert info["weights"] == "checkpoint"
    assert info["device"] == TEST_DEVICE and info["dtype"] == TEST_DTYPE
    assert info["checkpoint"].endswith(".pt")
    assert info["versions"]["sam2"] == "1.1.0"
    assert info["versions"]["torch"]
    assert "warning" not in info


def test_client_raises_request_failed(daemon, coffee_png):
    with Client(daemon.socket_path) as client:
        with pytest.raises(RequestFailed) as err:
            client.segment(coffee_png, bbox=(10, 10, 5, 5), request_id="cli-bad")
        assert err.value.code == "invalid_request"
        assert err.value.request_id == "cli-bad"
        assert client.ping()["ok"] is True


def test_cli_segment_writes_mask_png_and_log_has_the_guide_messages(daemon, tmp_path, coffee_png):
    image = tmp_path / "coffee.png"
    image.write_bytes(coffee_png)
    out = tmp_path / "mask.png"
    proc = subprocess.run(
        [sys.executable, "-m", "sam2_service", "segment", "--socket", daemon.socket_path,
         "--image", str(image), "--bbox", "100,50,400,300", "--point", "250,180",
         "--point", "120,60,0", "--output", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "score=" in proc.stdout and "inferenceTimeMs=" in proc.stdout
    mask = np.asarray(Image.open(out))
    assert mask.shape == (400, 600) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}

    lines = [orjson.loads(l) for l in daemon.log_path.read_text().splitlines()]
    by_msg = {}
    for line in lines:
        assert line["ts"].endswith("Z")
        by_msg.setdefault(line["msg"], []).append(line)
    assert {"loadTimeMs", "device"} <= by_msg["Model loaded successfully"][0].keys()
    assert by_msg["Server listening"][0]["socket"] == daemon.socket_path
    received = [l for l in by_msg["Received request"] if l["requestId"].startswith("cli-")]
    assert received and received[-1]["hasBbox"] is True
    done = by_msg["Inference complete"][-1]
    assert {"requestId", "inferenceTimeMs", "maskCoverage", "score"} <= done.keys()
    assert any(l.get("code") == "invalid_request" for l in by_msg["Request failed"])
    assert "torch" in by_msg["Starting sam2-service"][0]
    assert by_msg["Warm-up complete"][0]["warmupMs"] > 0
    order = [l["msg"] for l in lines]
    assert order.index("Warm-up complete") < order.index("Server listening")


def test_cli_segment_reports_daemon_error(daemon, tmp_path, coffee_png):
    image = tmp_path / "coffee.png"
    image.write_bytes(coffee_png)
    proc = subprocess.run(
        [sys.executable, "-m", "sam2_service", "segment", "--socket", daemon.socket_path,
         "--image", str(image), "--point", "9999,1"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "invalid_request" in proc.stderr and "points[0]" in proc.stderr


def test_async_client_ping_info_errors_and_array_segment(daemon):
    import asyncio

    from sam2_service.client import AsyncClient

    image = skimage.data.chelsea()  # (300, 451, 3) uint8, sent as PNG by the client

    async def scenario():
        async with AsyncClient(daemon.socket_path) as client:
            pings = await asyncio.gather(*(client.ping() for _ in range(5)))
            info = await client.info()
            with pytest.raises(RequestFailed) as err:
                await client.segment(image, points=[(500, 10)], request_id="async-bad")
            result = await client.segment(image, bbox=(50, 20, 300, 250), request_id="async-ok")
            return pings, info, err.value, result

    pings, info, err, result = asyncio.run(scenario())
    assert all(p["ok"] is True for p in pings)
    assert info["model"] == "tiny"
    assert err.code == "invalid_request" and err.request_id == "async-bad"
    assert result.request_id == "async-ok"
    assert result.mask.shape == (300, 451) and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) <= {0, 255}
    assert np.isfinite(result.score)
