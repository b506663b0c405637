"""A restarted daemon answering 1080p images it has seen (the embedding cache's disk tier)
beside cold requests, in one run.

A first daemon, with a fresh ``--cache-dir``, answers a box prompt on ``2 x runs`` 1920x1080
PNGs (each differs in one pixel, so each is a new image: cold). It is stopped (its pending
disk writes finish) and a second daemon is started on the same folder. Then, round by round,
interleaved so both see the same machine state, the second daemon answers:

* **cold**: a 1080p image neither daemon has seen (decode + encode + predict);
* **restarted, image resent**: an image the first daemon saw, sent again (its embedding is
  read from disk, not encoded);
* **restarted, by imageId**: another seen image, sent as its ``imageId`` only (no transfer;
  before the disk tier this was ``unknown_image``).

Each restarted answer must say ``cached: true`` and carry the same mask bytes and score as
the first daemon's answer on that image. Times are what a client sees (``bench.RawClient``:
base64, JSON, socket, mask decoding). Goal: restarted <= 0.15x cold. Prints a Markdown
table of medians and writes it as the ``disk-cache-<device>`` section of docs/benchmarks.md
(``--no-write``: print only). Without ``--checkpoint`` a random-weight SAM2.1 checkpoint is
saved first (the same compute as real weights).

    python benchmarks/bench_disk_cache.py --device cpu --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import RawClient, machine, photo, publish, seg_request  # benchmarks/ is on sys.path
from integration.conftest import start_daemon  # bench put tests/ on the path

from sam2_service.daemon.config import MODELS

W, H = 1920, 1080
GOAL = 0.15


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tiny", choices=list(MODELS))
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--runs", type=int, default=5, help="rounds")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="s2s-disk-", dir="/tmp"))
    ckpt = args.checkpoint or random_checkpoint(args.model, tmp / "random.pt")
    serve = ("--model", args.model, "--checkpoint", str(ckpt), "--device", args.device,
             "--cache-dir", str(tmp / "embeddings"))
    n = args.runs
    images = [photo(W, H, i) for i in range(3 * n)]
    t: dict[str, list[float]] = {"first daemon, cold": [], "cold": [],
                                 "restarted, image resent": [], "restarted, by imageId": []}
    first = {}
    (tmp / "a").mkdir()
    daemon = start_daemon(tmp / "a", *serve)
    try:
        c = RawClient(daemon.socket_path)
        for i in range(2 * n):
            ms, reply = c.ask(seg_request(images[i], W, H))
            assert reply["cached"] is False
            t["first daemon, cold"].append(ms)
            first[i] = reply
    finally:
        assert daemon.stop() == 0, daemon.output()
    started = time.perf_counter()
    (tmp / "b").mkdir()
    daemon = start_daemon(tmp / "b", *serve)
    start_s = time.perf_counter() - started
    try:
        c = RawClient(daemon.socket_path)
        for i in range(n):
            ms, reply = c.ask(seg_request(images[2 * n + i], W, H))
            assert reply["cached"] is False
            t["cold"].append(ms)
            ms, reply = c.ask(seg_request(images[i], W, H))
            check_same(reply, first[i])
            t["restarted, image resent"].append(ms)
            ms, reply = c.ask(seg_request(None, W, H, image_id=first[n + i]["imageId"]))
            check_same(reply, first[n + i])
            t["restarted, by imageId"].append(ms)
    finally:
        assert daemon.stop() == 0, daemon.output()
    publish(report(t, args, start_s) + "\n", f"disk-cache-{args.device.split(':')[0]}",
            not args.no_write)
    return 0


def random_checkpoint(model: str, path: Path) -> Path:
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    torch.save({"model": build_sam2(MODELS[model][0], None, device="cpu").state_dict()}, path)
    return path


def check_same(reply: dict, before: dict) -> None:
    """A restarted answer: from the cache, no encoding, the first daemon's mask and score."""
    assert reply["cached"] is True and reply["timingsMs"]["encode"] == 0, reply["timingsMs"]
    assert reply["maskBase64"] == before["maskBase64"] and reply["score"] == before["score"]


def report(t: dict[str, list[float]], args: argparse.Namespace, start_s: float) -> str:
    cold = statistics.median(t["cold"])
    lines = [f"SAM2.1 {args.model}, device {args.device} ({machine(args.device)}), {W}x{H} PNG, "
             f"box prompt; {args.runs} rounds; medians in ms; second daemon ready in "
             f"{start_s:.1f} s; {time.strftime('%Y-%m-%d')}", "",
             "| request | median ms | vs cold | goal |", "| --- | ---: | ---: | --- |"]
    for name, samples in t.items():
        m = statistics.median(samples)
        restarted = name.startswith("restarted")
        verdict = (f"<= {GOAL} ({'met' if m / cold <= GOAL else 'missed'})" if restarted
                   else "")
        lines.append(f"| {name} | {m:.1f} | {m / cold:.3f} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
