"""Cold and warm request times of the daemon, beside in-process SAM2ImagePredictor.

Starts a daemon process on a temporary socket and, in this process, a SAM2ImagePredictor
with the same weights on the same device, then times side by side, for each image size:

* in-process: base64 decode + PNG decode + ``set_image`` + ``predict`` (what one request
  costs without a daemon), and ``predict`` alone;
* daemon cold: the first segment request of a freshly started daemon, with the default
  warm-up and with ``--no-warmup``;
* daemon warm: later requests (each still re-encodes its image: protocol v1 has no cache).

Prints a Markdown table of medians. Without ``--checkpoint`` it saves a random-weight
SAM2.1 checkpoint first (the compute is the same as with real weights).

    python benchmarks/request_times.py --device cpu --runs 5
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from integration.conftest import reference_inference, start_daemon  # noqa: E402

from sam2_service.client import Client  # noqa: E402
from sam2_service.config import MODELS  # noqa: E402

SIZES = {"600x400": (600, 400), "1920x1080": (1920, 1080)}


def test_image(width: int, height: int) -> bytes:
    """A real photo (skimage astronaut) resized to width x height, as PNG."""
    img = Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def segment_request(width: int, height: int) -> dict:
    """A box request over the middle of the test image of that size."""
    box = [width * 0.2, height * 0.2, width * 0.7, height * 0.8]
    return {"width": width, "height": height,
            "imageBase64": base64.b64encode(test_image(width, height)).decode(),
            "bbox": dict(zip(("x1", "y1", "x2", "y2"), box))}


def cold_request(daemon, width: int, height: int) -> float:
    """Time the first request of a fresh daemon, then stop it; ms."""
    try:
        with Client(daemon.socket_path) as c:
            t0 = time.perf_counter()
            reply = c.request(segment_request(width, height))
            assert "error" not in reply, reply
            return (time.perf_counter() - t0) * 1000
    finally:
        daemon.stop()


def machine(device: str) -> str:
    import os
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    name = platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores"


def in_process(predictor, png_b64: str, box: np.ndarray, device: str, dtype: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    with reference_inference(device, dtype):
        image = np.array(Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB"))
        predictor.set_image(image)
        t1 = time.perf_counter()
        masks, _, _ = predictor.predict(box=box, multimask_output=False)
        sync(device)
    t2 = time.perf_counter()
    return (t2 - t0) * 1000, (t2 - t1) * 1000


def measure_size(tmp: Path, serve_args: tuple[str, ...], predictor, w: int, h: int,
                 device: str, runs: int) -> tuple[float, float, float, float, float, str]:
    """(in-process full median, in-process predict median, cold --no-warmup, cold, warm median,
    dtype) for one image size, in ms."""
    request = segment_request(w, h)
    box = np.array([request["bbox"][k] for k in ("x1", "y1", "x2", "y2")], dtype=np.float32)
    cold_nw = cold_request(start_daemon(tmp, *serve_args, "--no-warmup"), w, h)
    daemon = start_daemon(tmp, *serve_args)
    try:
        dtype = Client(daemon.socket_path).info()["dtype"]
        full, pred, warm = [], [], []
        with Client(daemon.socket_path) as c:
            t0 = time.perf_counter()
            assert "error" not in c.request(request)
            cold = (time.perf_counter() - t0) * 1000
            in_process(predictor, request["imageBase64"], box, device, dtype)  # warm-up
            for _ in range(runs):  # interleaved, so both see the same machine state
                t0 = time.perf_counter()
                c.request(request)
                warm.append((time.perf_counter() - t0) * 1000)
                f, p = in_process(predictor, request["imageBase64"], box, device, dtype)
                full.append(f)
                pred.append(p)
    finally:
        daemon.stop()
    return (statistics.median(full), statistics.median(pred), cold_nw, cold,
            statistics.median(warm), dtype)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tiny", choices=list(MODELS))
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    import torch
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    tmp = Path(tempfile.mkdtemp(prefix="s2s-bench-", dir="/tmp"))
    ckpt = args.checkpoint
    if ckpt is None:
        torch.manual_seed(0)
        ckpt = tmp / "random.pt"
        torch.save({"model": build_sam2(MODELS[args.model][0], None, device="cpu").state_dict()}, ckpt)
    # start_daemon passes --device $SAM2_TEST_DEVICE; the later --device wins in argparse
    serve_args = ("--model", args.model, "--checkpoint", str(ckpt), "--device", args.device)
    model = build_sam2(MODELS[args.model][0], str(ckpt), device=args.device)
    predictor = SAM2ImagePredictor(model)
    rows = [(label, *measure_size(tmp, serve_args, predictor, w, h, args.device, args.runs))
            for label, (w, h) in SIZES.items()]
    dtype = rows[0][-1]

    print(f"\nSAM2.1 {args.model}, device {args.device} ({machine(args.device)}), dtype {dtype}, "
          f"torch {torch.__version__}, {args.runs} runs, medians in ms, {time.strftime('%Y-%m-%d')}\n")
    print("| image (PNG) | in-process decode+set_image+predict | in-process predict "
          "| daemon cold, --no-warmup | daemon cold (warm-up on) | daemon warm | warm / in-process |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, full, pred, cold_nw, cold, warm, _ in rows:
        print(f"| {label} | {full:.1f} | {pred:.1f} | {cold_nw:.1f} | {cold:.1f} | {warm:.1f} "
              f"| {warm / full:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
