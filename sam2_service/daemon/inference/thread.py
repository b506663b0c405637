"""The inference thread: one dedicated thread running jobs in arrival order.

:class:`InferenceThread` owns the queue and the thread, with no model in it: jobs wait in a
bounded queue (``max_queue``; beyond it :class:`~sam2_service.wire.errors.Busy` at once), each
with a deadline (:class:`~sam2_service.wire.errors.RequestTimeout`); a job whose caller has gone
is dropped before it starts, and one already running is finished and its result discarded. On
shutdown the waiting jobs get :class:`~sam2_service.wire.errors.ShuttingDown`. Each job's
wait for the thread (its queue time) and run time are measured here, once, and come back
with its result (:class:`JobResult`).
:class:`sam2_service.daemon.inference.worker.InferenceWorker` puts the model's jobs on it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from ...wire.errors import Busy, RequestTimeout, ServiceError, ShuttingDown

T = TypeVar("T")


@dataclass(eq=False)
class _Job:
    fn: Callable[[], Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() seconds
    state: str = "waiting"  # -> running | dropped
    #: ``time.perf_counter()`` when queued, when it started and ended on the thread.
    submitted: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    finished: float = 0.0
    #: The failure's traceback as raised on the inference thread (not the loop's frames).
    thread_tb: Any = None


@dataclass(frozen=True)
class JobResult(Generic[T]):
    """What :meth:`InferenceThread.call` returns: the job's return value, the ms it waited
    in the queue for the inference thread (``queue_ms``: from :meth:`~InferenceThread.call`
    to its start on the thread) and the ms it ran there (``run_ms``)."""

    value: T
    queue_ms: float
    run_ms: float


class InferenceThread:
    """Runs jobs on one thread, in arrival order, at most ``max_queue`` waiting.

    Args:
        max_queue: most jobs waiting (not yet started); more raise :class:`Busy`.
    """

    def __init__(self, max_queue: int = 8) -> None:
        self.max_queue = max_queue
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
            job.finished = time.perf_counter()
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
    def in_flight(self) -> int:
        """Jobs accepted and not yet finished: :attr:`waiting`, plus 1 while one runs (for
        :class:`sam2_service.daemon.inference.devices.DevicePool`'s choice of the least-loaded device)."""
        with self._cond:
            return self._waiting + (self._running is not None)

    @property
    def alive(self) -> bool:
        """True while the inference thread runs."""
        return self._thread.is_alive()

    async def call(self, fn: Callable[..., T], *args: Any, deadline: float | None = None
                   ) -> JobResult[T]:
        """Run ``fn(*args)`` on the inference thread and await its result.

        Args:
            deadline: ``time.monotonic()`` by which the result must be here, or None.

        Returns:
            ``fn``'s return value with the job's queue and run times, ms (:class:`JobResult`).

        Raises:
            Busy: ``max_queue`` jobs already wait.
            ShuttingDown: the worker is closed, or was closed while the job waited.
            RequestTimeout: the deadline passed (a running job is finished, its result dropped).
            asyncio.CancelledError: the caller was cancelled (its job is dropped likewise).
        """
        loop = asyncio.get_running_loop()
        job = _Job(functools.partial(fn, *args), loop.create_future(), loop,
                   float("inf") if deadline is None else deadline)
        self._enqueue(job)
        del fn, args  # the job holds them; the frame must not (see below)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            value = await asyncio.wait_for(asyncio.shield(job.future), timeout)
            return JobResult(value, (job.started - job.submitted) * 1000,
                             (job.finished - job.started) * 1000)
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

    def _enqueue(self, job: _Job) -> None:
        """Queue ``job`` for the thread, or raise :class:`ShuttingDown` / :class:`Busy`."""
        with self._cond:
            if self._closed:
                raise ShuttingDown("the daemon is shutting down")
            if self._waiting >= self.max_queue:
                raise Busy(f"{self._waiting} requests already wait for the model "
                           f"(max queue {self.max_queue}); try again shortly")
            self._queue.append(job)
            self._waiting += 1
            self._cond.notify()

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
        caller must leave with ``os._exit`` (:func:`sam2_service.daemon.serving.server.run`)."""
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


def _settle(future: asyncio.Future, outcome: tuple[bool, Any]) -> None:
    """Set ``future``'s result or exception unless its waiter has gone (cancelled)."""
    if future.done():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
