"""Mask encodings on the wire: size and codec time per ``maskEncoding`` for a 1080p
mask, and warm by-imageId request time per encoding against a real daemon.

Part 1, no model: two 1920x1080 masks, an *object* (an ellipse with a wavy outline, like a
typical SAM2 mask) and a *textured* one (the astronaut photo's red channel > 127, many edges:
a bad case for RLE), each encoded with :func:`sam2_service.wire.codecs.encode_mask_as` and
decoded with :func:`~sam2_service.wire.codecs.decode_any_mask`; bytes are those of the mask's
JSON value as sent (``orjson.dumps``), times medians of ``--reps`` runs.

Part 2 (skip with ``--no-daemon``): a daemon on a temporary socket with random SAM2.1-tiny
weights (the same compute as real ones); a 1080p PNG is embedded once, then box requests by
``imageId`` are timed round trip, reply decoded to a numpy mask included, per encoding,
interleaved, ``--runs`` each. Writes the ``masks-cpu`` / ``masks-cuda`` section of
docs/benchmarks.md.

    python benchmarks/bench_masks.py --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pybase64
import skimage.data
import skimage.transform

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine, photo, publish, start_daemon  # noqa: E402

from sam2_service.client import Client  # noqa: E402
from sam2_service.wire.codecs import MASK_ENCODINGS, decode_any_mask, encode_mask_as  # noqa: E402

W, H = 1920, 1080


def masks() -> dict[str, np.ndarray]:
    """The two 1080p test masks (HxW bool)."""
    y, x = np.mgrid[0:H, 0:W]
    angle = np.arctan2(y - H / 2, x - W / 2)
    radius = 1 + 0.05 * np.sin(9 * angle)
    obj = ((x - W / 2) / (0.3 * W)) ** 2 + ((y - H / 2) / (0.35 * H)) ** 2 < radius ** 2
    astro = skimage.transform.resize(skimage.data.astronaut()[..., 0], (H, W),
                                     preserve_range=True)
    return {"object": obj, "textured": astro > 127}


def codec_rows(reps: int) -> list[str]:
    rows = []
    for name, mask in masks().items():
        for enc in MASK_ENCODINGS:
            enc_ms, dec_ms = [], []
            for _ in range(reps):
                t0 = time.perf_counter()
                key, value = encode_mask_as(mask, enc)
                enc_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                out = decode_any_mask({key: value}, W, H)
                dec_ms.append((time.perf_counter() - t0) * 1000)
            assert np.array_equal(out > 0, mask)
            size = len(orjson.dumps(value))
            rows.append(f"| {name} ({mask.mean() * 100:.0f}% fg) | {enc} | {size:,} | "
                        f"{statistics.median(enc_ms):.2f} | {statistics.median(dec_ms):.2f} |")
    return rows


def request_rows(device: str, runs: int) -> tuple[list[str], str]:
    import torch
    from sam2.build_sam import build_sam2

    from sam2_service.daemon.config import MODELS

    tmp = Path(tempfile.mkdtemp(prefix="s2s-bm-", dir="/tmp"))
    torch.manual_seed(0)
    ckpt = tmp / "random.pt"
    torch.save({"model": build_sam2(MODELS["tiny"][0], None, device="cpu").state_dict()}, ckpt)
    daemon = start_daemon(tmp, "--checkpoint", str(ckpt), "--device", device)
    times: dict[str, list[float]] = {e: [] for e in MASK_ENCODINGS}
    sizes: dict[str, int] = {}
    try:
        with Client(daemon.socket_path) as c:
            base = {"width": W, "height": H,
                    "bbox": {"x1": 0.2 * W, "y1": 0.2 * H, "x2": 0.7 * W, "y2": 0.8 * H}}
            first = c.request({**base, "imageBase64": pybase64.b64encode_as_string(
                photo(W, H, 0))})
            dtype = c.info()["dtype"]
            req = {**base, "imageId": first["imageId"]}
            for enc in MASK_ENCODINGS:  # warm-up, and the reply size
                payload = orjson.dumps(c.request({**req, "maskEncoding": enc}))
                sizes[enc] = len(payload)
            for _ in range(runs):
                for enc in MASK_ENCODINGS:
                    time.sleep(0.05)
                    t0 = time.perf_counter()
                    reply = c.request({**req, "maskEncoding": enc})
                    decode_any_mask(reply, W, H)
                    times[enc].append((time.perf_counter() - t0) * 1000)
    finally:
        daemon.stop()
    rows = [f"| {enc} | {sizes[enc]:,} | {statistics.median(times[enc]):.1f} |"
            for enc in MASK_ENCODINGS]
    return rows, dtype


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=20, help="codec runs per mask and encoding")
    ap.add_argument("--runs", type=int, default=10, help="timed requests per encoding")
    ap.add_argument("--no-daemon", action="store_true", help="codec table only")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args()
    lines = [f"Mask encodings, 1920x1080 mask; {machine('cpu')}; codec medians of {args.reps} "
             f"runs, ms; {time.strftime('%Y-%m-%d')}", "",
             "| mask | maskEncoding | bytes of the JSON value | encode | decode |",
             "| --- | --- | --- | --- | --- |", *codec_rows(args.reps)]
    if not args.no_daemon:
        rows, dtype = request_rows(args.device, args.runs)
        lines += ["", f"Warm by-imageId box request on a 1080p photo, SAM2.1 tiny (random "
                  f"weights), device {args.device} ({machine(args.device)}), dtype {dtype}: "
                  f"reply size and client round trip including the mask decode, medians of "
                  f"{args.runs} interleaved requests, ms", "",
                  "| maskEncoding | reply bytes | round trip |", "| --- | --- | --- |", *rows]
    publish("\n".join(lines) + "\n",
            "masks-cuda" if args.device.startswith("cuda") else "masks-cpu", not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
