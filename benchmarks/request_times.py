"""Cold and warm request times of the daemon, beside in-process SAM2ImagePredictor.

Starts a daemon process on a temporary socket and, in this process, a SAM2ImagePredictor
with the same weights on the same device, then times side by side, for each image size:

* in-process: base64 decode + PNG decode + ``set_image`` + ``predict`` (what one request
  costs without a daemon), and ``predict`` alone;
* daemon cold: the first segment request after the daemon started;
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

from integration.conftest import start_daemon  # noqa: E402

from sam2_service.client import Client  # noqa: E402
from sam2_service.config import MODELS  # noqa: E402

SIZES = {"600x400": (600, 400), "1920x1080": (1920, 1080)}


def test_image(width: int, height: int) -> bytes:
    """A real photo (skimage astronaut) resized to width x height, as PNG."""
    img = Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def autocast(device: str, dtype: str):
    import torch

    if dtype == "bfloat16":
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def in_process(predictor, png_b64: str, box: np.ndarray, device: str, dtype: str) -> tuple[float, float]:
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode(), autocast(device, dtype):
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB"))
        predictor.set_image(image)
        t1 = time.perf_counter()
        masks, _, _ = predictor.predict(box=box, multimask_output=False)
        sync(device)
    t2 = time.perf_counter()
    return (t2 - t0) * 1000, (t2 - t1) * 1000


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
    daemon = start_daemon(tmp, "--model", args.model, "--checkpoint", str(ckpt),
                          "--device", args.device)
    try:
        info = Client(daemon.socket_path).info()
        dtype = info["dtype"]
        model = build_sam2(MODELS[args.model][0], str(ckpt), device=args.device)
        predictor = SAM2ImagePredictor(model)
        rows = []
        for label, (w, h) in SIZES.items():
            png = test_image(w, h)
            b64 = base64.b64encode(png).decode()
            box = np.array([w * 0.2, h * 0.2, w * 0.7, h * 0.8], dtype=np.float32)
            request = {"width": w, "height": h, "imageBase64": b64,
                       "bbox": dict(zip(("x1", "y1", "x2", "y2"), box.tolist()))}
            with Client(daemon.socket_path) as c:
                t0 = time.perf_counter()
                reply = c.request({**request, "requestId": f"cold-{label}"})
                cold = (time.perf_counter() - t0) * 1000
                assert "error" not in reply, reply
                warm = []
                for i in range(args.runs):
                    t0 = time.perf_counter()
                    c.request({**request, "requestId": f"warm-{label}-{i}"})
                    warm.append((time.perf_counter() - t0) * 1000)
            in_process(predictor, b64, box, args.device, dtype)  # warm-up
            full, pred = zip(*(in_process(predictor, b64, box, args.device, dtype)
                               for _ in range(args.runs)))
            rows.append((label, statistics.median(full), statistics.median(pred), cold,
                         statistics.median(warm)))
    finally:
        daemon.stop()

    dev_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or platform.machine()
    print(f"\nSAM2.1 {args.model}, device {args.device} ({dev_name}), dtype {dtype}, torch {torch.__version__}, "
          f"{args.runs} runs, medians in ms, {time.strftime('%Y-%m-%d')}\n")
    print("| image (PNG) | in-process decode+set_image+predict | in-process predict | daemon cold | daemon warm | warm / in-process |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, full, pred, cold, warm in rows:
        print(f"| {label} | {full:.1f} | {pred:.1f} | {cold:.1f} | {warm:.1f} | {warm / full:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
