"""A stand-in for :class:`sam2_service.daemon.inference.engine.Sam2Engine` with no model: tests of the worker
and the server that need control over timing (a gate that holds a job inside the engine)
and over failures (out of memory), in milliseconds instead of SAM2's seconds."""

from __future__ import annotations

import threading

import numpy as np

from sam2_service.daemon.inference.engine import Embedding, Engine, EngineInfo, MaskSet

MODEL = ("tiny", "fake", "float32", "cpu")


class FakeOOM(RuntimeError):
    pass


class FakeEngine:
    """Embeds by keeping the image; predicts "pixel > 127 inside the box".

    Satisfies :class:`sam2_service.daemon.inference.engine.Engine` (checked statically below and at
    run time by tests/unit/test_dispatch.py)."""

    def __init__(self) -> None:
        self.model_id = MODEL
        self.embeds = 0
        self.predicts = 0
        self.freed = 0
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_with: BaseException | None = None

    def embed(self, image: np.ndarray) -> Embedding:
        self.started.set()
        assert self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        self.embeds += 1
        return Embedding({"image": image}, image.shape[:2], image.nbytes, self.model_id, 1.0)

    def predict_all(self, emb: Embedding, prompts) -> MaskSet:
        """One "pixel > 127 inside the box" mask per box row (one for a plain box); with
        ``multimask_output`` three masks (the box mask, its complement, empty) scored 0.5,
        0.9, 0.7; logits are +1 on the mask's 256x256 nearest-neighbour image, -1 elsewhere.
        Records the ``mask_input`` it was given in :attr:`mask_inputs`."""
        self.predicts += 1
        self.mask_inputs = getattr(self, "mask_inputs", []) + [prompts.mask_input]
        boxes = np.asarray(prompts.box, dtype=np.float32).reshape(-1, 4)
        masks = []
        for box in boxes:
            mask = np.zeros(emb.orig_hw, dtype=bool)
            x1, y1, x2, y2 = (int(v) for v in box)
            mask[y1:y2, x1:x2] = emb.features["image"][y1:y2, x1:x2, 0] > 127
            masks.append(mask)
        scores = [0.5] * len(masks)
        if prompts.multimask_output:
            masks, scores = [masks[0], ~masks[0], np.zeros_like(masks[0])], [0.5, 0.9, 0.7]
        h, w = emb.orig_hw
        rows, cols = np.arange(256) * h // 256, np.arange(256) * w // 256
        logits = np.stack([np.where(m[rows][:, cols], 1.0, -1.0) for m in masks])
        return MaskSet(np.stack(masks), np.asarray(scores, np.float32),
                       logits.astype(np.float32), 1.0)

    @staticmethod
    def is_out_of_memory(exc: BaseException) -> bool:
        return isinstance(exc, FakeOOM)

    def free_memory(self) -> None:
        self.freed += 1

    # what the server reads
    weights = "fake"
    device = "cpu"
    precision = "float32"
    load_time_ms = 0.0

    def warmup(self) -> float:
        return 0.0

    def info(self) -> EngineInfo:
        return EngineInfo(model="fake", weights=self.weights, device=self.device,
                          precision=self.precision)


def _satisfies_engine_protocol() -> Engine:
    """For type checkers: a FakeEngine is an :class:`Engine`."""
    return FakeEngine()
