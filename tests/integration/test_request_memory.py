"""One request's working memory and reply size, bounded before the work (--max-request-mb,
--max-reply-mb), against the real daemon and model. Before these bounds a 6000x6000 image
with 16 boxes took +2.75 GB and 16 raw boxes built an 816 MB reply."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from sam2_service.client import Client

from .conftest import encode_image, start_daemon

pytestmark = pytest.mark.model

SETTINGS = {"points_per_side": 6, "points_per_batch": 32, "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


def _status(pid: int, key: str) -> int:
    """A /proc/PID/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux: "5" to /proc/PID/clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def huge_png() -> str:
    """A 6000x6000 PNG (36 MP, under the 40 MP image limit) of smooth content: 0.1 MB sent."""
    y, x = np.mgrid[0:6000, 0:6000]
    img = np.stack([(x // 24) % 256, (y // 24) % 256, np.full_like(x, 90)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _boxes(n: int) -> list[dict]:
    return [{"x1": 100 * i, "y1": 100, "x2": 100 * i + 3000, "y2": 5000} for i in range(n)]


def test_sixteen_boxes_on_36_mp_refused_before_any_work(daemon, huge_png):
    pid = daemon.process.pid
    _reset_peak(pid)
    rss = _status(pid, "VmRSS")
    with Client(daemon.socket_path) as client:
        reply = client.request({"requestId": "m16", "width": 6000, "height": 6000,
                                "imageBase64": huge_png, "boxes": _boxes(16),
                                "maskEncoding": "rle"})
        assert reply["code"] == "request_too_large" and reply["requestId"] == "m16"
        assert "--max-request-mb" in reply["error"] and "17 masks" in reply["error"]
        # neither decoded (108 MB) nor encoded: the peak grew by the frame's bytes at most
        assert _status(pid, "VmHWM") - rss < 64 * 2**20
        raw = client.request({"requestId": "raw16", "width": 4000, "height": 4000,
                              "imageBase64": huge_png, "boxes": _boxes(16),
                              "maskEncoding": "raw"})
        assert raw["code"] == "reply_too_large" and "--max-reply-mb" in raw["error"]
        assert client.info()["limits"]["maxRequestBytes"] == 2048 * 2**20
        assert client.info()["limits"]["maxReplyBytes"] == 256 * 2**20
        assert client.ping()["ok"] is True


def _auto_totals(log: Path, request_id: str) -> set[int]:
    totals = set()
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # the line the daemon is writing now
            continue
        if rec.get("msg") == "Auto progress" and rec.get("requestId") == request_id:
            totals.add(rec["total"])
    return totals


def test_auto_runs_in_smaller_steps_under_a_small_bound_with_the_same_labels(
        daemon, tmp_path_factory, checkpoint):
    """600x400, 36 grid points: the session daemon (2 GiB) runs 16 points a step (3 steps);
    one with --max-request-mb 16 fits 3 points a step (15 MB of masks beside 4 MB for the
    image) and so runs 12, and gives the same label map."""
    coffee = encode_image(skimage.data.coffee(), "PNG")
    with Client(daemon.socket_path) as client:
        expected, table = client.auto(coffee, request_id="big-steps", **SETTINGS)
    small = start_daemon(tmp_path_factory.mktemp("small-budget"), "--checkpoint", str(checkpoint),
                         "--max-request-mb", "16", "--no-warmup")
    try:
        with Client(small.socket_path) as client:
            labels, small_table = client.auto(coffee, request_id="small-steps", **SETTINGS)
            assert client.info()["limits"]["maxRequestBytes"] == 16 * 2**20
        assert _auto_totals(small.log_path, "small-steps") == {1 + 12}
    finally:
        small.stop()
    assert _auto_totals(daemon.log_path, "big-steps") == {1 + 3}
    assert len(small_table) == len(table) >= 3
    assert float(np.mean(labels == expected)) >= 0.999
