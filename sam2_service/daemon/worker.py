"""The inference worker: the model's jobs on one dedicated thread, with the embedding cache.

Everything slow for one request (base64 and image decoding, image encoding, mask
prediction) runs on that thread, so the asyncio loop never blocks and
SAM2's predictor, which keeps the current image's embedding as state, is only ever touched
by one thread. The thread, its bounded queue, deadlines and shutdown are
:class:`~sam2_service.daemon.jobs.InferenceThread`'s; this module holds the jobs.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np

from ..wire.codecs import compute_image_id, decode_base64
from ..wire.errors import OutOfMemory, UnknownImage
from ..wire.schema import EmbedRequest, SegmentRequest
from .cache import CacheStats, EmbeddingCache
from .engine import Embedding, Engine
from .imaging import decode_image
from .jobs import InferenceThread
from .prompts import check_size, validate

T = TypeVar("T")
log = logging.getLogger("sam2_service.worker")


@dataclass(frozen=True)
class SegmentOutcome:
    """What one segment request produced.

    Attributes:
        width, height: mask size in pixels (equal to the image's).
        mask: HxW bool, True on the object (the wire encoding, base64 of 0/255 bytes, is
            made by :mod:`sam2_service.daemon.dispatch` with
            :func:`sam2_service.wire.codecs.encode_mask`).
        score: SAM2's IoU prediction for the mask.
        coverage: fraction of mask pixels that are foreground, 0..1.
        image_id: the image's ``imageId`` (:func:`sam2_service.wire.codecs.compute_image_id`).
        cached: True when the image embedding came from the cache.
        timings: ms by stage: ``decode`` (base64, hash, PNG/JPEG, prompt checks), ``encode``
            (image embedding; 0 when cached), ``predict`` (SAM2's ``predict``),
            ``queue`` (waiting for the inference thread).
    """

    width: int
    height: int
    mask: np.ndarray
    score: float
    coverage: float
    image_id: str
    cached: bool
    timings: dict[str, float]


@dataclass(frozen=True)
class EmbedOutcome:
    """What one embed request produced: the image's size, ``imageId``, whether its
    embedding was already cached, and ms by stage (``decode``, ``encode``, ``queue``)."""

    width: int
    height: int
    image_id: str
    cached: bool
    timings: dict[str, float]


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class InferenceWorker(InferenceThread):
    """Runs jobs on the model's single thread, in arrival order.

    Every torch call of the daemon, model loading included (:meth:`load`), runs on this one
    thread. libgomp (torch's OpenMP on Linux) keeps a thread team per calling thread, and
    once the process holds more OpenMP threads than CPUs it stops letting idle workers spin
    between parallel regions; a second torch-calling thread made ``predict`` about 20% slower
    on the 2-core development machine (docs/benchmarks.md).

    Args:
        engine: the loaded model, or None to :meth:`load` one on the worker's thread.
        max_image_pixels: the pixel ceiling for image decoding.
        cache_bytes: the embedding cache's budget (0: off).
        max_queue: most jobs waiting (not yet started); more raise :class:`Busy`.
    """

    def __init__(self, engine: Engine | None, max_image_pixels: int, *, cache_bytes: int = 0,
                 max_queue: int = 8) -> None:
        self.engine = engine
        self.max_image_pixels = max_image_pixels
        self.cache: EmbeddingCache[Embedding] = EmbeddingCache(cache_bytes)
        self._cache_lock = threading.Lock()  # the loop thread releases entries too
        super().__init__(max_queue)

    # -- jobs ---------------------------------------------------------------------------------
    async def segment(self, request: SegmentRequest, deadline: float | None = None) -> SegmentOutcome:
        """Segment ``request`` on the inference thread (see :meth:`_segment_job`)."""
        return await self._timed_job(self._segment_job, request, deadline)

    async def embed(self, request: EmbedRequest, deadline: float | None = None) -> EmbedOutcome:
        """Compute or find ``request``'s image embedding on the inference thread."""
        return await self._timed_job(self._embed_job, request, deadline)

    async def _timed_job(self, job: Callable[[Any], T], request: Any, deadline: float | None) -> T:
        """Run a model job (out-of-memory guarded) and turn the ``_started`` time it records
        into its ``queue`` timing: ms from submission to the start on the inference thread."""
        submitted = time.perf_counter()
        out = await self.call(self._guard(job), request, deadline=deadline)
        out.timings["queue"] = (out.timings.pop("_started") - submitted) * 1000
        return out

    def release(self, image_id: str) -> bool:
        """Drop the cached embedding of ``image_id``; False if none was cached."""
        with self._cache_lock:
            return self.cache.release(image_id) > 0

    def cache_stats(self) -> CacheStats:
        """The embedding cache's counters."""
        with self._cache_lock:
            return self.cache.stats()

    async def load(self, loader: Callable[[], Engine]) -> Engine:
        """Build the engine with ``loader()`` on the inference thread and keep it."""
        self.engine = await self.call(loader)
        return self.engine

    async def warmup(self) -> float:
        """Run :meth:`Engine.warmup` on the inference thread (ms taken). It must be that
        thread: torch keeps per-thread state (on CUDA the cuBLAS/cuDNN handles) whose
        creation would otherwise land on the first request."""
        return await self.call(self.engine.warmup)

    def _guard(self, fn: Callable[..., T]) -> Callable[..., T]:
        """Turn the device's out-of-memory error into :class:`OutOfMemory`, after freeing
        the embedding cache and the allocator's cached blocks so the next request can run."""

        def guarded(*args: Any) -> T:
            try:
                return fn(*args)
            except Exception as exc:
                if not self.engine.is_out_of_memory(exc):
                    raise
                with self._cache_lock:
                    freed = self.cache.clear()
                self.engine.free_memory()
                log.warning("out of memory; freed %d bytes of cached embeddings", freed)
                raise OutOfMemory(f"the model's device ran out of memory ({str(exc)[:200]}); "
                                  "cached embeddings were freed, try again or send a smaller "
                                  "image") from exc

        return guarded

    def _embedding(self, data: bytes, image_id: str, check: Callable[[tuple[int, int]], T],
                   timings: dict[str, float]) -> tuple[Embedding, bool, T]:
        """The cached embedding of ``data`` or a new one, and ``check((H, W))`` of the image
        (prompt or size checks, run before the costly image encoding)."""
        t0 = time.perf_counter()
        with self._cache_lock:
            emb = self.cache.get(image_id, self.engine.model_id)
        if emb is not None:
            checked = check(emb.orig_hw)
            timings["decode"] += _ms(t0)
            return emb, True, checked
        image = decode_image(data, self.max_image_pixels)
        checked = check(image.shape[:2])
        timings["decode"] += _ms(t0)
        emb = self.engine.embed(image)
        timings["encode"] = emb.encode_ms
        with self._cache_lock:
            self.cache.put(image_id, emb.model_id, emb, emb.nbytes)
        return emb, False, checked

    def _segment_job(self, request: SegmentRequest) -> SegmentOutcome:
        started = time.perf_counter()
        timings = {"_started": started, "decode": 0.0, "encode": 0.0}
        check = functools.partial(validate, request)
        if request.image_id is not None:
            image_id = request.image_id
            with self._cache_lock:
                emb = self.cache.get(image_id, self.engine.model_id)
            if emb is None:
                raise UnknownImage(f"imageId {image_id} is not cached (never sent, evicted or "
                                   "released): send the image as imageBase64", field="imageId")
            prompts, cached = check(emb.orig_hw), True
            timings["decode"] = _ms(started)
        else:
            assert request.image_base64 is not None
            data = decode_base64(request.image_base64)
            image_id = compute_image_id(data)
            timings["decode"] = _ms(started)
            emb, cached, prompts = self._embedding(data, image_id, check, timings)
        result = self.engine.predict(emb, prompts)
        timings["predict"] = result.predict_ms
        h, w = emb.orig_hw
        return SegmentOutcome(width=w, height=h, mask=result.mask, score=result.score,
                              coverage=np.count_nonzero(result.mask) / result.mask.size,
                              image_id=image_id, cached=cached, timings=timings)

    def _embed_job(self, request: EmbedRequest) -> EmbedOutcome:
        started = time.perf_counter()
        timings = {"_started": started, "decode": 0.0, "encode": 0.0}
        data = decode_base64(request.image_base64)
        image_id = compute_image_id(data)
        timings["decode"] = _ms(started)
        emb, cached, _ = self._embedding(
            data, image_id, functools.partial(check_size, request.width, request.height), timings)
        h, w = emb.orig_hw
        return EmbedOutcome(w, h, image_id, cached, timings)
