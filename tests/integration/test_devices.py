"""One model per device (``--device`` lists) in a real daemon process: ``--device cpu,cpu``
loads two random-weight SAM2.1-tiny models on the CPU, each with its own inference thread and
cache; ``info`` lists both, an embedded image is segmented by its ``imageId`` on the device
that holds it, and the daemon stops cleanly."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from sam2_service.client import Client

from .conftest import encode_image, start_daemon

pytestmark = pytest.mark.model


def test_two_models_on_the_cpu(tmp_path):
    daemon = start_daemon(tmp_path, "--dummy-weights", "--device", "cpu,cpu")
    try:
        img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        text = base64.b64encode(encode_image(img, "PNG")).decode()
        box = {"x1": 8, "y1": 8, "x2": 40, "y2": 32}
        with Client(daemon.socket_path, timeout=300) as client:
            info = client.info()
            assert [d["device"] for d in info["devices"]] == ["cpu", "cpu"]
            assert [d["index"] for d in info["devices"]] == [0, 1]
            assert all(d["dtype"] == "float32" and d["loadTimeMs"] > 0 for d in info["devices"])
            assert info["device"] == "cpu" and info["weights"] == "dummy"

            embed = client.request({"op": "embed", "requestId": "e", "imageBase64": text})
            assert embed["cached"] is False, embed
            holders = [d["cache"]["entries"] for d in client.info()["devices"]]
            assert sorted(holders) == [0, 1]

            seg = client.request({"requestId": "s", "width": 64, "height": 48,
                                  "imageId": embed["imageId"], "bbox": box})
            assert "error" not in seg and seg["cached"] is True, seg
            again = client.request({"requestId": "s2", "width": 64, "height": 48,
                                    "imageBase64": text, "bbox": box})
            assert again["cached"] is True and again["maskBase64"] == seg["maskBase64"]
            devices = client.info()["devices"]
            assert [d["cache"]["entries"] for d in devices] == holders  # not embedded twice
            assert sum(d["cache"]["hits"] for d in devices) >= 2

            released = client.request({"op": "release", "requestId": "r",
                                       "imageId": embed["imageId"]})
            assert released["released"] is True
            assert [d["cache"]["entries"] for d in client.info()["devices"]] == [0, 0]
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output()
    lines = [orjson.loads(line) for line in daemon.log_path.read_text().splitlines()]
    loaded = [line for line in lines if line["msg"] == "Model loaded successfully"]
    assert sorted((line["device"], line["deviceIndex"]) for line in loaded) == [("cpu", 0),
                                                                                 ("cpu", 1)]
    assert len([line for line in lines if line["msg"] == "Warm-up complete"]) == 2
