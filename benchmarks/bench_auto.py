"""Timings of ``{"op": "auto"}`` against a daemon (``--dummy-weights``: the same compute as
real weights), and the wait of segment requests sent while it runs.

Cases: a 1024x1024 photo (skimage's astronaut) with SAM2AutomaticMaskGenerator's defaults;
the same with the filters off (every mask kept: painting and RLE work included); a 4096x4096
image (the photo tiled 4x4) cut into 1024x1024 tiles with a 128-pixel halo. During the first
case a client sends a segment request by imageId once a second and records its round trip.
Prints a Markdown table; paste it into docs/benchmarks.md.

``--vs-generator 512,1024`` instead times ``auto`` against SAM2AutomaticMaskGenerator.generate
in this process on the same random weights (``--dummy-weights``' seed), side by side, for a
real photo at each size, with the generator's defaults and with every candidate kept
(``predIouThresh`` and ``stabilityScoreThresh`` 0, ``boxNmsThresh`` 1.0). Both times include
the image's encoding (each case's image differs by one pixel, so the daemon's embedding cache
does not help). Writes the ``auto-vs-sam2-<device>`` section of docs/benchmarks.md.

    python benchmarks/bench_auto.py --device cpu --tiled-points-per-side 8 [--cases defaults]
    python benchmarks/bench_auto.py --device cpu --vs-generator 512,1024
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from sam2_service.client import Client


def _start(sock: str, device: str, tries: int = 600) -> subprocess.Popen:
    """A ``--dummy-weights`` daemon on ``sock``, once it answers a ping (``tries`` x 0.2 s).
    Its embedding cache's disk tier is a fresh folder beside the socket: the user's own
    (``$XDG_CACHE_HOME/sam2-service``) would answer images an earlier run has seen."""
    proc = subprocess.Popen([sys.executable, "-m", "sam2_service", "serve", "--dummy-weights",
                             "--socket", sock, "--device", device, "--log-file",
                             sock + ".log", "--auto-timeout", "3600",
                             "--cache-dir", sock + ".embeddings"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(tries):
        try:
            with Client(sock, timeout=5) as c:
                c.ping()
                return proc
        except Exception:
            time.sleep(0.2)
    raise RuntimeError("daemon did not start")


def _timed_auto(sock: str, image: np.ndarray, **kw) -> tuple[float, dict, int]:
    with Client(sock, timeout=3600) as c:
        t0 = time.perf_counter()
        result = c.auto(image, **kw)
        return (time.perf_counter() - t0) * 1000, result.raw["timingsMs"], len(result.table)


#: The two settings the issue's goal names: the generator's defaults, and every candidate
#: kept (random weights pass few masks through the defaults' filters).
VS_CASES = {"defaults": {},
            "filters off, box NMS 1.0": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                                         "box_nms_thresh": 1.0}}


def vs_generator(device: str, sizes: list[int], points_per_side: int, write: bool) -> None:
    """``auto`` round trips against SAM2AutomaticMaskGenerator.generate in process."""
    import torch
    from bench import machine, publish  # benchmarks/, the script's folder, is on sys.path
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    from sam2_service.daemon.inference.engine import DUMMY_SEED

    torch.manual_seed(DUMMY_SEED)  # the daemon's --dummy-weights: the same weights
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device=device)
    sock = str(Path(tempfile.mkdtemp(prefix="s2a-", dir="/tmp")) / "s.sock")
    proc = _start(sock, device)
    rows = []
    try:
        for size in sizes:
            for k, (name, kw) in enumerate(VS_CASES.items()):
                image = np.array(Image.fromarray(skimage.data.astronaut()).resize((size, size)))
                image[0, 0] = (k, size % 256, 7)  # a new image for each case: cold cache
                kw = {"points_per_side": points_per_side, **kw}
                ms, tm, labels = _timed_auto(sock, image, **kw)
                gen = SAM2AutomaticMaskGenerator(model, **kw)
                t0 = time.perf_counter()
                with torch.inference_mode(), torch.autocast(
                        "cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                    masks = len(gen.generate(image))  # as the daemon's default precision
                ref = (time.perf_counter() - t0) * 1000
                rows.append((f"{size}x{size}", name, ref, ms, tm, masks, labels))
                print(rows[-1], flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    dtype = "bfloat16 autocast" if device.startswith("cuda") else "float32"
    lines = [f"SAM2.1 tiny, {machine(device)}, {dtype}, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}; pointsPerSide {points_per_side}; one run of each, side "
             "by side in one process (the daemon idle while the generator runs).", "",
             "| image | settings | SAM2 generate ms | daemon auto ms | ratio | encode | "
             "generate | paint | generator masks | auto labels |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for img, name, ref, ms, tm, masks, labels in rows:
        lines.append(f"| {img} | {name} | {ref:.0f} | {ms:.0f} | {ms / ref:.2f}x | "
                     f"{tm['encode']:.0f} | {tm['generate']:.0f} | {tm['paint']:.0f} | "
                     f"{masks} | {labels} |")
    publish("\n".join(lines) + "\n", f"auto-vs-sam2-{device.split(':')[0]}", write)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiled-points-per-side", type=int, default=32)
    ap.add_argument("--cases", default="defaults,filters-off,tiled",
                    help="which cases to run, comma-separated")
    ap.add_argument("--vs-generator", default="",
                    help="image sizes (comma-separated) to time against SAM2's generator")
    ap.add_argument("--points-per-side", type=int, default=32, help="with --vs-generator")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args()
    if args.vs_generator:
        vs_generator(args.device, [int(v) for v in args.vs_generator.split(",")],
                     args.points_per_side, not args.no_write)
        return
    photo = np.array(Image.fromarray(skimage.data.astronaut()).resize((1024, 1024)))
    big = np.tile(photo, (4, 4, 1))
    sock = str(Path(tempfile.mkdtemp(prefix="s2a-", dir="/tmp")) / "s.sock")
    proc = _start(sock, args.device)
    rows = []
    try:
        with Client(sock) as c:
            ref = c.embed(photo)
        waits: list[float] = []
        stop = threading.Event()

        def poke() -> None:
            with Client(sock) as c:
                while not stop.wait(1.0):
                    t0 = time.perf_counter()
                    c.segment(ref, points=[(500, 500)])
                    waits.append((time.perf_counter() - t0) * 1000)

        t = threading.Thread(target=poke)
        t.start()
        rows.append(("1024x1024, defaults", *_timed_auto(sock, photo)))  # always: waits
        stop.set()
        t.join()
        cases = args.cases.split(",")
        if "filters-off" in cases:
            rows.append(("1024x1024, filters off", *_timed_auto(
                sock, photo, pred_iou_thresh=0.0, stability_score_thresh=0.0)))
        if "tiled" in cases:
            rows.append((f"4096x4096, tiles 1024 halo 128, pointsPerSide "
                         f"{args.tiled_points_per_side}",
                         *_timed_auto(sock, big, tile_shape=(1024, 1024), halo=(128, 128),
                                      points_per_side=args.tiled_points_per_side)))
    finally:
        proc.terminate()
        proc.wait(60)
    print("| case | round trip ms | encode | generate | paint | queue | labels |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, ms, tm, n in rows:
        print(f"| {name} | {ms:.0f} | {tm['encode']:.0f} | {tm['generate']:.0f} | "
              f"{tm['paint']:.0f} | {tm['queue']:.0f} | {n} |")
    if waits:
        print(f"\nsegment requests during the first case: {len(waits)}, round trip median "
              f"{statistics.median(waits):.0f} ms, max {max(waits):.0f} ms")


if __name__ == "__main__":
    main()
