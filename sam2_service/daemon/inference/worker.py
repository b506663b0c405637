"""The inference worker: the model's jobs on one dedicated thread, with the embedding cache.

Everything slow for one request (base64 decoding and hashing, unless the device pool did
them, on a thread of its own, to choose a device; image decoding; image encoding; mask
prediction) runs on that thread, so the asyncio loop never blocks and SAM2's predictor,
which keeps the current image's embedding as state, is only ever touched by one thread.
The thread, its bounded queue, deadlines, queue time and shutdown are
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
from .disk_cache import DiskEmbeddingStore, TieredCache
from .engine import Embedding, Engine, MaskSet
from .imaging import decode_image
from .prompts import check_size, validate
from .thread import InferenceThread, JobResult

T = TypeVar("T")
log = logging.getLogger("sam2_service.worker")


@dataclass(frozen=True)
class ImageBytes:
    """An image file read once from a request's ``imageBase64``, for its job.

    Attributes:
        data: the file's bytes (PNG or JPEG, base64-decoded, not yet image-decoded).
        image_id: its ``imageId`` (:func:`sam2_service.wire.codecs.compute_image_id`, 64 hex).
        read_ms: time the base64 decoding and hashing took, ms (part of ``decode``).
    """

    data: bytes
    image_id: str
    read_ms: float


def read_image(image_base64: str) -> ImageBytes:
    """Base64-decode ``image_base64`` (plain or a data URL) and hash it; blocking, so run
    on a thread (:class:`~sam2_service.daemon.inference.devices.DevicePool`, to choose a
    device) or in a job.

    Raises:
        ImageDecodeError: not valid base64.
    """
    t0 = time.perf_counter()
    data = decode_base64(image_base64)
    return ImageBytes(data, compute_image_id(data), _ms(t0))


@dataclass(frozen=True, eq=False)
class SegmentOutcome:
    """What one segment request produced: every mask SAM2 gave, and the top-level one.

    Attributes:
        width, height: mask size in pixels (equal to the image's).
        image_id: the image's ``imageId`` (:func:`sam2_service.wire.codecs.compute_image_id`).
        cached: True when the image embedding came from the cache.
        timings: ms by stage: ``decode`` (base64, hash, PNG/JPEG, prompt checks), ``encode``
            (image embedding; 0 when cached), ``predict`` (SAM2's ``predict``),
            ``queue`` (waiting for the inference thread).
        predicted: all of SAM2's masks (NxHxW bool), their scores (N float32) and their
            low-resolution logits, these left where the engine produced them (copied to host
            memory only when kept; :class:`~sam2_service.daemon.inference.engine.MaskSet`).
        mask: the top-level mask, HxW bool, True on the object: the best-scoring of
            ``predicted``, or for ``boxes`` the union of the boxes' masks. The wire encoding
            is made by :mod:`sam2_service.daemon.serving.dispatch`.
        score: SAM2's IoU prediction for ``mask`` (for ``boxes`` the boxes' lowest).
        coverage: fraction of ``mask``'s pixels that are foreground, 0..1.
        mask_id: the ``maskId`` under which ``mask``'s logits are kept (``maskInput``), for
            a request with the protocol additions (``extended``); else None.
        entries: ``(index into predicted, maskId)`` of each mask the extended reply lists:
            SAM2's candidates best first (``multimask``) or each box in request order
            (``boxes``); empty otherwise.
    """

    width: int
    height: int
    image_id: str
    cached: bool
    timings: dict[str, float]
    predicted: MaskSet
    mask: np.ndarray
    score: float
    coverage: float
    mask_id: str | None = None
    entries: tuple[tuple[int, str], ...] = ()


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


def _entry_order(request: SegmentRequest, predicted: MaskSet) -> list[int]:
    """Indices into ``predicted`` of the masks an extended reply lists: SAM2's candidates
    best first (``multimask``; ties in SAM2's order), each box in request order (``boxes``),
    else none."""
    if request.multimask:
        return [int(i) for i in np.argsort(-predicted.scores, kind="stable")]
    return list(range(len(predicted.scores))) if request.boxes else []


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
        cache_bytes, disk: the embedding cache's budget (0: off); its disk tier, or None.
        max_queue: most jobs waiting (not yet started); more raise :class:`Busy`.
        logits_entries: masks whose low-resolution logits are kept for ``maskInput``
            (``--logits-cache-entries``; 0 keeps none).
    """

    def __init__(self, engine: Engine | None, max_image_pixels: int, *, cache_bytes: int = 0,
                 max_queue: int = 8, logits_entries: int = 256,
                 disk: DiskEmbeddingStore | None = None) -> None:
        self.engine = engine
        self.max_image_pixels = max_image_pixels
        # Both caches are guarded by _cache_lock: the loop thread reads and releases too.
        self._embeddings = TieredCache(EmbeddingCache(cache_bytes), disk, lambda: self.engine)
        self._logits = LogitsCache(logits_entries)
        self._cache_lock = threading.Lock()
        super().__init__(max_queue)

    # -- jobs ---------------------------------------------------------------------------------
    async def segment(self, request: SegmentRequest, deadline: float | None = None,
                      image: ImageBytes | None = None) -> SegmentOutcome:
        """Segment ``request`` on the inference thread (see :meth:`_segment_job`).

        Args:
            deadline: ``time.monotonic()`` by which the outcome must be here, or None.
            image: ``request.image_base64`` already read (:func:`read_image`), or None to
                read it in the job.

        Raises:
            ServiceError: the request's (unknown image or mask, invalid prompts, image
                decoding), or the queue's (busy, timeout, shutting down, out of memory).
        """
        return await self._timed(self._segment_job, request, image, deadline)

    async def embed(self, request: EmbedRequest, deadline: float | None = None,
                    image: ImageBytes | None = None) -> EmbedOutcome:
        """Compute or find ``request``'s image embedding on the inference thread (``image``
        and errors as for :meth:`segment`)."""
        return await self._timed(self._embed_job, request, image, deadline)

    async def run_job(self, fn: Callable[..., T], *args: Any,
                      deadline: float | None = None) -> JobResult[T]:
        """Run the model job ``fn(*args)`` on the inference thread, the device's
        out-of-memory error turned into :class:`OutOfMemory` (:meth:`_guard`).

        Returns:
            Its value with its queue and run times, ms (:class:`JobResult`).

        Raises:
            Busy, RequestTimeout, ShuttingDown, OutOfMemory; whatever ``fn`` raises.
        """
        return await self.call(self._guard(fn), *args, deadline=deadline)

    async def _timed(self, job: Callable[..., T], request: Any, image: ImageBytes | None,
                     deadline: float | None) -> T:
        """Run a request's job; its queue time becomes its outcome's ``queue`` timing."""
        done = await self.run_job(job, request, image, deadline=deadline)
        done.value.timings["queue"] = done.queue_ms
        return done.value

    # -- the caches, for the jobs and for the loop's thread ------------------------------------
    def cached_embedding(self, key: str) -> Embedding | None:
        """The cached embedding under ``key`` (an ``imageId``, or one with a crop suffix)
        made by this worker's model, or None; counts a hit or a miss."""
        with self._cache_lock:
            return self._embeddings.get(key, self.engine.model_id)

    def keep_embedding(self, key: str, embedding: Embedding) -> bool:
        """Cache ``embedding`` under ``key`` (evicting older ones to fit); False when it is
        larger than the whole cache (or the cache is off) and was not kept."""
        with self._cache_lock:
            return self._embeddings.put(key, embedding.model_id, embedding, embedding.nbytes)

    def release(self, image_id: str) -> bool:
        """Drop the cached embedding of ``image_id`` and its kept mask logits; False if no
        embedding was cached."""
        with self._cache_lock:
            self._logits.release(image_id)
            return self._embeddings.release(image_id) > 0

    def holds(self, image_id: str) -> bool:
        """True if this worker keeps ``image_id``'s embedding or a mask of it (``maskInput``);
        a lookup that counts no cache hit or miss."""
        with self._cache_lock:
            return self._embeddings.holds(image_id) or self._logits.holds(image_id)

    def cache_stats(self) -> CacheStats:
        """The embedding cache's counters."""
        with self._cache_lock:
            return self._embeddings.stats()

    async def load(self, loader: Callable[[], Engine]) -> Engine:
        """Build the engine with ``loader()`` on the inference thread and keep it."""
        self.engine = (await self.call(loader)).value
        return self.engine

    async def warmup(self) -> float:
        """Run :meth:`Engine.warmup` on the inference thread (ms taken). It must be that
        thread: torch keeps per-thread state (on CUDA the cuBLAS/cuDNN handles) whose
        creation would otherwise land on the first request."""
        return (await self.call(self.engine.warmup)).value

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
                    freed = self._embeddings.clear()
                self.engine.free_memory()
                log.warning("out of memory; freed %d bytes of cached embeddings", freed)
                raise OutOfMemory(f"the model's device ran out of memory ({str(exc)[:200]}); "
                                  "cached embeddings were freed, try again or send a smaller "
                                  "image") from exc

        return guarded

    # -- on the inference thread ----------------------------------------------------------------
    def _embedding(self, image: ImageBytes, check: Callable[[tuple[int, int]], T],
                   timings: dict[str, float]) -> tuple[Embedding, bool, T]:
        """The cached embedding of ``image`` or a new one, and ``check((H, W))`` of the image
        (prompt or size checks, run before the costly image encoding)."""
        t0 = time.perf_counter()
        emb = self.cached_embedding(image.image_id)
        if emb is not None:
            checked = check(emb.orig_hw)
            timings["decode"] += _ms(t0)
            return emb, True, checked
        pixels = decode_image(image.data, self.max_image_pixels)
        checked = check(pixels.shape[:2])
        timings["decode"] += _ms(t0)
        emb = self.engine.embed(pixels)
        timings["encode"] = emb.encode_ms
        self.keep_embedding(image.image_id, emb)
        return emb, False, checked

    def _segment_job(self, request: SegmentRequest, image: ImageBytes | None) -> SegmentOutcome:
        """The embedding (cached, or of the request's image), the prompts checked against
        it, ``maskInput`` looked up (else :class:`UnknownMask`, before a costly image
        encoding), every mask SAM2 predicts (:meth:`Engine.predict_all`), and for an
        extended request their logits kept under new maskIds (:meth:`_keep`)."""
        timings = {"decode": 0.0, "encode": 0.0}
        check = functools.partial(validate, request)
        mask_logits = None
        if request.image_id is not None:
            t0 = time.perf_counter()
            image_id = request.image_id
            emb = self.cached_embedding(image_id)
            if emb is None:
                raise UnknownImage(f"imageId {image_id} is not cached (never sent, evicted or "
                                   "released): send the image as imageBase64", field="imageId")
            prompts, cached = check(emb.orig_hw), True
            timings["decode"] = _ms(t0)
        else:
            assert request.image_base64 is not None
            image = image or read_image(request.image_base64)
            image_id = image.image_id
            timings["decode"] = image.read_ms
            if request.mask_input is not None:  # fail before a costly image encoding
                mask_logits = self._mask_logits(request.mask_input, image_id)
            emb, cached, prompts = self._embedding(image, check, timings)
        if request.mask_input is not None:
            if mask_logits is None:
                mask_logits = self._mask_logits(request.mask_input, image_id)
            prompts = dataclasses.replace(prompts, mask_input=mask_logits)
        predicted = self.engine.predict_all(emb, prompts)
        timings["predict"] = predicted.predict_ms
        return self._outcome(request, emb.orig_hw, predicted, image_id, cached, timings)

    def _outcome(self, request: SegmentRequest, hw: tuple[int, int], predicted: MaskSet,
                 image_id: str, cached: bool, timings: dict[str, float]) -> SegmentOutcome:
        """The top-level mask of ``predicted``: the best-scoring one, or for ``boxes`` the
        union of the boxes' masks scored by their lowest score; with its ``maskId`` and the
        entries' for an extended request."""
        best = int(np.argmax(predicted.scores))
        if request.boxes:
            mask, score = predicted.masks.any(axis=0), float(predicted.scores.min())
        else:
            mask, score = predicted.masks[best], float(predicted.scores[best])
        mask_id, entries = self._keep(request, predicted, best, image_id) if request.extended \
            else (None, ())
        return SegmentOutcome(
            width=hw[1], height=hw[0], image_id=image_id, cached=cached, timings=timings,
            predicted=predicted, mask=mask, score=score,
            coverage=np.count_nonzero(mask) / mask.size, mask_id=mask_id, entries=entries)

    def _keep(self, request: SegmentRequest, predicted: MaskSet, best: int, image_id: str
              ) -> tuple[str, tuple[tuple[int, str], ...]]:
        """New maskIds for an extended request's masks, their logits copied to host
        memory and kept (``maskInput``): each candidate (best first, ``multimask``) or box
        (request order, ``boxes``), and the top-level mask, whose logits are for ``boxes``
        the element-wise maximum of the boxes' (> 0 exactly on the union), else the best
        mask's (the first candidate's, with ``multimask``).

        Returns:
            The top-level ``maskId`` and the ``(index, maskId)`` entries.
        """
        entries = tuple((i, new_mask_id()) for i in _entry_order(request, predicted))
        keep: list[tuple[str, int | None]] = [(mask_id, i) for i, mask_id in entries]
        if request.boxes:
            top_id = new_mask_id()
            keep.append((top_id, None))
        elif entries:
            top_id = entries[0][1]
        else:
            top_id = new_mask_id()
            keep.append((top_id, best))
        host = [(mask_id, predicted.host_logits(i)) for mask_id, i in keep]
        with self._cache_lock:
            for mask_id, logits in host:
                self._logits.put(mask_id, image_id, self.engine.model_id, logits)
        return top_id, entries

    def _mask_logits(self, mask_id: str, image_id: str) -> np.ndarray:
        """The kept 1x256x256 logits of ``mask_id`` made on ``image_id`` by this engine.

        Raises:
            UnknownMask: none such (unknown, evicted, released, or another image's).
        """
        with self._cache_lock:
            logits = self._logits.get(mask_id, image_id, self.engine.model_id)
        if logits is None:
            raise UnknownMask(f"maskInput {mask_id[:40]!r} names no kept mask of this image "
                              "(unknown, evicted, released, or from another image): send the "
                              "request without it", field="maskInput")
        return logits

    def _embed_job(self, request: EmbedRequest, image: ImageBytes | None) -> EmbedOutcome:
        image = image or read_image(request.image_base64)
        timings = {"decode": image.read_ms, "encode": 0.0}
        emb, cached, _ = self._embedding(
            image, functools.partial(check_size, request.width, request.height), timings)
        h, w = emb.orig_hw
        return EmbedOutcome(w, h, image.image_id, cached, timings)
