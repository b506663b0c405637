"""ONNX Runtime for the image encoder on CPU: is it worth a ``--backend onnxruntime``?

A standalone measurement, not part of the daemon. The issue's rule: keep the backend only if the
cold request (an image the daemon has not seen) is at least 1.1x faster at equal masks;
otherwise record the numbers here and leave it out.

1. Builds SAM2.1-tiny (random weights from ``torch.manual_seed(0)``, the same compute as real
   ones; ``--checkpoint`` loads real ones) and wraps what ``SAM2ImagePredictor.set_image``
   computes after its transforms (``forward_image``, ``_prepare_backbone_features``, the
   ``no_mem_embed`` addition, the reshaping into ``image_embed`` and ``high_res_feats``) in an
   ``nn.Module`` from the 1x3x1024x1024 normalised image to (image_embed 1x256x64x64,
   high_res_feats 1x32x256x256 and 1x64x128x128), and exports it with ``torch.onnx.export``
   (the dynamo exporter, opset 18) to a temporary directory.
2. Parity on skimage's astronaut at 1920x1080: the ONNX Runtime outputs against eager torch
   (largest absolute difference), then ``SAM2ImagePredictor.predict`` with a box on the eager
   features and on the ONNX Runtime features put into the predictor (mask IoU, differing
   pixels, score difference), with one mask and with SAM2's three.
3. Times, interleaved round by round (the order alternates between rounds; each timed step
   starts after a 50 ms pause so the other side's spinning worker threads are idle), torch and
   ONNX Runtime each on ``os.cpu_count()`` threads:

   * **encoder**: the wrapped module eager against the ONNX Runtime session, on the same
     input tensor;
   * **cold request**: base64 decode + PNG decode + SAM2's transforms + encoder + ``predict``
     (box, one mask) in this process; eager is ``set_image`` + ``predict``, ONNX Runtime is
     the transforms, the session and the features put into the predictor + ``predict``.

Prints a Markdown table of medians and ratios with the export time, versions and CPU; with
``--write`` replaces the ``onnx-cpu`` section of docs/benchmarks.md (appended if absent).
onnx, onnxruntime and onnxscript (the exporter's) are not dependencies of sam2-service::

    .venv/bin/pip install onnx onnxruntime onnxscript
    .venv/bin/python benchmarks/bench_onnx.py --runs 5 [--write]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pybase64
import skimage.data
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine, photo, publish, settle  # noqa: E402

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
W, H = 1920, 1080
BOX = np.array([W * 0.2, H * 0.2, W * 0.7, H * 0.8], dtype=np.float32)  # as bench.py's
#: The issue's threshold: eager cold request / ONNX Runtime cold request.
KEEP_RATIO = 1.1
#: "Equal masks": at least this IoU between the eager and ONNX Runtime masks.
EQUAL_IOU = 0.999
OPSET = 18
SECTION = "onnx-cpu"
NEEDED = {"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxscript": "onnxscript (the exporter's)"}


def require_onnx() -> None:
    """Exit with a clear message when the optional packages are missing."""
    missing = [label for mod, label in NEEDED.items() if importlib.util.find_spec(mod) is None]
    if missing:
        sys.exit(f"bench_onnx.py needs {', '.join(missing)}, which sam2-service does not depend "
                 f"on; install them into this environment first:\n"
                 f"    {sys.executable} -m pip install onnx onnxruntime onnxscript")


def encoder_module(model):
    """An ``nn.Module``: normalised 1x3x1024x1024 image -> (image_embed, high_res_feats[0],
    high_res_feats[1]), what ``SAM2ImagePredictor.set_image`` computes after its transforms."""
    import torch

    class Encoder(torch.nn.Module):
        # SAM2ImagePredictor._bb_feat_sizes
        sizes = [(256, 256), (128, 128), (64, 64)]

        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            backbone_out = self.model.forward_image(x)
            _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
            if self.model.directly_add_no_mem_embed:
                vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
            feats = [feat.permute(1, 2, 0).view(1, -1, *size)
                     for feat, size in zip(vision_feats[::-1], self.sizes[::-1])][::-1]
            return feats[-1], feats[0], feats[1]

    return Encoder(model).eval()


def export(encoder, path: Path) -> float:
    """Export ``encoder`` to ``path`` (ONNX, weights in ``path``.data); seconds taken."""
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(encoder, (torch.zeros(1, 3, 1024, 1024),), str(path), dynamo=True,
                          opset_version=OPSET, input_names=["image"],
                          output_names=["image_embed", "high_res_feats_0", "high_res_feats_1"],
                          verbose=False)
    return time.perf_counter() - t0


def ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_set_image(predictor, session, image: np.ndarray) -> None:
    """``predictor.set_image(image)`` with the encoder run by ONNX Runtime."""
    import torch

    predictor.reset_predictor()
    predictor._orig_hw = [image.shape[:2]]
    x = predictor._transforms(image)[None].numpy()
    embed, hr0, hr1 = session.run(None, {"image": x})
    predictor._features = {"image_embed": torch.from_numpy(embed),
                           "high_res_feats": [torch.from_numpy(hr0), torch.from_numpy(hr1)]}
    predictor._is_image_set = True


def decode_png(b64: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(pybase64.b64decode(b64, validate=True))).convert("RGB"))


def parity(predictor, encoder, session) -> dict[str, float]:
    """ONNX Runtime against eager on the 1080p astronaut: features and masks."""
    import torch

    image = np.array(Image.fromarray(skimage.data.astronaut()).resize((W, H), Image.BILINEAR))
    out: dict[str, float] = {}
    with torch.inference_mode():
        x = predictor._transforms(image)[None]
        eager = [t.numpy() for t in encoder(x)]
        onnx = session.run(None, {"image": x.numpy()})
        for name, e, o in zip(("image_embed", "high_res_feats[0]", "high_res_feats[1]"), eager, onnx):
            assert e.shape == o.shape, (name, e.shape, o.shape)
            out[f"diff {name}"] = float(np.abs(e - o).max())
            out[f"scale {name}"] = float(np.abs(e).max())
        predictor.set_image(image)  # the wrapper must compute exactly what set_image does
        mine = [predictor._features["image_embed"], *predictor._features["high_res_feats"]]
        assert all(torch.equal(torch.from_numpy(e), m) for e, m in zip(eager, mine)), \
            "the exported module's outputs differ from SAM2ImagePredictor.set_image's features"
        for label, multi in (("1 mask", False), ("3 masks", True)):
            predictor.set_image(image)
            m_e, s_e, _ = predictor.predict(box=BOX, multimask_output=multi)
            ort_set_image(predictor, session, image)
            m_o, s_o, _ = predictor.predict(box=BOX, multimask_output=multi)
            a, b = m_e.astype(bool), m_o.astype(bool)
            union = np.logical_or(a, b).sum()
            out[f"iou {label}"] = float(np.logical_and(a, b).sum() / union) if union else 1.0
            out[f"pixels {label}"] = int((a != b).sum())
            out[f"area {label}"] = int(a.sum())
            out[f"score {label}"] = float(np.abs(s_e - s_o).max())
    predictor.reset_predictor()
    return out


def timed(fn) -> float:
    settle()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def measure(predictor, encoder, session, runs: int) -> dict[str, float]:
    """Medians (ms) of the four columns, interleaved round by round."""
    import torch

    pngs = [photo(W, H, v) for v in range(runs + 1)]  # a different image each round
    x = predictor._transforms(np.array(Image.open(io.BytesIO(pngs[0])).convert("RGB")))[None]
    x_np = x.numpy()

    def cold_eager(b64: str) -> None:
        predictor.set_image(decode_png(b64))
        predictor.predict(box=BOX, multimask_output=False)

    def cold_ort(b64: str) -> None:
        ort_set_image(predictor, session, decode_png(b64))
        predictor.predict(box=BOX, multimask_output=False)

    steps = {"enc eager": lambda b64: encoder(x), "enc ort": lambda b64: session.run(None, {"image": x_np}),
             "cold eager": cold_eager, "cold ort": cold_ort}
    t: dict[str, list[float]] = {k: [] for k in steps}
    with torch.inference_mode():
        warm = pybase64.b64encode_as_string(pngs[-1])
        for fn in steps.values():  # warm-up: first-call allocations, ORT's arena
            fn(warm)
        for i, png in enumerate(pngs[:runs]):
            b64 = pybase64.b64encode_as_string(png)  # what arrives; decoding it is timed
            for pair in (("enc eager", "enc ort"), ("cold eager", "cold ort")):
                for name in (pair if i % 2 == 0 else pair[::-1]):
                    t[name].append(timed(lambda fn=steps[name], b64=b64: fn(b64)))
    predictor.reset_predictor()
    return {k: statistics.median(v) for k, v in t.items()}


def report(r: dict[str, float], p: dict[str, float], info: dict[str, str]) -> str:
    enc, cold = r["enc eager"] / r["enc ort"], r["cold eager"] / r["cold ort"]
    equal = min(p["iou 1 mask"], p["iou 3 masks"]) >= EQUAL_IOU
    keep = cold >= KEEP_RATIO and equal
    verdict = (f"Verdict: {'kept' if keep else 'left out'}: the cold request is {cold:.2f}x faster "
               f"with ONNX Runtime ({'≥' if cold >= KEEP_RATIO else '<'} the issue's {KEEP_RATIO}x) "
               f"and the masks are {'equal' if equal else 'not equal'} (IoU "
               f"{min(p['iou 1 mask'], p['iou 3 masks']):.4f}, {'≥' if equal else '<'} {EQUAL_IOU}).")
    lines = [
        f"SAM2.1 tiny image encoder, eager torch against ONNX Runtime (CPUExecutionProvider), "
        f"{info['machine']}, {info['threads']} threads each; torch {info['torch']}, "
        f"onnxruntime {info['onnxruntime']}, onnx {info['onnx']}, onnxscript {info['onnxscript']}, "
        f"sam2 {info['sam2']}, Python {info['python']}; exporter: torch.onnx.export(dynamo=True), "
        f"opset {OPSET}; export {info['export_s']:.1f} s, session load {info['load_s']:.1f} s, "
        f"model {info['size_mb']:.0f} MB; {info['runs']} rounds; medians in ms; {info['date']}",
        "",
        "| step | eager torch | ONNX Runtime | eager / ONNX Runtime |",
        "| --- | --- | --- | --- |",
        f"| encoder alone (1x3x1024x1024 in, set_image's features out) | {r['enc eager']:.1f} "
        f"| {r['enc ort']:.1f} | {enc:.2f}x |",
        f"| cold request, 1920x1080 PNG (base64 + PNG decode + transforms + encoder + predict) "
        f"| {r['cold eager']:.1f} | {r['cold ort']:.1f} | {cold:.2f}x |",
        "",
        "Parity on the 1920x1080 astronaut, box prompt: largest absolute difference of the "
        "encoder's outputs (largest eager value in brackets), and the masks of `predict` on "
        "the eager features against those on the ONNX Runtime features.",
        "",
        "| output | image_embed | high_res_feats[0] | high_res_feats[1] |",
        "| --- | --- | --- | --- |",
        "| max abs difference | " + " | ".join(
            f"{p[f'diff {n}']:.1e} ({p[f'scale {n}']:.1f})"
            for n in ("image_embed", "high_res_feats[0]", "high_res_feats[1]")) + " |",
        "",
        "| predict | mask IoU | differing pixels | eager mask pixels | max score difference |",
        "| --- | --- | --- | --- | --- |",
        *(f"| box, {m} | {p[f'iou {m}']:.6f} | {p[f'pixels {m}']} | {p[f'area {m}']} "
          f"| {p[f'score {m}']:.1e} |" for m in ("1 mask", "3 masks")),
        "",
        verdict,
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--checkpoint", type=Path, help="SAM2.1-tiny weights (default: random)")
    ap.add_argument("--write", action="store_true",
                    help=f"replace the {SECTION} section of docs/benchmarks.md")
    args = ap.parse_args()
    require_onnx()

    import onnx
    import onnxruntime
    import onnxscript
    import torch
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam2_service.daemon.inference.engine import package_versions

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_sam2(CONFIG, str(args.checkpoint) if args.checkpoint else None, device="cpu")
    predictor = SAM2ImagePredictor(model)
    encoder = encoder_module(model)
    with tempfile.TemporaryDirectory(prefix="s2s-onnx-") as tmp:
        path = Path(tmp) / "sam2.1_hiera_t_encoder.onnx"
        print(f"exporting to {path} ...", flush=True)
        export_s = export(encoder, path)
        size_mb = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 1e6
        t0 = time.perf_counter()
        session = ort_session(path)
        load_s = time.perf_counter() - t0
        print("checking parity ...", flush=True)
        p = parity(predictor, encoder, session)
        print(f"timing {args.runs} rounds ...", flush=True)
        r = measure(predictor, encoder, session, args.runs)
    v = package_versions()
    info = {"machine": machine("cpu"), "threads": str(threads), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "sam2": v["sam2"], "python": v["python"],
            "export_s": export_s, "load_s": load_s, "size_mb": size_mb, "runs": args.runs,
            "date": time.strftime("%Y-%m-%d")}
    publish(report(r, p, info), SECTION, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
