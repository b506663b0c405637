"""Images per second of ``sam2-service batch --engine daemon`` against a plain loop calling
``Client.auto`` one image after another, and against SAM2AutomaticMaskGenerator in process,
side by side in one run.

The images are 512x512 crops of skimage.data photos (16 by default), ``--points-per-side 16``,
SAM2AutomaticMaskGenerator's filters (``--filters-off``: none, so that the masks' RLE, NMS and
painting cost what real weights' kept masks cost; random weights, ``--dummy-weights``, pass
no default filter, and with them off a 2-core CPU took 4x as long). The daemon is started here; between the
cases every image's embedding is released, so each case computes its own. The in-process
generator is SAM2AutomaticMaskGenerator on the same random weights (seed 0, as the daemon's
``--dummy-weights``) in this process, after the daemon is stopped. Writes the table under
"Batch automatic segmentation" in docs/benchmarks.md with ``--write`` (its ``batch-<device>``
markers).

    python benchmarks/bench_batch.py --device cpu [--images 16] [--write]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
from bench_auto import _start  # benchmarks/, the script's folder, is on sys.path
from PIL import Image

from sam2_service.batch import run
from sam2_service.client import Client

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict = {"points_per_side": 16}
FILTERS_OFF = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
#: The device kind, for the docs section's name (set by main).
DEVICE = ["cpu"]


def _images(folder: Path, n: int) -> list[Path]:
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
              skimage.data.rocket()]
    paths = []
    for i in range(n):
        photo = np.array(Image.fromarray(photos[i % 4]).resize((640, 640)))
        dy, dx = (i // 4) * 37 % 128, (i // 4) * 53 % 128
        path = folder / f"img{i:02d}.png"
        Image.fromarray(photo[dy:dy + 512, dx:dx + 512]).save(path)
        paths.append(path)
    return paths


def _release(sock: str, paths: list[Path]) -> None:
    import hashlib

    with Client(sock, timeout=60) as c:
        for p in paths:
            c.release(hashlib.sha256(p.read_bytes()).hexdigest())


def _loop(sock: str, paths: list[Path]) -> float:
    t0 = time.perf_counter()
    with Client(sock, timeout=3600) as c:
        for p in paths:
            c.auto(str(p), **SETTINGS)
    return time.perf_counter() - t0


def _batch(sock: str, paths: list[Path], out: Path) -> float:
    t0 = time.perf_counter()
    summary = run(paths, out, SETTINGS, socket_path=sock, timeout=3600)
    assert summary.done == len(paths), summary
    return time.perf_counter() - t0


def _in_process(paths: list[Path], device: str) -> float:
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device=device)
    gen = SAM2AutomaticMaskGenerator(model, **SETTINGS)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    with torch.inference_mode():
        gen.generate(images[0])  # warm-up, as the daemon's
        t0 = time.perf_counter()
        for im in images:
            gen.generate(im)
    return time.perf_counter() - t0


def _write(table: str) -> None:
    """Make ``table`` the ``batch-<device>`` section of docs/benchmarks.md (between its
    ``<!-- bench:... -->`` markers, the text around them kept)."""
    from bench import write_section  # benchmarks/, the script's folder, is on sys.path

    write_section(f"batch-{DEVICE[0]}", table + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--filters-off", action="store_true", help="keep every mask")
    ap.add_argument("--write", action="store_true", help="write the table to docs/benchmarks.md")
    args = ap.parse_args()
    if args.filters_off:
        SETTINGS.update(FILTERS_OFF)
    DEVICE[0] = args.device.split(":")[0]
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        paths = _images(Path(tmp), args.images)
        sock = os.path.join(tmp, "s.sock")
        proc = _start(sock, args.device, tries=900)
        try:
            loop_s = _loop(sock, paths)
            _release(sock, paths)
            batch_s = _batch(sock, paths, Path(tmp) / "out")
        finally:
            proc.terminate()
            proc.wait(60)
        inproc_s = _in_process(paths, args.device)
    n = len(paths)
    rows = [("`Client.auto` loop, one image after another", loop_s),
            ("`batch --engine daemon` (next image embedded ahead)", batch_s),
            ("SAM2AutomaticMaskGenerator in process", inproc_s)]
    filters = "filters off" if args.filters_off else "the generator's filters"
    table = (f"{n} images of 512x512, `--points-per-side 16`, {filters}, SAM2.1-tiny random "
             f"weights, device `{args.device}` (`benchmarks/bench_batch.py`; one run; each daemon "
             f"case encodes every image: a fresh `--cache-dir`; {time.strftime('%Y-%m-%d')}):\n\n"
             "| how | seconds | images/s | vs the loop |\n| --- | --- | --- | --- |\n"
             + "\n".join(f"| {name} | {s:.1f} | {n / s:.3f} | {loop_s / s:.2f}x |"
                         for name, s in rows))
    print(table)
    if args.write:
        _write(table)


if __name__ == "__main__":
    main()
