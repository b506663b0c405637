"""ONNX Runtime for SAM2's image encoder on the CPU (``--backend onnxruntime``, issue 14).

What ``SAM2ImagePredictor.set_image`` computes after its transforms (``forward_image``,
``_prepare_backbone_features``, the ``no_mem_embed`` addition, the reshaping into
``image_embed`` and ``high_res_feats``) is wrapped in an ``nn.Module``, exported with
``torch.onnx.export(dynamo=True)`` (opset 18) and run by an ONNX Runtime session; the prompt
encoder and the mask decoder stay torch (SAM2's own ``predict``, unchanged).

The export (about 10 s for tiny) is done once and cached next to the checkpoint, in
``<checkpoint folder>/onnx-cache/``, under a file name keyed by a hash of the checkpoint
(absolute path, size, mtime_ns), the model name, the opset and the versions of torch, sam2,
onnx, onnxruntime and this service: a change to any of them exports again (old files stay;
delete the folder to reclaim them). A checkpoint folder that cannot be written falls back to
``$XDG_CACHE_HOME/sam2-service/onnx`` (``~/.cache/...``). A miss exports to a temporary name
in the cache folder and renames it into place, so a reader never sees half a file.
``--dummy-weights`` exports to a temporary folder, never cached.

torch, onnx, onnxscript and onnxruntime are imported lazily (the ``onnx`` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .. import __version__
from .config import ServiceConfig, StartupError
from .logs import event

log = logging.getLogger("sam2_service.onnx")

OPSET = 18
#: The sub-folder of the checkpoint's folder that holds exported encoders.
CACHE_FOLDER = "onnx-cache"
#: Distributions whose versions key the cache (the exporter, the runtime, the model code).
KEY_VERSIONS = ("torch", "sam2", "onnx", "onnxruntime")
INSTALL_FIX = ("run `make install` (or pip install 'sam2-service[onnx]': onnx, onnxruntime, "
               "onnxscript), or start with --backend torch")
INPUT = "image"
OUTPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1")


def backend_device(config: ServiceConfig, spec: str) -> str:
    """The device to resolve for one ``--device`` entry ``spec``: itself for ``--backend
    torch``; ``cpu`` for ``--backend onnxruntime`` (``auto`` included), checked before the
    model is built.

    Raises:
        StartupError: onnxruntime with a device other than cpu/auto, with bfloat16, or
            without onnxruntime installed.
    """
    if config.backend != "onnxruntime":
        return spec
    if spec not in ("auto", "cpu"):
        raise StartupError(f"--backend onnxruntime runs on the CPU only, not --device "
                           f"{config.device}: use --device cpu (or --backend torch)")
    if config.precision == "bfloat16":
        raise StartupError("--backend onnxruntime runs the encoder in float32: use --precision "
                           "float32 or auto (or --backend torch for bfloat16)")
    if importlib.util.find_spec("onnxruntime") is None:
        raise StartupError(f"--backend onnxruntime: onnxruntime is not installed: {INSTALL_FIX}")
    return "cpu"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cache_name(config: ServiceConfig) -> str:
    """The cached encoder's file name for ``config``'s checkpoint and the installed versions."""
    ckpt = config.checkpoint_path
    st = ckpt.stat()
    key = {"checkpoint": str(ckpt), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
           "model": config.model, "opset": OPSET, "service": __version__,
           **{dist: _version(dist) for dist in KEY_VERSIONS}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return f"sam2.1_hiera_{config.model}_encoder_{digest}.onnx"


def cache_dirs(checkpoint: Path, env: Mapping[str, str] = os.environ) -> list[Path]:
    """Where exported encoders are looked for, and written to, in that order: next to the
    checkpoint, then ``$XDG_CACHE_HOME/sam2-service/onnx`` (``~/.cache`` by default)."""
    home = Path(env.get("HOME") or Path.home())
    xdg = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    return [checkpoint.parent / CACHE_FOLDER, xdg / "sam2-service" / "onnx"]


def find_or_export(name: str, dirs: list[Path], export: Callable[[Path], None]) -> tuple[Path, bool]:
    """``(path, True)`` for the first ``dirs/name`` that exists; else ``export(tmp)`` into the
    first folder that can be created and written, renamed to ``name`` there: ``(path, False)``.

    Raises:
        StartupError: no folder can be written.
        Exception: what ``export`` raises (its temporary file removed).
    """
    for folder in dirs:
        if (folder / name).is_file():
            return folder / name, True
    problems = []
    for folder in dirs:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        except OSError as exc:
            problems.append(f"{folder}: {exc.strerror or exc}")
            continue
        os.close(fd)
        try:
            export(Path(tmp))
            os.replace(tmp, folder / name)  # atomic: readers see the whole file or none
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return folder / name, False
    raise StartupError(f"no folder to cache the ONNX encoder in ({'; '.join(problems)}): make "
                       "one writable, or set XDG_CACHE_HOME to a writable folder")


def encoder_module(model: Any) -> Any:
    """An ``nn.Module``: normalised 1x3x1024x1024 image -> (image_embed 1x256x64x64,
    high_res_feats 1x32x256x256 and 1x64x128x128), what ``SAM2ImagePredictor.set_image``
    computes after its transforms (sam2 1.1.0)."""
    import torch

    class Encoder(torch.nn.Module):
        sizes = [(256, 256), (128, 128), (64, 64)]  # SAM2ImagePredictor._bb_feat_sizes

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> tuple[Any, Any, Any]:
            backbone_out = self.model.forward_image(x)
            _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
            if self.model.directly_add_no_mem_embed:
                vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
            feats = [feat.permute(1, 2, 0).view(1, -1, *size)
                     for feat, size in zip(vision_feats[::-1], self.sizes[::-1])][::-1]
            return feats[-1], feats[0], feats[1]

    return Encoder(model).eval()


def export(encoder: Any, path: Path) -> float:
    """Export ``encoder`` (:func:`encoder_module`) to ``path``, one file (weights inside: an
    encoder is far below protobuf's 2 GB); seconds taken."""
    import torch

    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # sam2's PositionEmbeddingSine memoises its encodings per feature size in a dict; the
        # exporter warns that they are assigned during export and makes them constants of
        # the graph, which is right for the encoder's fixed 1024x1024 input.
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*position_encoding")
        torch.onnx.export(encoder, (torch.zeros(1, 3, 1024, 1024),), str(path), dynamo=True,
                          opset_version=OPSET, input_names=[INPUT], output_names=list(OUTPUTS),
                          external_data=False, verbose=False)
    return time.perf_counter() - t0


def ort_session(path: Path) -> Any:
    """An ONNX Runtime CPU session on ``os.cpu_count()`` threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_set_image(predictor: Any, session: Any, image: np.ndarray) -> None:
    """``predictor.set_image(image)`` with the encoder run by ``session``: SAM2's transforms
    on the CPU, the session, and the features put into the predictor as ``set_image`` leaves
    them, so that its ``predict`` works unchanged."""
    import torch

    predictor.reset_predictor()
    x = predictor._transforms(image)[None].numpy()
    embed, hr0, hr1 = session.run(None, {INPUT: x})
    predictor._orig_hw = [image.shape[:2]]
    predictor._features = {"image_embed": torch.from_numpy(embed),
                           "high_res_feats": [torch.from_numpy(hr0), torch.from_numpy(hr1)]}
    predictor._is_image_set = True


@dataclass(eq=False)
class OnnxEncoder:
    """The image encoder as an ONNX Runtime session.

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        path: the cached ``.onnx`` file, or None (``--dummy-weights``: a temporary export).
        cached: True when loaded from the cache, False when exported at this start.
        export_ms: time the export took (0 for a cache hit), ms.
    """

    session: Any
    path: Path | None
    cached: bool
    export_ms: float

    def set_image(self, predictor: Any, image: np.ndarray) -> None:
        """:func:`ort_set_image` with this session."""
        ort_set_image(predictor, self.session, image)


def _export_checked(model: Any, path: Path) -> None:
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise StartupError(f"--backend onnxruntime: exporting the encoder needs "
                           f"{' and '.join(missing)}, not installed: {INSTALL_FIX}")
    try:
        export(encoder_module(model), path)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise StartupError(f"--backend onnxruntime: exporting the image encoder to ONNX failed "
                           f"({type(exc).__name__}: {first}): start with --backend torch") from exc


def _load_session(path: Path, cached: bool) -> Any:
    try:
        return ort_session(path)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        fix = f"delete {path} to export it again" if cached else "start with --backend torch"
        raise StartupError(f"--backend onnxruntime: ONNX Runtime could not load the encoder "
                           f"{path} ({type(exc).__name__}: {first}): {fix}") from exc


def load_encoder(config: ServiceConfig, model: Any, dummy: bool) -> OnnxEncoder:
    """The encoder of ``model`` (built from ``config``, on the CPU, float32) as an ONNX Runtime
    session: from the cache, or exported now (and cached unless ``dummy``).

    Raises:
        StartupError: onnx/onnxscript missing for an export, the export or the session
            failed, or no cache folder can be written; the message holds the fix.
    """
    t0 = time.perf_counter()
    if dummy:
        with tempfile.TemporaryDirectory(prefix="sam2-service-onnx-") as tmp:
            path = Path(tmp) / "encoder.onnx"
            _export_checked(model, path)
            export_ms = (time.perf_counter() - t0) * 1000
            session = _load_session(path, cached=False)
        event(log, "ONNX encoder exported", exportMs=round(export_ms, 1), path=None)
        return OnnxEncoder(session, None, False, export_ms)
    path, hit = find_or_export(cache_name(config), cache_dirs(config.checkpoint_path),
                               lambda tmp: _export_checked(model, tmp))
    export_ms = 0.0 if hit else (time.perf_counter() - t0) * 1000
    t1 = time.perf_counter()
    session = _load_session(path, cached=hit)
    load_ms = round((time.perf_counter() - t1) * 1000, 1)
    if hit:
        event(log, "ONNX encoder loaded from cache", path=str(path), sessionLoadMs=load_ms)
    else:
        event(log, "ONNX encoder exported", exportMs=round(export_ms, 1), path=str(path),
              sessionLoadMs=load_ms)
    return OnnxEncoder(session, path, hit, export_ms)
