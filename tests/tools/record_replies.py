"""Record a dummy-weights daemon's replies to a fixed set of requests, for comparing two
versions of the code byte for byte (a refactor must not change a reply).

    python tests/tools/record_replies.py OUT.jsonl [--pythonpath DIR]

Starts ``sam2-service serve --dummy-weights`` (seeded random weights: the same masks every
run on one machine) on a temporary socket, sends each request of :func:`requests` over the
seed framing (4-byte little-endian length + UTF-8 JSON), and writes one line per reply: the
reply's bytes with only what must vary between runs replaced, in place and in the reply's own
key order: every ``...Ms`` time (0; in a dict such as ``timingsMs``, each value), ``pid`` (0),
``socket`` (the placeholder ``SOCKET``), each ``maskId`` (``MASK<n>`` in order of appearance)
and each made-up ``srv-`` request id (``SRV``). ``cmp`` two such files: no output means
byte-identical replies.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from PIL import Image


def _png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def requests() -> list[dict]:
    """The requests, in order; ``{imageId}`` and ``{mask0}`` are filled from earlier replies."""
    from skimage import data
    photo = _png(data.astronaut()[::2, ::2])  # 256x256
    small = _png(data.coffee()[:96, :128])
    w = h = 256
    return [
        {"op": "ping", "requestId": "p1"},
        {"op": "ping"},
        {"op": "segment", "requestId": "s-box", "imageBase64": photo, "width": w, "height": h,
         "bbox": {"x1": 40, "y1": 30, "x2": 200, "y2": 220}},
        {"op": "segment", "requestId": "s-pts", "imageId": "{imageId}", "width": w, "height": h,
         "points": [{"x": 120, "y": 90, "label": 1}, {"x": 20, "y": 20, "label": 0}]},
        {"op": "segment", "requestId": "s-multi", "imageId": "{imageId}", "width": w, "height": h,
         "points": [{"x": 120, "y": 90, "label": 1}], "multimask": True, "maskEncoding": "rle"},
        {"op": "segment", "requestId": "s-boxes", "imageId": "{imageId}", "width": w, "height": h,
         "boxes": [{"x1": 10, "y1": 10, "x2": 100, "y2": 120}, {"x1": 120, "y1": 60, "x2": 250, "y2": 250}],
         "maskEncoding": "png"},
        {"op": "segment", "requestId": "s-raw", "imageId": "{imageId}", "width": w, "height": h,
         "bbox": {"x1": 40, "y1": 30, "x2": 200, "y2": 220}, "maskEncoding": "raw"},
        {"op": "segment", "requestId": "s-refine", "imageId": "{imageId}", "width": w, "height": h,
         "points": [{"x": 130, "y": 100, "label": 1}], "maskInput": "{mask0}", "maskEncoding": "rle"},
        {"op": "embed", "requestId": "e1", "imageBase64": photo, "width": w, "height": h},
        {"op": "embed", "requestId": "e2", "imageBase64": small, "width": 128, "height": 96},
        {"op": "auto", "requestId": "a1", "imageBase64": small, "width": 128, "height": 96,
         "settings": {"pointsPerSide": 2, "predIouThresh": 0, "stabilityScoreThresh": 0}},
        {"op": "segment", "requestId": "bad1", "imageId": "{imageId}", "width": w, "height": h},
        {"op": "segment", "imageId": "{imageId}", "width": w, "height": h,
         "points": [{"x": 999, "y": 1, "label": 1}]},
        {"op": "segment", "requestId": "bad3", "imageId": "0" * 64, "width": w, "height": h,
         "points": [{"x": 1, "y": 1, "label": 1}]},
        {"op": "nope", "requestId": "bad4"},
        {"op": "segment", "requestId": "bad5", "imageBase64": "!!!", "width": w, "height": h,
         "points": [{"x": 1, "y": 1}]},
        {"op": "release", "requestId": "r1", "imageId": "{imageId}"},
        {"op": "release", "requestId": "r2", "imageId": "{imageId}"},
        {"op": "info", "requestId": "i1"},
    ]


def _zero(value):
    """A time in ms, or a dict of them: zeros in the same shape."""
    return dict.fromkeys(value, 0) if isinstance(value, dict) else 0


def _normalize(reply: dict, masks: dict[str, str]) -> dict:
    def walk(value, key=None):
        if isinstance(value, dict):
            return {k: _zero(v) if k.endswith("Ms") else walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if key == "maskId" and isinstance(value, str):
            return masks.setdefault(value, f"MASK{len(masks)}")
        if key == "requestId" and isinstance(value, str) and value.startswith("srv-"):
            return "SRV"
        if key == "pid":
            return 0
        if key == "socket":
            return "SOCKET"
        return value
    return walk(reply)


def _call(sock: socket.socket, obj: dict) -> dict:
    payload = orjson.dumps(obj)
    sock.sendall(struct.pack("<I", len(payload)) + payload)
    head = b""
    while len(head) < 4:
        head += sock.recv(4 - len(head))
    (n,) = struct.unpack("<I", head)
    body = b""
    while len(body) < n:
        body += sock.recv(n - len(body))
    return orjson.loads(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--pythonpath", default=None, help="import sam2_service from this folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    sock_path = tmp / "d.sock"
    env = {**os.environ, "PYTHONPATH": args.pythonpath or ""}
    daemon = subprocess.Popen([sys.executable, "-m", "sam2_service", "serve", "--dummy-weights",
                               "--device", "cpu", "--socket", str(sock_path),
                               "--log-file", str(tmp / "d.log")], env=env)
    try:
        for _ in range(600):
            if sock_path.exists():
                break
            time.sleep(0.5)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(sock_path))
        sock.settimeout(600)
        filled: dict[str, str] = {}
        masks: dict[str, str] = {}
        lines = []
        for req in requests():
            req = {k: (v.format(**filled) if isinstance(v, str) and "{" in v else v) for k, v in req.items()}
            reply = _call(sock, req)
            if "imageId" in reply and req.get("requestId") == "s-box":
                filled["imageId"] = reply["imageId"]
            if req.get("requestId") == "s-multi":
                filled["mask0"] = reply["maskId"]
            lines.append(orjson.dumps(_normalize(reply, masks)))
        args.out.write_bytes(b"\n".join(lines) + b"\n")
    finally:
        daemon.terminate()
        daemon.wait(60)


if __name__ == "__main__":
    main()
