"""``--compile``: torch.compile of SAM2's parts, paid for during the start-up warm-up.

``decoder`` compiles the prompt encoder and the mask decoder, ``all`` the image encoder as
well; ``auto`` is ``decoder`` on CUDA and ``off`` elsewhere (the default is ``off`` everywhere
until a GPU measurement shows that ``auto`` pays there). Each part's ``forward`` is replaced
by a compiled one, on the model instance, as sam2 itself does for ``compile_image_encoder``
(``sam2/modeling/sam2_base.py``); compilation happens at the first calls, which
:func:`compile_sam2` makes with the prompt shapes requests use, so that no request compiles.

Shapes. The image side is fixed: SAM2 resizes every image to 1024x1024, so the image
encoder and the decoder's image inputs always have the same shapes (``dynamic=False`` for the
encoder, as sam2 compiles it). What varies is the number of prompt tokens (points, plus 2 per
box, plus SAM2's padding point) and, for batched boxes and the automatic mask generator's
point batches, the batch. The prompt encoder and the decoder are compiled with torch's
automatic dynamic shapes (``dynamic=None``): the first call compiles for its exact shapes,
and a later call whose sizes differ recompiles once with those sizes symbolic, after which
any count runs the same graph; sizes 0 and 1 are specialised even then (torch's 0/1
specialisation), so one point and one box or batch of one have graphs of their own.
Python-level choices (``multimask_output``, the decoder's ``repeat_image`` for batches, a
``mask_input`` or none) are guarded and get a graph each, and so are the strides of each
input tensor, which for a size-1 dimension depend on how the client's numpy array was made
(``a[None]`` has stride 0 there): the prompt encoder's inputs (a few hundred bytes, or the
256 KiB ``mask_input``) and the decoder's sparse prompt embeddings are therefore copied to
row-major strides first when they are not. :data:`WARMUP_PROMPTS` walks through every
combination that segment and auto requests make, with two sizes of each varying dimension,
so that requests find a graph ready (7 per part, and 2 for the image encoder, counted with
``torch._dynamo.utils.counters``; tests/integration/test_compile.py checks that requests
add none). torch gives up compiling a function after ``recompile_limit`` graphs (8) and
runs it eagerly from then on; :func:`compile_sam2` raises that limit to
:data:`RECOMPILE_LIMIT` for combinations the warm-up does not make, if any.

Modes. On CPU (and MPS) torch.compile's default mode. On CUDA the decoder, whose kernels
are small and launch-bound, runs as CUDA graphs (``reduce-overhead``); their outputs live in
memory the next replay overwrites, so the compiled decoder's outputs (256x256 logits per
mask) are cloned before SAM2 uses them. The image encoder on CUDA uses ``max-autotune-no-cudagraphs``
(sam2's own choice, ``max-autotune``, minus the CUDA graphs: its outputs are kept in the
embedding cache). The CUDA paths are written from torch's documentation and not yet
measured (no GPU was at hand). Measured on a 2-core CPU: README, "torch.compile"
(``benchmarks/bench_compile.py``).

torch is imported lazily, as in :mod:`.engine` and its other helpers.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, get_args

import numpy as np

from ..config import Compile, StartupError
from . import sam2_compat

#: ``--compile`` value -> the SAM2 model attributes it compiles.
PARTS: dict[str, tuple[str, ...]] = {
    "off": (),
    "decoder": ("sam_prompt_encoder", "sam_mask_decoder"),
    "all": ("sam_prompt_encoder", "sam_mask_decoder", "image_encoder"),
}
#: Inputs copied to row-major strides before each compiled call (None: every tensor input).
CANONICAL_INPUTS: dict[str, tuple[str, ...] | None] = {
    "sam_prompt_encoder": None,
    "sam_mask_decoder": ("sparse_prompt_embeddings",),
    "image_encoder": (),
}
#: Graphs torch may compile per function before it runs it eagerly (torch's default is 8;
#: the warm-up makes 7 per part).
RECOMPILE_LIMIT = 16
#: Side of the synthetic warm-up image, pixels (resized to 1024x1024 like any image).
WARMUP_SIDE = 512

_box = np.array([128, 128, 384, 384], dtype=np.float32)
_points = np.array([[200, 200], [300, 300], [250, 100]], dtype=np.float32)
_labels = np.array([1, 0, 1], dtype=np.int32)
_logits = np.zeros((1, 256, 256), dtype=np.float32)

#: ``SAM2ImagePredictor.predict`` keywords of the warm-up, in this order: the first call of
#: each part compiles for exact shapes, the next ones with a different token count or batch
#: make those sizes symbolic, and each combination that requests make of multimask, batch
#: (1 or more), points (1 or more, boxes counting 2) and mask input gets its graph. Batched
#: points (Bx1x2) are the automatic mask generator's.
WARMUP_PROMPTS: tuple[dict[str, Any], ...] = (
    {"box": _box, "multimask_output": False},  # bbox
    {"point_coords": _points[:1], "point_labels": _labels[:1], "multimask_output": True},
    {"point_coords": _points, "point_labels": _labels, "multimask_output": False},
    {"box": _box, "mask_input": _logits, "multimask_output": False},  # refinement
    {"point_coords": _points[:1], "point_labels": _labels[:1], "mask_input": _logits,
     "multimask_output": True},
    {"box": np.stack([_box, _box + 8]), "multimask_output": False},  # boxes
    {"point_coords": _points[:, None, :], "point_labels": _labels[:, None],
     "multimask_output": True},  # auto's point batches
    {"point_coords": _points[:, None, :], "point_labels": _labels[:, None],
     "multimask_output": False},
)


def resolve_compile(setting: str, device: str, warmup: bool = True) -> str:
    """What ``--compile`` means on ``device``: ``off``, ``decoder`` or ``all``.

    ``auto`` is ``decoder`` on CUDA (with the warm-up on: compiling at request time never
    pays) and ``off`` elsewhere.
    """
    if setting not in get_args(Compile):
        raise ValueError(f"compile must be one of {get_args(Compile)}, not {setting!r}")
    if setting == "auto":
        return "decoder" if device.startswith("cuda") and warmup else "off"
    return setting


def torch_mode(part: str, device: str) -> str:
    """The torch.compile ``mode`` for one part on ``device`` (see the module docstring)."""
    if not device.startswith("cuda"):
        return "default"
    return {"sam_mask_decoder": "reduce-overhead",
            "image_encoder": "max-autotune-no-cudagraphs"}.get(part, "default")


@dataclass(frozen=True)
class Compiled:
    """What :func:`compile_sam2` did.

    Attributes:
        mode: the resolved ``--compile``: ``decoder`` or ``all``.
        parts: compiled model attribute -> torch.compile mode.
        compile_ms: wall time of the compiling warm-up (compilation and the warm-up's
            inferences, these a small part of it), ms.
        graphs: graphs torch compiled during it (all parts).
    """

    mode: str
    parts: dict[str, str] = field(default_factory=dict)
    compile_ms: float = 0.0
    graphs: int = 0


def compile_info(mode: str, compiled: Compiled | None) -> dict[str, Any]:
    """The ``info`` reply's ``compile``: ``{"mode", "parts", "compileMs", "graphs"}``;
    ``parts`` empty and ``compileMs`` null until something was compiled. ``graphs`` counts
    every graph torch compiled in this process so far, so a number above the warm-up's
    means that some request recompiled."""
    if compiled is None:
        return {"mode": mode, "parts": {}, "compileMs": None, "graphs": 0}
    return {"mode": compiled.mode, "parts": dict(compiled.parts),
            "compileMs": round(compiled.compile_ms, 1), "graphs": graph_count()}


def graph_count() -> int:
    """Graphs torch.compile (dynamo) has compiled in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _row_major(t: Any) -> Any:
    """Tensor ``t`` with row-major strides: itself if it has them, else a copy."""
    expected, step = [], 1
    for n in reversed(t.shape):
        expected.append(step)
        step *= max(n, 1)
    if t.stride() == tuple(reversed(expected)):
        return t
    import torch

    return t.clone(memory_format=torch.contiguous_format)


def _wrap(fn: Callable[..., Any], canonical: tuple[str, ...] | None,
          cuda_graphs: bool) -> Callable[..., Any]:
    """``fn`` (compiled) behind the input and output handling of the module docstring:
    the ``canonical`` keyword inputs (None: all tensor inputs) made row-major; with
    ``cuda_graphs``, a new CUDA-graph step marked before each call and the output tensors
    cloned, since the next replay overwrites them."""
    import torch
    from torch.utils._pytree import tree_map_only

    def forward(*args: Any, **kwargs: Any) -> Any:
        if canonical is None:
            args, kwargs = tree_map_only(torch.Tensor, _row_major, (args, kwargs))
        else:
            for name in canonical:
                if isinstance(kwargs.get(name), torch.Tensor):
                    kwargs[name] = _row_major(kwargs[name])
        if not cuda_graphs:
            return fn(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        return tree_map_only(torch.Tensor, torch.clone, fn(*args, **kwargs))

    return forward


def compile_parts(model: Any, device: str, mode: str) -> dict[str, str]:
    """Replace the ``forward`` of each part of ``mode`` on ``model`` (a SAM2Base) by its
    torch.compile'd version; nothing compiles until the first call. Returns part -> torch
    mode. A model already compiled is left alone."""
    import torch

    done = sam2_compat.compiled_parts(model)
    if done is not None:
        return dict(done)
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    parts = {}
    for part in PARTS[mode]:
        module = getattr(model, part)
        tmode = torch_mode(part, device)
        fn = torch.compile(module.forward, mode=tmode, fullgraph=True,
                           dynamic=False if part == "image_encoder" else None)
        module.forward = _wrap(fn, CANONICAL_INPUTS[part], tmode == "reduce-overhead")
        parts[part] = tmode
    sam2_compat.mark_compiled(model, parts)
    return dict(parts)


def warm_up(model: Any, inference: Callable[[], ContextManager[Any]]) -> None:
    """Set a synthetic image and predict :data:`WARMUP_PROMPTS` with a SAM2ImagePredictor
    of its own on ``model``, inside ``inference()`` (the engine's inference mode and
    autocast, which compiled graphs are specialised for).

    A compiled image encoder runs twice: its position encoding fills a dict cache on the
    first call, and the second, finding the entry, compiles a second graph."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*")
        predictor = SAM2ImagePredictor(model)
    image = np.full((WARMUP_SIDE, WARMUP_SIDE, 3), 127, dtype=np.uint8)
    encoder_runs = 2 if "image_encoder" in (sam2_compat.compiled_parts(model) or {}) else 1
    with inference():
        for _ in range(encoder_runs):
            predictor.set_image(image)
        for prompts in WARMUP_PROMPTS:
            predictor.predict(**prompts)
    predictor.reset_predictor()


def compile_sam2(model: Any, device: str, mode: str,
                 inference: Callable[[], ContextManager[Any]] = contextlib.nullcontext
                 ) -> Compiled:
    """Compile ``mode``'s parts of ``model`` (a SAM2Base on ``device``) and run the
    compiling warm-up (:func:`warm_up`).

    Raises:
        StartupError: torch.compile failed (no C++ compiler for CPU code, no Triton for
            CUDA, a backend torch cannot compile for); names ``--compile``.
    """
    before = graph_count()
    start = time.perf_counter()
    try:
        parts = compile_parts(model, device, mode)
        warm_up(model, inference)
    except Exception as exc:  # torch.compile fails with many types (Inductor, Dynamo, OSError)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StartupError(f"--compile {mode}: torch.compile failed on {device}: "
                           f"{type(exc).__name__}: {first}; start with --compile off "
                           "(SAM2_SERVICE_COMPILE=off)") from exc
    return Compiled(mode, parts, (time.perf_counter() - start) * 1000, graph_count() - before)
