"""The SAM2 model: built once, run on the inference thread.

:class:`Sam2Engine` wraps one ``SAM2ImagePredictor`` built with the sam2 package's own
``build_sam2(config, checkpoint, device)``. Its methods are blocking and not
thread-safe; :mod:`sam2_service.daemon.inference.worker` calls them from its single inference
thread. torch and sam2 are imported lazily, inside the functions that use them (which layers
may import them is tests/unit/test_layers.py's rule).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from ...wire.errors import InternalError
from ..config import ServiceConfig, StartupError
from ..ops.logs import event
from . import fastpath, sam2_compat
from .compiling import Compiled, compile_info, compile_sam2, resolve_compile
from .hardware import _import_torch, expand_devices, resolve_device, resolve_precision
from .prompts import Prompts

log = logging.getLogger("sam2_service.engine")

#: Seed for ``--dummy-weights``, so that a dummy daemon gives the same masks every run.
DUMMY_SEED = 0


@dataclass(frozen=True, eq=False)
class MaskSet:
    """Every mask of one ``SAM2ImagePredictor.predict`` call.

    Attributes:
        masks: NxHxW bool in host memory, True where the mask logits are > 0 (SAM2's mask
            threshold); N is 3 with ``multimask_output``, the number of boxes for a batched
            box prompt, else 1; in SAM2's order (not sorted).
        scores: N float32, SAM2's IoU predictions (about 0..1).
        logits: Nx256x256 float32, SAM2's low-resolution mask logits (``low_res_masks``,
            clamped to [-32, 32]), what ``mask_input`` takes back (as 1x256x256), left where
            the engine produced them: a numpy array, or a torch tensor on the model's device.
            Read them with :meth:`host_logits` (on the inference thread), which copies only
            the ones asked for.
        predict_ms: time spent in ``predict`` (prompt encoder, mask decoder, upsampling to
            the image size, masks to host memory), ms.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: Any
    predict_ms: float

    def host_logits(self, index: int | None = None) -> np.ndarray:
        """1x256x256 float32 logits in host memory, a copy (nothing else holds it): of mask
        ``index``, or for None the element-wise maximum over all N masks (> 0 exactly on
        the union of the masks). A torch tensor is reduced on its device, then copied."""
        logits = self.logits
        if isinstance(logits, np.ndarray):
            one = logits.max(0) if index is None else logits[index]
            return np.array(one[None], dtype=np.float32)
        one = logits.amax(0) if index is None else logits[index]
        return one[None].float().cpu().numpy().copy()


@dataclass(frozen=True)
class EngineInfo:
    """What an engine reports of itself (the ``info`` reply's model fields and each of its
    ``devices``; :func:`sam2_service.daemon.serving.dispatch.info_response` builds the wire).

    Attributes:
        model: the model's name (``tiny``, ``small``, ``base_plus``, ``large``).
        weights: ``"checkpoint"``, ``"dummy"`` (random weights) or a fake's own word.
        device: the torch device string (``cpu``, ``cuda:0``...).
        precision: ``float32`` or ``bfloat16``.
        model_config: sam2's Hydra config name of the model, or None.
        checkpoint: the checkpoint file's path, or None (dummy weights).
        fastpath: True when :mod:`.fastpath`'s speed-ups are installed.
        load_time_ms: time taken to build the model, ms (unrounded).
        compile: ``--compile``'s summary as :func:`.compiling.compile_info` gives it, or
            None.
        versions: package -> version (:func:`package_versions`).
    """

    model: str
    weights: str
    device: str
    precision: str
    model_config: str | None = None
    checkpoint: str | None = None
    fastpath: bool = False
    load_time_ms: float = 0.0
    compile: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Embedding:
    """Everything ``SAM2ImagePredictor.predict`` needs about one image, as ``set_image``
    leaves it: ``features`` is ``{"image_embed": 1x256x64x64, "high_res_feats":
    [1x32x256x256, 1x64x128x128]}`` tensors on the model's device (SAM2.1 at its 1024x1024
    input), ``orig_hw`` the image's (height, width) in pixels.

    Attributes:
        features: the predictor's ``_features`` dict (tensors; not copied).
        orig_hw: (H, W) of the original image, pixels.
        nbytes: bytes held by the tensors (16 MiB in float32).
        model_id: :meth:`Sam2Engine.model_id` of the engine that made it.
        encode_ms: time ``set_image`` took, ms.
    """

    features: dict[str, Any]
    orig_hw: tuple[int, int]
    nbytes: int
    model_id: tuple[str, ...]
    encode_ms: float


@runtime_checkable
class Engine(Protocol):
    """What the worker and the server use of a model (:class:`Sam2Engine`; tests use
    ``tests/fake_engine.py``). Its methods are blocking and called from the inference
    thread only (:attr:`model_id`, :meth:`info` and the attributes from any thread).

    Attributes:
        model_id: the model's identity, part of every embedding-cache key.
        weights: ``"checkpoint"`` or ``"dummy"`` (random weights; a fake says ``"fake"``).
        device: the torch device string the model runs on (``cpu``, ``cuda:0``...).
        precision: ``float32`` or ``bfloat16`` (the info reply's ``dtype``).
        load_time_ms: time taken to build the model, ms.
    """

    model_id: tuple[str, ...]
    weights: str
    device: str
    precision: str
    load_time_ms: float

    def embed(self, image: np.ndarray) -> Embedding:
        """The embedding of an HxWx3 uint8 RGB image."""

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """True if ``exc`` is the device's out-of-memory error."""

    def predict_all(self, embedding: Embedding, prompts: Prompts) -> MaskSet:
        """Every mask SAM2 predicts for ``prompts`` (``mask_input`` and a Bx4 ``box``
        included) on an embedding made by this engine, with scores and low-resolution
        logits."""

    def free_memory(self) -> None:
        """Release what the device caches, after an out-of-memory error."""

    def warmup(self) -> float:
        """Run one-time initialisation before the first request; returns ms taken."""

    def info(self) -> EngineInfo:
        """What the engine reports of itself (model, weights, device, dtype...)."""


def package_versions() -> dict[str, str]:
    """Versions of this service, sam2, torch and Python, read without importing torch."""
    import platform

    from ... import __version__

    out = {"service": __version__, "python": platform.python_version()}
    for dist in ("sam2", "torch"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _build_model(config: ServiceConfig, device: str) -> tuple[Any, str]:
    """Build the SAM2 model; returns (model, weights) with weights 'checkpoint' or 'dummy'."""
    torch = _import_torch()
    try:
        from sam2.build_sam import build_sam2
    except ImportError as exc:
        raise StartupError(
            f"sam2 is not installed ({exc}): run `make install` "
            "(SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0)") from None
    if config.dummy_weights:
        torch.manual_seed(DUMMY_SEED)
        return build_sam2(config.model_config, None, device=device), "dummy"
    ckpt = config.checkpoint_path
    if not ckpt.is_file():
        raise StartupError(f"Checkpoint not found: {ckpt}: run ./download_checkpoint.sh "
                           f"{config.model} (or start with --dummy-weights for a smoke test)")
    try:
        return build_sam2(config.model_config, str(ckpt), device=device), "checkpoint"
    except Exception as exc:  # torch.load / load_state_dict raise many types
        raise StartupError(f"Checkpoint {ckpt} could not be loaded as SAM2.1 {config.model}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                           ) from exc


class Sam2Engine:
    """A loaded SAM2.1 image predictor and what :meth:`info` reports about it.

    Build with :meth:`load`; call :meth:`embed` and :meth:`predict_all` from one thread at a time.
    """

    def __init__(self, predictor: Any, *, config: ServiceConfig, device: str, precision: str,
                 weights: str, load_time_ms: float) -> None:
        self.predictor = predictor
        self.config = config
        self.device = device
        self.precision = precision
        self.weights = weights
        self.load_time_ms = load_time_ms
        self.versions = package_versions()
        #: True once :meth:`_install_fastpath` ran (``--no-fastpath`` leaves SAM2 as it is).
        self.fastpath = False
        #: ``--compile`` resolved for this device, and what :meth:`warmup` compiled.
        self.compile_mode = resolve_compile(config.compile, device, config.warmup)
        self.compiled: Compiled | None = None
        #: The model's identity, part of every embedding-cache key: (model name, checkpoint
        #: identity, dtype, device). The checkpoint identity is its absolute path, size and
        #: modification time (ns) when loaded, or ``dummy-seed-0`` for ``--dummy-weights``.
        self.model_id: tuple[str, ...] = self._identity()

    @classmethod
    def load(cls, config: ServiceConfig, device: str | None = None) -> "Sam2Engine":
        """Build the model named by ``config`` on ``device`` (one of ``config.devices``,
        ``cuda:all`` expanded; default the first).

        Raises:
            StartupError: torch or sam2 missing, device unavailable, checkpoint missing or
                not a SAM2.1 checkpoint of ``config.model``; the message holds the fix.
        """
        start = time.perf_counter()
        torch = _import_torch()
        device = resolve_device(device or expand_devices(config.devices)[0])
        precision = resolve_precision(config.precision, device)
        if device.startswith("cuda") and torch.cuda.get_device_properties(device).major >= 8:
            # TF32 on Ampere and newer, as in sam2's notebooks/image_predictor_example.ipynb.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        with warnings.catch_warnings():
            # sam2 1.1.0's SAM2Transforms calls torch.jit.script, deprecated in newer torch
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*")
            model, weights = _build_model(config, device)
            from sam2.sam2_image_predictor import SAM2ImagePredictor

            predictor = SAM2ImagePredictor(model)
        engine = cls(predictor, config=config, device=device, precision=precision,
                     weights=weights, load_time_ms=0.0)
        if config.fastpath:
            engine._install_fastpath()
        engine.load_time_ms = (time.perf_counter() - start) * 1000
        return engine

    def _install_fastpath(self) -> None:
        """:mod:`.fastpath`'s changes: the dense positional encoding computed once; on the
        CPU the mask decoder's upscaling convolutions channels-last; on a GPU ``set_image``'s
        resize and normalisation moved to the device. ``predict_all`` takes the bool mask
        path whenever :attr:`fastpath` is set."""
        with self._inference():
            fastpath.cache_dense_pe(self.predictor.model)
        if self.device == "cpu":
            fastpath.channels_last_upscaling(self.predictor.model)
        else:
            sam2_compat.set_transforms(self.predictor, fastpath.DeviceTransforms(
                sam2_compat.transforms(self.predictor), self.device))
        self.fastpath = True

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        import torch

        with torch.inference_mode():
            if self.precision == "bfloat16":
                with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16):
                    yield
            else:
                yield

    def _identity(self) -> tuple[str, ...]:
        """See :attr:`model_id`."""
        if self.weights == "dummy":
            ckpt = f"dummy-seed-{DUMMY_SEED}"
        else:
            path = self.config.checkpoint_path
            st = path.stat() if path.exists() else None
            ckpt = f"{path}:{st.st_size}:{st.st_mtime_ns}" if st else str(path)
        return (self.config.model, ckpt, self.precision, self.device)

    def embed(self, image: np.ndarray) -> Embedding:
        """Compute the image embedding of ``image`` (SAM2's ``set_image``).

        Args:
            image: HxWx3 uint8 RGB.
        """
        with self._inference():
            t0 = time.perf_counter()
            self.predictor.set_image(image)
            ms = (time.perf_counter() - t0) * 1000
        feats = sam2_compat.image_features(self.predictor)
        tensors = [feats["image_embed"], *feats["high_res_feats"]]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        h, w = sam2_compat.image_size(self.predictor)
        return Embedding(feats, (int(h), int(w)), nbytes, self.model_id, ms)

    def use_embedding(self, embedding: Embedding, predictor: Any = None) -> Any:
        """``predictor`` (default this engine's SAM2ImagePredictor; the automatic mask
        generator has its own over the same model) with ``embedding`` put back as ``set_image``
        left it (see :meth:`predict_all`).

        Raises:
            InternalError: the embedding was made by another model.
        """
        if embedding.model_id != self.model_id:
            raise InternalError(f"embedding of model {embedding.model_id} used with model "
                                f"{self.model_id}")
        pred = self.predictor if predictor is None else predictor
        if sam2_compat.image_features(pred) is not embedding.features:
            pred.reset_predictor()
            sam2_compat.set_image_state(pred, embedding.features, embedding.orig_hw)
        return pred

    def predict_all(self, embedding: Embedding, prompts: Prompts) -> MaskSet:
        """Every mask of SAM2's ``predict`` for ``prompts`` on a computed image embedding:
        one (a box, several points), SAM2's three candidates (``multimask_output``), or one
        per box of a batched box prompt.

        The embedding is put back into the predictor as ``set_image`` left it
        (:meth:`use_embedding`), then SAM2's own ``predict`` runs (or the fast path's
        equivalent, :func:`.fastpath.predict_masks`), so the result equals ``set_image`` +
        ``predict``. ``prompts.box`` may be Bx4 (SAM2's batched box prompt: predict returns
        Bx1xHxW, or 1xHxW for B = 1, both flattened to N = B here); ``prompts.mask_input``
        (1x256x256 logits) goes to SAM2 as ``mask_input``.

        Args:
            embedding: from :meth:`embed` of this engine.
            prompts: validated prompts in pixels of the embedded image.

        Returns:
            The masks, scores and logits in SAM2's order (the best-scoring mask is the one
            SAM2's image predictor example picks); the logits stay where ``predict`` left
            them (:attr:`MaskSet.logits`).

        Raises:
            InternalError: the embedding was made by a different model (never reused
                silently, as micro-sam's embedding cache refuses a model mismatch).
        """
        pred = self.use_embedding(embedding)
        with self._inference():
            t0 = time.perf_counter()
            if self.fastpath:
                masks, scores, logits = fastpath.predict_masks(pred, prompts)
            else:
                masks, scores, logits = pred.predict(
                    point_coords=prompts.point_coords,
                    point_labels=prompts.point_labels,
                    box=prompts.box,
                    mask_input=prompts.mask_input,
                    multimask_output=prompts.multimask_output,
                )
                masks = masks > 0
            ms = (time.perf_counter() - t0) * 1000
        h, w = embedding.orig_hw
        logits = logits.reshape(-1, *logits.shape[-2:])
        if isinstance(logits, np.ndarray):  # SAM2's predict copied them to host memory
            logits = logits.astype(np.float32, copy=False)
        return MaskSet(masks.reshape(-1, h, w), scores.reshape(-1).astype(np.float32), logits, ms)

    def free_memory(self) -> None:
        """Drop the predictor's current image and return cached device memory to the
        driver (``torch.cuda.empty_cache`` / ``torch.mps.empty_cache``); after an
        out-of-memory error."""
        import torch

        self.predictor.reset_predictor()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        elif self.device == "mps":
            torch.mps.empty_cache()

    @staticmethod
    def is_out_of_memory(exc: BaseException) -> bool:
        """True for ``torch.OutOfMemoryError`` (CUDA) and MPS's out-of-memory RuntimeError."""
        import torch

        oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
        return isinstance(exc, oom) or (isinstance(exc, RuntimeError)
                                        and "out of memory" in str(exc).lower())

    def warmup(self) -> float:
        """Run one box prompt on a synthetic 512x512 image so that one-time costs (kernel
        selection, lazy CUDA/oneDNN initialisation, allocator growth) are paid before the
        first request. The image is resized to the model's 1024x1024 input like any other,
        so the encoder runs at its real size. Returns the time taken, ms.

        With ``--compile`` it first compiles (:func:`.compiling.compile_sam2`, logged as
        ``Compiled``); a failure raises StartupError."""
        start = time.perf_counter()
        if self.compile_mode != "off" and self.compiled is None:
            self.compiled = c = compile_sam2(self.predictor.model, self.device,
                                             self.compile_mode, self._inference)
            event(log, "Compiled", mode=c.mode, parts=c.parts, compileMs=round(c.compile_ms, 1),
                  graphs=c.graphs)
        image = np.full((512, 512, 3), 127, dtype=np.uint8)
        box = np.array([128, 128, 384, 384], dtype=np.float32)
        self.predict_all(self.embed(image), Prompts(None, None, box, multimask_output=False))
        self.predictor.reset_predictor()
        return (time.perf_counter() - start) * 1000

    def info(self) -> EngineInfo:
        """What ``{"op": "info"}`` reports of the model: name, config, checkpoint, weights,
        device, dtype, fast path, load time, ``--compile`` and package versions."""
        return EngineInfo(
            model=self.config.model, weights=self.weights, device=self.device,
            precision=self.precision, model_config=self.config.model_config,
            checkpoint=None if self.weights == "dummy" else str(self.config.checkpoint_path),
            fastpath=self.fastpath, load_time_ms=self.load_time_ms,
            compile=compile_info(self.compile_mode, self.compiled),
            versions=dict(self.versions))

