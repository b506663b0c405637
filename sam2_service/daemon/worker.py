"""The inference worker: one dedicated thread that owns the model and the embedding cache.

Everything slow for one request (base64 and image decoding, image encoding, mask
prediction) runs on that thread, so the asyncio loop never blocks and
SAM2's predictor, which keeps the current image's embedding as state, is only ever touched
by one thread. Jobs wait in a bounded queue (``max_queue``; beyond it :class:`Busy` at
once), each with a deadline (:class:`RequestTimeout`); a job whose client has gone is
dropped before it starts, and one already running is finished and its result discarded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import numpy as np

from ..wire.codecs import compute_image_id, decode_base64
from ..wire.errors import (
    Busy,
    OutOfMemory,
    RequestTimeout,
    ServiceError,
    ShuttingDown,
    UnknownImage,
    UnknownMask,
)
from ..wire.schema import EmbedRequest, SegmentRequest, new_mask_id
from .cache import CacheStats, EmbeddingCache, LogitsCache
from .engine import Embedding, Engine, MaskSet
from .imaging import decode_image
from .prompts import Prompts, check_size, validate

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


@dataclass(eq=False)
class _Job:
    fn: Callable[[], Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() seconds
    state: str = "waiting"  # -> running | dropped
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    #: The failure's traceback as raised on the inference thread (not the loop's frames).
    thread_tb: Any = None


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


class InferenceWorker:
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
        self.max_queue = max_queue
        self.cache: EmbeddingCache[Embedding] = EmbeddingCache(cache_bytes)
        #: Low-resolution logits by ``maskId`` (issue 13); guarded by ``_cache_lock``.
        self.logits = LogitsCache(logits_entries)
        self._cache_lock = threading.Lock()  # the loop thread releases entries too
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._waiting = 0
        self._closed = False
        self._running: _Job | None = None
        #: ``time.monotonic()`` at which the queue was closed (shutdown began); None before.
        self.closed_at: float | None = None
        #: ``time.monotonic()`` at which the running job started; None when idle (watchdog).
        self.running_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="sam2-inference", daemon=True)
        self._thread.start()

    # -- the inference thread --------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                if job.state != "waiting":
                    continue
                job.state = "running"
                self._waiting -= 1
                self._running = job
            job.started = time.perf_counter()
            self.running_since = time.monotonic()
            try:
                if time.monotonic() > job.deadline:
                    raise RequestTimeout("the request waited longer than the request timeout "
                                         "for the model")
                outcome: tuple[bool, Any] = (True, job.fn())
            except BaseException as exc:  # handed to the awaiting coroutine
                job.thread_tb = exc.__traceback__
                outcome = (False, exc)
            with self._cond:
                self._running = None
            self.running_since = None
            try:
                job.loop.call_soon_threadsafe(_settle, job.future, outcome)
            except RuntimeError:  # the loop has closed (shutdown): nobody waits any more
                pass
            del job, outcome  # hold no request (its image) until the next job comes

    # -- the event loop's side ---------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Jobs accepted and not yet started."""
        return self._waiting

    @property
    def alive(self) -> bool:
        """True while the inference thread runs."""
        return self._thread.is_alive()

    async def call(self, fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
        """Run ``fn(*args)`` on the inference thread and await its result.

        Args:
            deadline: ``time.monotonic()`` by which the result must be here, or None.

        Raises:
            Busy: ``max_queue`` jobs already wait.
            ShuttingDown: the worker is closed, or was closed while the job waited.
            RequestTimeout: the deadline passed (a running job is finished, its result dropped).
            asyncio.CancelledError: the caller was cancelled (its job is dropped likewise).
        """
        loop = asyncio.get_running_loop()
        job = _Job(functools.partial(fn, *args), loop.create_future(), loop,
                   float("inf") if deadline is None else deadline)
        with self._cond:
            if self._closed:
                raise ShuttingDown("the daemon is shutting down")
            if self._waiting >= self.max_queue:
                raise Busy(f"{self._waiting} requests already wait for the model "
                           f"(max queue {self.max_queue}); try again shortly")
            self._queue.append(job)
            self._waiting += 1
            self._cond.notify()
        del fn, args  # the job holds them; the frame must not (see below)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except asyncio.TimeoutError:
            self._drop(job)
            raise RequestTimeout("no reply within the request timeout") from None
        except asyncio.CancelledError:
            self._drop(job)
            raise
        except BaseException as exc:
            # As raised here, the traceback runs through asyncio's frames, which hold the
            # futures, which hold this exception: a reference cycle that kept each failed
            # request (a 60 MB image) alive until a garbage collection. Re-raise with no
            # traceback for an expected failure, the inference thread's for a bug; and
            # drop ``job`` from this frame, which the new traceback includes.
            tb = None if isinstance(exc, ServiceError) else job.thread_tb
            raise exc.with_traceback(tb)  # noqa: B904 (the same exception, re-raised)
        finally:
            job.fn = job.thread_tb = None  # type: ignore[assignment]
            del job

    def _drop(self, job: _Job) -> None:
        with self._cond:
            if job.state == "waiting":
                job.state = "dropped"
                self._waiting -= 1
        job.future.cancel()

    def fail_waiting(self) -> int:
        """Close the queue: jobs not yet started get :class:`ShuttingDown`; the running
        one goes on. Returns how many jobs were failed."""
        with self._cond:
            self._closed = True
            if self.closed_at is None:
                self.closed_at = time.monotonic()
            jobs = [j for j in self._queue if j.state == "waiting"]
            for job in jobs:
                job.state = "dropped"
            self._waiting = 0
            self._queue.clear()
            self._cond.notify_all()
        for job in jobs:
            _settle(job.future, (False, ShuttingDown("the daemon is shutting down; the "
                                                     "request was not run")))
        return len(jobs)

    def fail_running(self, reason: str) -> bool:
        """Answer the running job's caller now with :class:`ShuttingDown` (``reason``); the
        job itself goes on to its end on the inference thread, its result discarded. For a
        shutdown whose timeout has passed, so that the client gets a reply, not a bare EOF.
        Returns False when no job runs."""
        with self._cond:
            job = self._running
        if job is None:
            return False
        job.loop.call_soon_threadsafe(_settle, job.future, (False, ShuttingDown(reason)))
        return True

    def close(self, timeout: float = 0.0) -> bool:
        """Close the queue (:meth:`fail_waiting`) and wait up to ``timeout`` seconds for the
        running job, if any, to end and the thread to exit. Returns True when the thread has
        exited. The thread is a daemon thread, so a hung inference cannot hold the process;
        but an interpreter that finalises while it is inside torch aborts (SIGABRT,
        "terminate called without an active exception"), so when this returns False the
        caller must leave with ``os._exit`` (:func:`sam2_service.daemon.server.run`)."""
        if not self._closed:
            self.fail_waiting()
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def shutdown_time_left(self, shutdown_timeout: float) -> float:
        """Seconds left of ``shutdown_timeout`` counted from when the queue was closed
        (the start of the shutdown); the whole timeout if it has not been closed."""
        if self.closed_at is None:
            return shutdown_timeout
        return max(0.0, self.closed_at + shutdown_timeout - time.monotonic())

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


def _settle(future: asyncio.Future, outcome: tuple[bool, Any]) -> None:
    """Set ``future``'s result or exception unless its waiter has gone (cancelled)."""
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
