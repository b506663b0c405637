"""Timings of ``{"op": "auto"}`` against a daemon (``--dummy-weights``: the same compute as
real weights), and the wait of segment requests sent while it runs.

Cases: a 1024x1024 photo (skimage's astronaut) with SAM2AutomaticMaskGenerator's defaults;
the same with the filters off (every mask kept: painting and RLE work included); a 4096x4096
image (the photo tiled 4x4) cut into 1024x1024 tiles with a 128-pixel halo. During the first
case a client sends a segment request by imageId once a second and records its round trip.
Prints a Markdown table; paste it into docs/benchmarks.md.

    python benchmarks/bench_auto.py --device cpu --tiled-points-per-side 8 [--cases defaults]
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
    """A ``--dummy-weights`` daemon on ``sock``, once it answers a ping (``tries`` x 0.2 s)."""
    proc = subprocess.Popen([sys.executable, "-m", "sam2_service", "serve", "--dummy-weights",
                             "--socket", sock, "--device", device, "--log-file",
                             sock + ".log", "--auto-timeout", "3600"],
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiled-points-per-side", type=int, default=32)
    ap.add_argument("--cases", default="defaults,filters-off,tiled",
                    help="which cases to run, comma-separated")
    args = ap.parse_args()
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
