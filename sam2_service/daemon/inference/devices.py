"""One model per device (``--device cuda:0,cuda:1``, ``--device cuda:all``; issue 14): the
inference workers of the daemon and the rule that picks one for each request.

Each device has its own :class:`~sam2_service.daemon.inference.worker.InferenceWorker`: its model, its
inference thread, its queue (``--max-queue`` each) and its caches (``--cache-mb`` and
``--logits-cache-entries`` each). An embedding lives on the device that computed it, so a
request is sent where its image already is:

* ``imageId`` (or ``imageBase64`` whose ``imageId`` is computed first, off the event loop):
  the worker that keeps that image's embedding or one of its masks; else the worker an
  earlier request for the same image was just sent to (so two requests for one new image
  are not embedded twice); else
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
from typing import Any, AsyncIterator, Sequence

from ...wire.codecs import compute_image_id, decode_base64
from .worker import InferenceWorker


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
    async def worker_for(self, request: Any) -> AsyncIterator[InferenceWorker]:
        """The worker to run ``request`` on (a segment, embed or auto request), held as
        busy until the block ends. With several devices, ``imageBase64`` is decoded and
        hashed on a thread first (the worker does it again for its job).

        Raises:
            ImageDecodeError: ``imageBase64`` is not valid base64 (as from the worker).
        """
        if len(self.workers) == 1:
            yield self.workers[0]
            return
        image_id = getattr(request, "image_id", None)
        if image_id is None:
            image_id = await asyncio.to_thread(_image_id_of, request.image_base64)
        index = self.route(image_id)
        pending = self._pending.setdefault(image_id, [index, 0])
        pending[1] += 1
        self._active[index] += 1
        try:
            yield self.workers[index]
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

    def info(self) -> list[dict[str, Any]]:
        """``info``'s ``devices``: per worker its device, dtype, model load time, queue and
        embedding cache."""
        out = []
        for i, w in enumerate(self.workers):
            eng = w.engine
            out.append({
                "index": i, "device": eng.device if eng else None,
                "dtype": eng.precision if eng else None,
                "loadTimeMs": round(eng.load_time_ms, 1) if eng else None,
                "queue": {"waiting": w.waiting, "running": w.running_since is not None,
                          "requests": self._active[i]},
                "cache": w.cache_stats().info(),
            })
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


def _image_id_of(image_base64: str) -> str:
    """The ``imageId`` of base64 image text (run on a thread: large images take a while)."""
    return compute_image_id(decode_base64(image_base64))
