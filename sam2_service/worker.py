"""The inference worker: one dedicated thread that owns the model.

Everything slow for one segment request (base64 and image decoding, prompt validation,
image encoding, mask prediction, mask encoding) runs in :func:`segment_job` on that
thread, so the asyncio loop never blocks and SAM2's predictor, which keeps the current
image's embedding as state, is only ever touched by one thread.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from .engine import Sam2Engine
from .imaging import decode_base64, decode_image, encode_mask
from .prompts import validate
from .schema import SegmentRequest

T = TypeVar("T")


@dataclass(frozen=True)
class SegmentOutcome:
    """What one segment request produced.

    Attributes:
        width, height: mask size in pixels (equal to the image's).
        mask_base64: see :func:`sam2_service.imaging.encode_mask`.
        score: SAM2's IoU prediction for the mask.
        coverage: fraction of mask pixels that are foreground, 0..1.
        decode_ms, encode_ms, predict_ms, total_ms: time in image decoding (base64, PNG/JPEG
            and prompt validation), image encoding, prediction, and the whole job incl.
            mask encoding, in milliseconds.
    """

    width: int
    height: int
    mask_base64: str
    score: float
    coverage: float
    decode_ms: float
    encode_ms: float
    predict_ms: float
    total_ms: float


def segment_job(engine: Sam2Engine, request: SegmentRequest, max_image_pixels: int) -> SegmentOutcome:
    """Decode the request's image, validate its prompts, and segment. Blocking.

    Raises:
        ImageDecodeError, ImageTooLarge, InvalidRequest: bad input (see their modules).
    """
    t0 = time.perf_counter()
    image = decode_image(decode_base64(request.image_base64), max_image_pixels)
    prompts = validate(request, image.shape[:2])
    t1 = time.perf_counter()
    result = engine.segment(image, prompts)
    mask_b64 = encode_mask(result.mask)
    total = (time.perf_counter() - t0) * 1000
    return SegmentOutcome(
        width=image.shape[1], height=image.shape[0], mask_base64=mask_b64, score=result.score,
        coverage=float(result.mask.mean()), decode_ms=(t1 - t0) * 1000,
        encode_ms=result.encode_ms, predict_ms=result.predict_ms, total_ms=total)


class InferenceWorker:
    """Runs jobs on the model's single thread, in submission order.

    Args:
        engine: the loaded model; only this worker's thread calls it.
        max_image_pixels: passed to :func:`segment_job`.
    """

    def __init__(self, engine: Sam2Engine, max_image_pixels: int) -> None:
        self.engine = engine
        self.max_image_pixels = max_image_pixels
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam2-inference")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the inference thread and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def segment(self, request: SegmentRequest) -> SegmentOutcome:
        """Run :func:`segment_job` on the inference thread and await its outcome."""
        return await self.run(segment_job, self.engine, request, self.max_image_pixels)

    async def warmup(self) -> float:
        """Run :meth:`Sam2Engine.warmup` on the inference thread (ms taken). It must be that
        thread: torch keeps per-thread state (on CUDA the cuBLAS/cuDNN handles) whose
        creation would otherwise land on the first request."""
        return await self.run(self.engine.warmup)

    def close(self, wait: bool = True) -> None:
        """Stop the thread; with ``wait`` let the running job finish first. Queued jobs
        that have not started are cancelled."""
        self._executor.shutdown(wait=wait, cancel_futures=True)
