"""``--compile`` against eager SAM2, in one process: predict times and the compile time.

Two :class:`~sam2_service.daemon.inference.engine.Sam2Engine` with the same weights (``--dummy-weights``,
seeded, so both are identical; the compute is that of real weights) on the same device: one
eager, one built with ``--compile <mode>``, whose warm-up compiles (the time is the engine's
``compileMs``, as ``info`` reports it). On skimage's astronaut resized to 1920x1080, with the
embedding computed once per engine, ``predict`` (prompt encoder, mask decoder, upsampling to
1080p, copy to host) is timed for a box prompt and a one-point multimask prompt, the two
engines alternating round by round so that both see the same machine state; with
``--mode all`` the embedding (``set_image``) is timed too. Prints a Markdown table of
medians; writes nothing.

torch keeps compiled code in an on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_<user>``), which makes a daemon's later starts compile faster; the
compile time here is a first start's, with an empty cache of its own, unless
``--warm-cache``.

    python benchmarks/bench_compile.py --device cpu --runs 15
"""

from __future__ import annotations

import argparse
import os
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

from sam2_service.daemon.config import ServiceConfig  # noqa: E402
from sam2_service.daemon.inference.engine import Sam2Engine  # noqa: E402
from sam2_service.daemon.inference.prompts import Prompts  # noqa: E402

WIDTH, HEIGHT = 1920, 1080
PROMPTS = {
    "box": Prompts(None, None, np.array([700, 80, 1250, 900], np.float32), False),
    "1 point, multimask": Prompts(np.array([[960, 400]], np.float32),
                                  np.array([1], np.int32), None, True),
}


def ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--mode", default="decoder", choices=["decoder", "all"])
    ap.add_argument("--runs", type=int, default=15, help="timed rounds per prompt")
    ap.add_argument("--warm-cache", action="store_true",
                    help="use torch's usual compile cache instead of an empty one")
    args = ap.parse_args()
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-compile-")

    import torch

    base = ServiceConfig(model=args.model, device=args.device, dummy_weights=True)
    eager = Sam2Engine.load(base)
    eager.warmup()
    compiled = Sam2Engine.load(ServiceConfig(model=args.model, device=args.device,
                                             dummy_weights=True, compile=args.mode))
    compiled.warmup()
    info = compiled.info().compile

    image = np.array(Image.fromarray(skimage.data.astronaut()).resize((WIDTH, HEIGHT),
                                                                      Image.BILINEAR))
    embeddings = {id(e): e.embed(image) for e in (eager, compiled)}
    rows = []
    for name, prompts in PROMPTS.items():
        a, b = (e.predict_all(embeddings[id(e)], prompts) for e in (eager, compiled))
        diff = float(np.abs(a.logits - b.logits).max())
        times: dict[int, list[float]] = {id(eager): [], id(compiled): []}
        for _ in range(args.runs):
            for e in (eager, compiled):
                times[id(e)].append(ms(lambda e=e, p=prompts: e.predict_all(embeddings[id(e)], p)))
        rows.append((f"predict, {name}", statistics.median(times[id(eager)]),
                     statistics.median(times[id(compiled)]), f"{diff:.1e}"))
    if args.mode == "all":
        times = {id(eager): [], id(compiled): []}
        for _ in range(max(3, args.runs // 3)):
            for e in (eager, compiled):
                times[id(e)].append(ms(lambda e=e: e.embed(image)))
        rows.append(("embed (set_image)", statistics.median(times[id(eager)]),
                     statistics.median(times[id(compiled)]), ""))

    print(f"SAM2.1 {args.model}, {WIDTH}x{HEIGHT}, {args.device} "
          f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, `--compile {args.mode}` "
          f"({', '.join(f'{p}: {m}' for p, m in info['parts'].items())}); "
          f"medians of {args.runs} interleaved runs\n")
    print("| | eager ms | compiled ms | eager / compiled | largest logit difference |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, e, c, diff in rows:
        print(f"| {name} | {e:.1f} | {c:.1f} | {e / c:.2f}x | {diff} |")
    cache = "torch's usual cache" if args.warm_cache else "empty cache"
    print(f"\ncompile (during the warm-up, {cache}): {info['compileMs'] / 1000:.1f} s, "
          f"{compiled.compiled.graphs} graphs; graphs compiled by the timed requests: "
          f"{info['graphs'] - compiled.compiled.graphs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
