"""One model per device (``--device cuda:0,cuda:1``, ``--device cuda:all``): the inference
workers of the daemon and the rule that picks one for each request.

Each device has its own :class:`~sam2_service.daemon.inference.worker.InferenceWorker`: its model, its
inference thread, its queue (``--max-queue`` each) and its caches (``--cache-mb`` and
``--logits-cache-entries`` each). An embedding lives on the device that computed it, so a
request is sent where its image already is:

* ``imageId`` (or ``imageBase64`` whose ``imageId`` is computed first, off the event loop,
  and handed to the job with the decoded bytes, so neither is done twice): the worker that
  keeps that image's embedding or one of its masks; else the worker an earlier request for
  the same image was just sent to (so two requests for one new image are not embedded
  twice); else
* the least-loaded worker: fewest requests sent to it and not yet answered (an ``auto``
  request counts until its reply), then fewest jobs waiting or running, then the lowest
  index.

With one device the pool hands out its worker at once and computes nothing: the daemon's
path and cost are those of a single model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, NamedTuple, Sequence

from .cache import CacheStats
from .worker import ImageBytes, InferenceWorker, read_image


class Routed(NamedTuple):
    """What :meth:`DevicePool.worker_for` hands out: the worker to run the request on, and
    the request's ``imageBase64`` already read (its bytes and ``imageId``, to pass to the
    job) when choosing the worker needed it, else None."""

    worker: InferenceWorker
    image: ImageBytes | None


@dataclass(frozen=True)
class DeviceInfo:
    """One device of the pool as ``info`` lists it (its ``devices`` entries).

    Attributes:
        index: its place in ``--device`` (0 first).
        device, precision: its engine's torch device and dtype (None while loading).
        load_time_ms: its model's load time, ms (None while loading).
        waiting: jobs waiting for its inference thread.
        running: True while a job runs on it.
        requests: requests sent to it and not yet answered.
        cache: its embedding cache's counters.
    """

    index: int
    device: str | None
    precision: str | None
    load_time_ms: float | None
    waiting: int
    running: bool
    requests: int
    cache: CacheStats


class DevicePool:
    """The inference workers, one per device, in ``--device`` order (index 0 first).

    Args:
        workers: at least one worker; their engines may still be loading.
    """

    def __init__(self, workers: Sequence[InferenceWorker]) -> None:
        if not workers:
            raise ValueError("a device pool needs at least one worker")
        self.workers = list(workers)
        #: Requests sent to each worker (by index) and not yet answered.
        self._active = [0] * len(self.workers)
        #: imageId -> [worker index, requests in flight for it], for images not yet cached.
        self._pending: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.workers)

    # -- routing ---------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def worker_for(self, request: Any) -> AsyncIterator[Routed]:
        """The worker to run ``request`` on (a segment, embed or auto request), held as
        busy until the block ends, with the image read for it. With several devices,
        ``imageBase64`` is base64-decoded and hashed on a thread first
        (:func:`~sam2_service.daemon.inference.worker.read_image`), and the result is
        :attr:`Routed.image`, for the job; with one, nothing is read here.

        Raises:
            ImageDecodeError: ``imageBase64`` is not valid base64 (as from the worker).
        """
        if len(self.workers) == 1:
            yield Routed(self.workers[0], None)
            return
        image_id, image = getattr(request, "image_id", None), None
        if image_id is None:
            image = await asyncio.to_thread(read_image, request.image_base64)
            image_id = image.image_id
        index = self.route(image_id)
        pending = self._pending.setdefault(image_id, [index, 0])
        pending[1] += 1
        self._active[index] += 1
        try:
            yield Routed(self.workers[index], image)
        finally:
            self._active[index] -= 1
            pending[1] -= 1
            if pending[1] == 0:
                del self._pending[image_id]

    def route(self, image_id: str) -> int:
        """The index of the worker for an image (see the module's docstring)."""
        holders = [i for i, w in enumerate(self.workers) if w.holds(image_id)]
        if holders:
            return min(holders, key=self._load)
        pending = self._pending.get(image_id)
        if pending is not None:
            return pending[0]
        return min(range(len(self.workers)), key=self._load)

    def _load(self, index: int) -> tuple[int, int, int]:
        return self._active[index], self.workers[index].in_flight, index

    def release(self, image_id: str) -> bool:
        """Drop ``image_id``'s embedding and masks on every worker; True if any kept it."""
        return any([w.release(image_id) for w in self.workers])

    # -- info -------------------------------------------------------------------------------
    def where(self, worker: InferenceWorker) -> dict[str, Any]:
        """Log fields naming the device ``worker`` runs on (``device``, ``deviceIndex``, as
        in "Model loaded successfully"); none with a single device."""
        if len(self.workers) == 1:
            return {}
        index = self.workers.index(worker)
        return {"device": worker.engine.device if worker.engine else None, "deviceIndex": index}

    def info(self) -> list[DeviceInfo]:
        """Every device, in ``--device`` order: its device, dtype, model load time, queue
        and embedding cache."""
        out = []
        for i, w in enumerate(self.workers):
            eng = w.engine
            out.append(DeviceInfo(
                index=i, device=eng.device if eng else None,
                precision=eng.precision if eng else None,
                load_time_ms=eng.load_time_ms if eng else None, waiting=w.waiting,
                running=w.running_since is not None, requests=self._active[i],
                cache=w.cache_stats()))
        return out

    # -- lifecycle ----------------------------------------------------------------------------
    def fail_waiting(self) -> int:
        """Close every worker's queue; returns how many waiting jobs were failed in all."""
        return sum(w.fail_waiting() for w in self.workers)

    def fail_running(self, reason: str) -> bool:
        """Answer each running job's caller now (see :meth:`InferenceThread.fail_running`);
        False when none runs."""
        return any([w.fail_running(reason) for w in self.workers])

    def close(self, shutdown_timeout: float = 0.0) -> bool:
        """Close every worker, waiting for each at most what is left of ``shutdown_timeout``
        since its queue was closed. True when every inference thread has exited."""
        return all([w.close(w.shutdown_time_left(shutdown_timeout)) for w in self.workers])

    def stuck(self, interval: float) -> tuple[bool, float | None]:
        """For the watchdog: (True if a worker's thread has died or one job has run longer
        than ``interval`` seconds, the longest-running job's seconds or None)."""
        now = time.monotonic()
        running = [now - s for w in self.workers if (s := w.running_since) is not None]
        longest = max(running, default=None)
        dead = not all(w.alive for w in self.workers)
        return dead or (longest is not None and longest > interval), longest
