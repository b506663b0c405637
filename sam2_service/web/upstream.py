"""The gateway's side of the daemon: when to call again, how many model requests to have in
flight, what the daemon's limits are, and the short probe behind ``/health``.

- :func:`once_more`: a request whose connection failed is sent once more on a new connection
  (the daemon closes connections idle for its ``--idle-timeout``), but never after a time-out
  (a stopped daemon would make every click wait twice) and never after a refusal.
- :class:`Gate`: at most the daemon's ``queue.maxQueue`` model requests (embed, segment) of all
  sessions in flight at once; the others wait here instead of being answered ``busy``.
- :class:`Upstream`: the gate and the daemon's ``limits.maxPoints``, both learned from each
  ``info`` reply (:meth:`Upstream.learn`).
- :func:`probe`: the daemon's ``info`` on a connection of its own, within a short time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from ..client import AsyncClient, ClientError, ClientTimeout, RequestFailed
from ..client.interactive import error_text

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The daemon's default ``--max-queue``: the gate's size until an ``info`` says otherwise.
DEFAULT_MAX_QUEUE = 8


def timed_out(exc: BaseException, elapsed: float, timeout: float) -> bool:
    """Whether the failed request ``exc`` ran out of time: it took ``timeout`` seconds or
    more, or it is the client's :class:`~sam2_service.client.ClientTimeout`."""
    return elapsed >= timeout or isinstance(exc, ClientTimeout)


async def once_more(call: Callable[[], Awaitable[T]], timeout: float) -> T:
    """``call()``, and once more if its connection failed: not after a refusal
    (:class:`~sam2_service.client.RequestFailed`), not after a time-out (``timeout`` is the
    client's). Raises what the last call raised."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        return await call()
    except RequestFailed:
        raise
    except ClientError as exc:
        if timed_out(exc, loop.time() - started, timeout):
            raise
        log.info("daemon connection failed (%s); trying once more on a new one", exc)
    return await call()


class Gate:
    """At most :attr:`size` holders at once (resizable; a smaller size takes effect as
    holders leave). The asyncio counterpart of a semaphore whose size can change."""

    def __init__(self, size: int = DEFAULT_MAX_QUEUE) -> None:
        self.size = size
        self.busy = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def slot(self, timeout: float) -> AsyncIterator[None]:
        """Hold one place while the block runs; wait at most ``timeout`` seconds for it.

        Raises:
            ClientTimeout: no place came free within ``timeout`` (so it
                counts as a time-out and is not tried again).
        """
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.busy < self.size),
                                       timeout)
            except asyncio.TimeoutError:
                raise ClientTimeout(f"no reply within {timeout} s: the daemon's queue stayed "
                                  "full") from None
            self.busy += 1
        try:
            yield
        finally:
            async with self._changed:
                self.busy -= 1
                self._changed.notify_all()


class Upstream:
    """What all sessions share about the daemon: the :class:`Gate` of model requests and
    the daemon's point limit (None until an ``info`` reply told it)."""

    def __init__(self) -> None:
        self.gate = Gate()
        self.max_points: int | None = None

    def learn(self, info: dict[str, Any]) -> None:
        """Take ``limits.maxPoints`` and ``queue.maxQueue`` from an ``info`` reply."""
        limits, queue = info.get("limits"), info.get("queue")
        points = limits.get("maxPoints") if isinstance(limits, dict) else None
        size = queue.get("maxQueue") if isinstance(queue, dict) else None
        if isinstance(points, int) and not isinstance(points, bool) and points > 0:
            self.max_points = points
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            self.gate.size = size


async def probe(socket_path: str, timeout: float,
                upstream: Upstream | None = None) -> tuple[bool, dict[str, Any]]:
    """``(True, info)`` from the daemon's ``info`` on a new connection, or ``(False,
    {"error": ...})`` when it fails or takes longer than ``timeout`` seconds (connecting
    included). A fresh connection each time: none is left to go stale between probes."""
    client = AsyncClient(socket_path, timeout=timeout)
    try:
        info = await asyncio.wait_for(client.info(), timeout)
    except asyncio.TimeoutError:
        return False, {"error": f"cannot reach the daemon: no reply within {timeout} s "
                                "(--health-timeout); is it stopped or overloaded?"}
    except ClientError as exc:
        return False, {"error": error_text(exc)}
    finally:
        await client.close()
    info.pop("requestId", None)
    if upstream is not None:
        upstream.learn(info)
    return True, info
