"""Accepting connections without falling over when file descriptors run out.

asyncio's own server logs a full traceback for every ``accept()`` that fails with
``EMFILE``/``ENFILE`` (under ``prlimit --nofile=64`` and 200 idle clients: 700,000 of them,
and a fresh client waited 240 s). :func:`accept_loop` accepts with ``loop.sock_accept``
instead: out of descriptors, it stops accepting for :data:`ACCEPT_BACKOFF_S` and logs one
rate-limited warning; beyond ``max_connections`` open connections a new one is closed at
once (logged, rate-limited). :func:`raise_nofile_limit` lifts the soft descriptor limit to
the hard one at start.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
import time
from typing import Any, Awaitable, Callable

from ..ops.logs import event

log = logging.getLogger("sam2_service.server")

#: Seconds without accepting after ``accept()`` found no free descriptor.
ACCEPT_BACKOFF_S = 0.25
#: Seconds between two warnings of the same kind (the ones between are counted).
WARN_INTERVAL_S = 10.0
#: ``accept()`` errors meaning "no descriptor or memory for the new socket".
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: ``accept()`` errors about one pending connection only (it went away): accept the next.
TRANSIENT = frozenset({errno.ECONNABORTED, errno.EINTR, errno.EAGAIN, errno.EPROTO, errno.EPERM})
#: macOS refuses a soft limit above OPEN_MAX (10240) even when the hard limit is unlimited.
DARWIN_OPEN_MAX = 10240


class RateLimitedWarning:
    """A warning logged at most once per ``interval`` seconds; the occurrences in between
    are counted and reported with the next one as ``suppressed``."""

    def __init__(self, message: str, interval: float = WARN_INTERVAL_S) -> None:
        self.message = message
        self.interval = interval
        self._last = float("-inf")
        self._suppressed = 0

    def __call__(self, **fields: Any) -> bool:
        """Log (or count) one occurrence; returns True if it was logged."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return False
        event(log, self.message, logging.WARNING, suppressed=self._suppressed, **fields)
        self._last, self._suppressed = now, 0
        return True


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (capped at OPEN_MAX on macOS),
    so that many clients do not run the daemon out of descriptors at the default soft limit
    (often 1024). Logs the limit; returns (soft before, soft after). Never raises: if the
    limit cannot be changed (no ``resource`` module, refused), it is left as it is."""
    try:
        import resource
    except ImportError:  # not POSIX
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if sys.platform == "darwin":
        target = min(hard, DARWIN_OPEN_MAX) if hard != resource.RLIM_INFINITY else DARWIN_OPEN_MAX
    new = soft
    if soft != resource.RLIM_INFINITY and (target == resource.RLIM_INFINITY or target > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            new = target
        except (ValueError, OSError) as exc:
            event(log, "Could not raise the open-file limit", logging.WARNING, soft=soft,
                  hard=hard, error=str(exc))
    event(log, "Open-file limit", before=soft, soft=new, hard=hard)
    return soft, new


async def accept_loop(sock: socket.socket, handle: Callable[[socket.socket], Awaitable[None]],
                      max_connections: int) -> None:
    """Accept connections on the listening ``sock`` until cancelled, each served by a new
    task running ``handle(conn)``.

    Args:
        sock: a listening Unix stream socket (made non-blocking here).
        handle: serves one accepted socket (it owns and closes it).
        max_connections: connections open at once (tasks of ``handle`` not yet done); one
            more is closed at once.

    Out of descriptors (``EMFILE``/``ENFILE``/``ENOBUFS``/``ENOMEM``), accepting pauses for
    :data:`ACCEPT_BACKOFF_S` and one rate-limited warning is logged; pending clients wait in
    the listen backlog meanwhile. Other errors of ``accept()`` itself are logged and the
    loop goes on after the same pause.
    """
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    tasks: set[asyncio.Task] = set()
    no_fds = RateLimitedWarning("Out of file descriptors: not accepting connections for a moment")
    too_many = RateLimitedWarning("Refused connection: --max-connections reached")
    failed = RateLimitedWarning("accept() failed")
    while True:
        try:
            conn, _ = await loop.sock_accept(sock)
        except OSError as exc:
            if exc.errno in TRANSIENT:
                continue
            if exc.errno in OUT_OF_RESOURCES:
                no_fds(error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                       openConnections=len(tasks), backoffS=ACCEPT_BACKOFF_S)
            else:
                failed(error=str(exc))
            await asyncio.sleep(ACCEPT_BACKOFF_S)
            continue
        if len(tasks) >= max_connections:
            conn.close()
            too_many(maxConnections=max_connections)
        else:
            task = loop.create_task(handle(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0)  # sock_accept does not yield while clients are pending
