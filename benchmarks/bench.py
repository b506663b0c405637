"""Daemon request times beside in-process SAM2ImagePredictor, in one run (``make bench``).

For each image size (640x480 and 1920x1080 PNG of skimage's astronaut photo) it starts a
daemon on a temporary socket, and in this process a ``SAM2ImagePredictor`` with the same
weights on the same device, then times, interleaved round by round so both see the same
machine state:

* **in-process full**: base64 decode + PNG decode + ``set_image`` + ``predict``;
* **in-process predict**: ``predict`` alone on the image already set, one sample just before
  each warm daemon request (so both alternate on the same cores, one for one);
* **daemon cold**: a segment request with an image the daemon has not seen (each round's
  image differs in one pixel, so its hash differs and its embedding is computed);
* **daemon warm, image resent**: the same request again (its embedding is cached);
* **daemon warm, by imageId**: the request with ``imageId`` instead of the image;
* **daemon warm, by imageId, RLE**: the same with ``"maskEncoding": "rle"``.

Three daemons run side by side (:data:`VARIANTS`): the defaults, one with the CPU speed-ups
changes turned off (``--allocator system --no-fastpath``) and one with ``--compile decoder``,
their requests interleaved with the in-process samples, so each change's before and after
come from the same run.

Daemon times are what a client sees: base64 of the image (when sent), JSON, the socket both
ways, and decoding the reply's mask to a numpy array. Both sides use the same base64
library. Also recorded once per size: the first request after the daemon started (warm-up on).

Prints a Markdown table of medians and ratios, and writes it into ``docs/benchmarks.md``
(the section for this device kind, cpu or cuda, is replaced; the others are kept). Without
``--checkpoint`` a random-weight SAM2.1 checkpoint is saved first (the same compute as real
weights).

    python benchmarks/bench.py --device cpu --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import orjson
import pybase64
import skimage.data
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from integration.conftest import reference_inference, start_daemon  # noqa: E402

from sam2_service.daemon.config import MODELS  # noqa: E402
from sam2_service.wire.codecs import decode_any_mask  # noqa: E402
from sam2_service.wire.frames import FrameDecoder, encode_message  # noqa: E402

SIZES = {"640x480": (640, 480), "1920x1080": (1920, 1080)}
#: The CPU speed-ups' targets (CPU, tiny): cold request against in-process decode + set_image +
#: predict; warm by imageId (raw mask) against in-process predict; the same with RLE.
TARGETS = {"cold / full": "<= 1.05", "by imageId / predict": "<= 1.05",
           "by imageId RLE / predict": "< 1.0"}
#: Daemons measured side by side: today's defaults; with the CPU speed-ups turned off
#: (glibc malloc as it comes, SAM2's predictor untouched; replies are still written in
#: slices, not a setting); and with the prompt encoder and mask decoder compiled (off by
#: default: it adds a minute or more to the start).
DEFAULT = "default"
VARIANTS = {DEFAULT: (),
            "--allocator system --no-fastpath": ("--allocator", "system", "--no-fastpath"),
            "--compile decoder": ("--compile", "decoder")}
OUT = ROOT / "docs" / "benchmarks.md"
#: Server-side stages (the reply's timingsMs) recorded for the by-imageId requests.
SERVER_STAGES = ("decode", "predict", "mask", "queue", "total")


def photo(width: int, height: int, variant: int) -> bytes:
    """skimage's astronaut resized to width x height, pixel (0, 0) set to ``variant``, as PNG."""
    img = np.array(Image.fromarray(skimage.data.astronaut()).resize((width, height),
                                                                      Image.BILINEAR))
    img[0, 0] = variant % 256
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


#: Pause before each timed operation, s: libgomp's worker threads spin for a while after a
#: parallel region (OMP_WAIT_POLICY unset), so the process that ran last would otherwise
#: steal the 2 cores from the next one, an artefact of two torch processes taking turns that
#: a lone daemon never meets.
SETTLE_S = 0.05


def settle() -> None:
    time.sleep(SETTLE_S)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class RawClient:
    """One connection; ``ask`` times a whole exchange, including the reply's mask decode."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.decoder = FrameDecoder(1 << 30)

    def ask(self, request: dict) -> tuple[float, dict]:
        settle()
        t0 = time.perf_counter()
        if "png" in request:
            request = {k: v for k, v in request.items() if k != "png"}
            request["imageBase64"] = pybase64.b64encode_as_string(request.pop("_png"))
        self.sock.sendall(encode_message(request))
        while (payload := self.decoder.next_frame()) is None:
            self.decoder.feed(self.sock.recv(1 << 20))
        reply = orjson.loads(payload)
        assert "error" not in reply, reply
        if reply.get("maskWidth"):
            decode_any_mask(reply, reply["maskWidth"], reply["maskHeight"])
        return (time.perf_counter() - t0) * 1000, reply


def seg_request(png: bytes | None, width: int, height: int, image_id: str | None = None,
                encoding: str | None = None) -> dict:
    box = [width * 0.2, height * 0.2, width * 0.7, height * 0.8]
    req = {"width": width, "height": height, "bbox": dict(zip(("x1", "y1", "x2", "y2"), box))}
    if encoding:
        req["maskEncoding"] = encoding
    if image_id:
        req["imageId"] = image_id
    else:
        req.update(png=True, _png=png)
    return req


def in_process_full(predictor, png: bytes, box: np.ndarray, device: str, dtype: str) -> float:
    """base64 decode + PNG decode + ``set_image`` + ``predict`` in this process, ms."""
    b64 = pybase64.b64encode_as_string(png)  # what arrives; decoding it is timed
    settle()
    with reference_inference(device, dtype):
        t0 = time.perf_counter()
        image = np.array(Image.open(io.BytesIO(pybase64.b64decode(b64, validate=True))
                                    ).convert("RGB"))
        predictor.set_image(image)
        predictor.predict(box=box, multimask_output=False)
        sync(device)
        return (time.perf_counter() - t0) * 1000


def in_process_predict(predictor, box: np.ndarray, device: str, dtype: str) -> float:
    """``predict`` alone on the image already set, ms."""
    settle()
    with reference_inference(device, dtype):
        t0 = time.perf_counter()
        predictor.predict(box=box, multimask_output=False)
        sync(device)
        return (time.perf_counter() - t0) * 1000


COLUMNS = ("cold", "resent", "byid", "rle", *(f"srv_{s}" for s in SERVER_STAGES))


def warm_round(c: RawClient, png: bytes, w: int, h: int, t: dict[str, list[float]],
               predict: Callable[[], float]) -> None:
    """One sample of each warm request, each after an in-process ``predict`` sample."""
    t["predict"].append(predict())
    ms, reply = c.ask(seg_request(png, w, h))
    assert reply["cached"] is True
    t["resent"].append(ms)
    t["predict"].append(predict())
    ms, reply = c.ask(seg_request(None, w, h, reply["imageId"]))
    t["byid"].append(ms)
    for stage in SERVER_STAGES:
        t[f"srv_{stage}"].append(reply["timingsMs"][stage])
    t["predict"].append(predict())
    t["rle"].append(c.ask(seg_request(None, w, h, reply["imageId"], "rle"))[0])


def measure_size(tmp: Path, serve_args: tuple[str, ...], predictor, w: int, h: int,
                 device: str, runs: int, repeats: int) -> dict[str, dict]:
    """Medians (ms) of every column for one image size: ``{variant: {column: ms}}``, the
    in-process columns under the variant ``in-process``."""
    box = np.array(list(seg_request(None, w, h)["bbox"].values()), dtype=np.float32)
    images = [photo(w, h, v) for v in range(runs + 2)]
    daemons = {}
    for i, (v, args) in enumerate(VARIANTS.items()):
        (folder := tmp / f"{w}x{h}-{i}").mkdir()
        daemons[v] = start_daemon(folder, *serve_args, *args)
    inproc: dict[str, list[float]] = {"full": [], "predict": []}
    t = {v: {k: [] for k in COLUMNS} | {"predict": inproc["predict"]} for v in VARIANTS}
    first = {}
    try:
        clients = {v: RawClient(d.socket_path) for v, d in daemons.items()}
        for v, c in clients.items():
            first[v] = c.ask(seg_request(images[-1], w, h))[0]
        dtype = next(iter(clients.values())).ask({"op": "info"})[1]["dtype"]
        in_process_full(predictor, images[-2], box, device, dtype)  # this side's warm-up
        predict = functools.partial(in_process_predict, predictor, box, device, dtype)
        for png in images[:runs]:
            inproc["full"].append(in_process_full(predictor, png, box, device, dtype))
            for v, c in clients.items():
                ms, reply = c.ask(seg_request(png, w, h))
                assert reply["cached"] is False
                t[v]["cold"].append(ms)
            for _ in range(repeats):
                for v, c in clients.items():
                    warm_round(c, png, w, h, t[v], predict)
    finally:
        for d in daemons.values():
            d.stop()
    out = {"in-process": {k: statistics.median(x) for k, x in inproc.items()} | {"dtype": dtype}}
    for v in VARIANTS:
        out[v] = {k: statistics.median(x) for k, x in t[v].items() if k != "predict"}
        out[v]["first"] = first[v]
    return out


def machine(device: str) -> str:
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


def table(rows: dict[str, dict], header: str) -> str:
    lines = [header, "",
             "| image (PNG) | daemon | in-process full | in-process predict | daemon cold "
             "| warm, resent | warm, by imageId | warm, by imageId, RLE | first request "
             "| cold / full | by imageId / predict | by imageId RLE / predict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, by_variant in rows.items():
        ip = by_variant["in-process"]
        for v in VARIANTS:
            r = by_variant[v]
            ratios = [r["cold"] / ip["full"], r["byid"] / ip["predict"],
                      r["rle"] / ip["predict"]]
            marks = [f"{x:.2f}x {'ok' if ok(x, lim) else 'MISSED'} ({lim})"
                     for x, lim in zip(ratios, TARGETS.values())]
            lines.append(f"| {label} | {v} | {ip['full']:.1f} | {ip['predict']:.1f} "
                         f"| {r['cold']:.1f} | {r['resent']:.1f} | {r['byid']:.1f} "
                         f"| {r['rle']:.1f} | {r['first']:.1f} | " + " | ".join(marks) + " |")
    lines += ["", "Where a warm by-imageId request's time goes (medians, ms; the default "
              "daemon): the daemon's own timingsMs, and the rest of the client's round trip "
              "(JSON, framing, socket both ways, the reply's mask decode).", "",
              "| image | round trip | daemon total | decode+checks | predict | mask to base64 "
              "| queue (thread hand-off) | outside the daemon |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, by_variant in rows.items():
        r = by_variant[DEFAULT]
        lines.append(f"| {label} | {r['byid']:.1f} | {r['srv_total']:.1f} | {r['srv_decode']:.1f} "
                     f"| {r['srv_predict']:.1f} | {r['srv_mask']:.1f} | {r['srv_queue']:.2f} "
                     f"| {r['byid'] - r['srv_total']:.1f} |")
    return "\n".join(lines) + "\n"


def ok(ratio: float, limit: str) -> bool:
    """``limit`` is ``<= 1.05`` or ``< 1.0``."""
    op, value = limit.split()
    return ratio <= float(value) if op == "<=" else ratio < float(value)


def write_section(kind: str, text: str, path: Path = OUT) -> None:
    """Replace (or append) the ``kind`` section of ``path``, keeping the others."""
    start, end = f"<!-- bench:{kind} -->", f"<!-- /bench:{kind} -->"
    block = f"{start}\n{text}{end}\n"
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block
    path.write_text(new)


def publish(text: str, kind: str, write: bool) -> None:
    """Print ``text``; with ``write``, also make it the ``kind`` section of docs/benchmarks.md."""
    print("\n" + text)
    if write:
        write_section(kind, text)
        print(f"wrote {OUT.relative_to(ROOT)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tiny", choices=list(MODELS))
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--runs", type=int, default=5, help="rounds (cold and full: one each)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="warm and predict-alone samples per round")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args()

    import torch
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    tmp = Path(tempfile.mkdtemp(prefix="s2s-bench-", dir="/tmp"))
    ckpt = args.checkpoint
    if ckpt is None:
        torch.manual_seed(0)
        ckpt = tmp / "random.pt"
        torch.save({"model": build_sam2(MODELS[args.model][0], None, device="cpu").state_dict()},
                   ckpt)
    serve_args = ("--model", args.model, "--checkpoint", str(ckpt), "--device", args.device)
    predictor = SAM2ImagePredictor(build_sam2(MODELS[args.model][0], str(ckpt),
                                              device=args.device))
    rows = {label: measure_size(tmp, serve_args, predictor, w, h, args.device, args.runs,
                                args.repeats) for label, (w, h) in SIZES.items()}
    from sam2_service.daemon.inference.engine import package_versions

    v = package_versions()
    dtype = next(iter(rows.values()))["in-process"]["dtype"]
    header = (f"SAM2.1 {args.model}, device {args.device} ({machine(args.device)}), dtype {dtype}; "
              f"torch {torch.__version__}, sam2 {v['sam2']}, Python {v['python']}, "
              f"service {v['service']}; {args.runs} rounds x {args.repeats} warm samples; "
              f"medians in ms; {time.strftime('%Y-%m-%d')}")
    publish(table(rows, header), "cuda" if args.device.startswith("cuda") else "cpu",
            not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
