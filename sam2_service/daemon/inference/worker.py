"""The inference worker: the model's jobs on one dedicated thread, with the embedding cache.

Everything slow for one request (base64 and image decoding, image encoding, mask
prediction) runs on that thread, so the asyncio loop never blocks and
SAM2's predictor, which keeps the current image's embedding as state, is only ever touched
by one thread. The thread, its bounded queue, deadlines and shutdown are
:class:`~sam2_service.daemon.inference.thread.InferenceThread`'s; this module holds the jobs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np

from ...wire.codecs import compute_image_id, decode_base64
from ...wire.errors import OutOfMemory, UnknownImage, UnknownMask
from ...wire.schema import EmbedRequest, SegmentRequest, new_mask_id
from .cache import CacheStats, EmbeddingCache, LogitsCache
from .engine import Embedding, Engine, MaskSet
from .imaging import decode_image
from .prompts import Prompts, check_size, validate
from .thread import InferenceThread

T = TypeVar("T")
log = logging.getLogger("sam2_service.worker")


@dataclass(frozen=True)
class SegmentOutcome:
    """What one segment request produced.

    Attributes:
        width, height: mask size in pixels (equal to the image's).
        mask: HxW bool, True on the object (the wire encoding, base64 of 0/255 bytes, is
            made by :mod:`sam2_service.daemon.serving.dispatch` with
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
    #: Issue 13 (only for a request with ``extended``): the ``maskId`` of ``mask``, and
    #: ``(mask, score, maskId)`` of SAM2's candidates best first (``multimask``) or of each
    #: box in request order (``boxes``).
    mask_id: str | None = None
    candidates: tuple[tuple[np.ndarray, float, str], ...] = ()
    box_masks: tuple[tuple[np.ndarray, float, str], ...] = ()


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
        logits_entries: masks whose low-resolution logits are kept for ``maskInput``
            (``--logits-cache-entries``; 0 keeps none).
    """

    def __init__(self, engine: Engine | None, max_image_pixels: int, *, cache_bytes: int = 0,
                 max_queue: int = 8, logits_entries: int = 256) -> None:
        self.engine = engine
        self.max_image_pixels = max_image_pixels
        self.cache: EmbeddingCache[Embedding] = EmbeddingCache(cache_bytes)
        #: Low-resolution logits by ``maskId`` (issue 13); guarded by ``_cache_lock``.
        self.logits = LogitsCache(logits_entries)
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
            self.logits.release(image_id)
            return self.cache.release(image_id) > 0

    def holds(self, image_id: str) -> bool:
        """True if this worker keeps ``image_id``'s embedding or a mask of it (``maskInput``);
        a lookup that counts no cache hit or miss."""
        with self._cache_lock:
            return self.cache.holds(image_id) or self.logits.holds(image_id)

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
            if request.mask_input is not None:  # fail before a costly image encoding
                self._mask_logits(request.mask_input, image_id)
            emb, cached, prompts = self._embedding(data, image_id, check, timings)
        if request.extended:
            return self._extended(request, emb, prompts, image_id, cached, timings)
        result = self.engine.predict(emb, prompts)
        timings["predict"] = result.predict_ms
        h, w = emb.orig_hw
        return SegmentOutcome(width=w, height=h, mask=result.mask, score=result.score,
                              coverage=np.count_nonzero(result.mask) / result.mask.size,
                              image_id=image_id, cached=cached, timings=timings)

    def _extended(self, request: SegmentRequest, emb: Embedding, prompts: Prompts, image_id: str,
                  cached: bool, timings: dict[str, float]) -> SegmentOutcome:
        """A segment request with issue 13's options: ``maskInput`` looked up (else
        :class:`UnknownMask`), SAM2's masks predicted (:meth:`Engine.predict_all`), their
        logits kept under new ``maskId``s, and the top-level mask chosen: the best-scoring
        one, or for ``boxes`` the union of the boxes' masks, scored by their lowest score,
        whose logits are the element-wise maximum of theirs (> 0 exactly on the union)."""
        model = self.engine.model_id
        if request.mask_input is not None:
            prompts = dataclasses.replace(
                prompts, mask_input=self._mask_logits(request.mask_input, image_id))
        out = self.engine.predict_all(emb, prompts)
        timings["predict"] = out.predict_ms
        entries, keep = self._entries(request, out)
        if request.boxes:
            top, score, top_logits = out.masks.any(axis=0), float(out.scores.min()), out.logits.max(0)
            top_id = new_mask_id()
            keep.append((top_id, top_logits))
        else:
            best = int(np.argmax(out.scores))
            top, score = out.masks[best], float(out.scores[best])
            top_id = entries[0][2] if entries else new_mask_id()
            if not entries:
                keep.append((top_id, out.logits[best]))
        with self._cache_lock:
            for mask_id, lg in keep:
                self.logits.put(mask_id, image_id, model, lg[None].copy())  # not a view
        h, w = emb.orig_hw
        return SegmentOutcome(
            width=w, height=h, mask=top, score=score,
            coverage=np.count_nonzero(top) / top.size, image_id=image_id, cached=cached,
            timings=timings, mask_id=top_id,
            candidates=tuple(entries) if request.multimask else (),
            box_masks=tuple(entries) if request.boxes else ())

    def _mask_logits(self, mask_id: str, image_id: str) -> np.ndarray:
        """The kept 1x256x256 logits of ``mask_id`` made on ``image_id`` by this engine.

        Raises:
            UnknownMask: none such (unknown, evicted, released, or another image's).
        """
        with self._cache_lock:
            logits = self.logits.get(mask_id, image_id, self.engine.model_id)
        if logits is None:
            raise UnknownMask(f"maskInput {mask_id[:40]!r} names no kept mask of this image "
                              "(unknown, evicted, released, or from another image): send the "
                              "request without it", field="maskInput")
        return logits

    @staticmethod
    def _entries(request: SegmentRequest, out: MaskSet) -> tuple[list, list]:
        """``(mask, score, maskId)`` of each candidate (best first) or box (request order),
        and ``(maskId, logits)`` to keep for them; both empty without those options."""
        if not (request.multimask or request.boxes):
            return [], []
        order = np.argsort(-out.scores, kind="stable") if request.multimask else range(len(out.scores))
        entries, keep = [], []
        for i in order:
            mask_id = new_mask_id()
            entries.append((out.masks[i], float(out.scores[i]), mask_id))
            keep.append((mask_id, out.logits[i]))
        return entries, keep

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
