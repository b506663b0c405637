"""Where a batch's auto requests run: the ``daemon`` engine (a running daemon, as a client).

An engine takes the images to do (:class:`Job`) and yields one :class:`Outcome` per image,
in the jobs' order: the auto reply read by :func:`~sam2_service.client.auto.parse_auto_response`
(every label with its whole mask, ``objectMasks``), or a :class:`Failure` with its error code.

:class:`DaemonEngine` keeps the daemon busy: one auto request in flight per device the
daemon has (``info``'s ``devices``), each on its own connection, and the image after them
sent ahead as an ``embed`` request on another connection, so its embedding is computed while
the current image's masks are generated, and its auto request finds it in the cache. (Tiled
requests embed per tile, so nothing is sent ahead for them.) A ``busy`` reply is retried a
few times. A lost daemon raises :class:`~sam2_service.client.ClientError`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..client import Client, ClientTimeout, ImageUnreadable, RequestFailed
from ..client.auto import AutoResult
from .inputs import InputImage

#: Seconds an engine waits for an auto reply beyond the daemon's ``autoTimeout``.
AUTO_WAIT_MARGIN_S = 30.0
#: Tries of an auto request the daemon answered ``busy`` (with 1, 2, 4... s between).
BUSY_TRIES = 5


@dataclass(frozen=True)
class Failure:
    """An image that failed: its ``path`` (relative name in the outputs), the error
    ``code`` (the daemon's wire code, e.g. ``image_decode``, ``image_too_large``; or
    ``image_unreadable``, ``timeout``) and the ``message``."""

    path: str
    code: str
    message: str


@dataclass(frozen=True)
class Job:
    """One image to segment: the input and the SHA-256 of its file's bytes."""

    image: InputImage
    sha256: str


@dataclass(frozen=True)
class Outcome:
    """An image's result: ``result`` (the auto reply) or ``failure``."""

    job: Job
    result: AutoResult | None
    failure: Failure | None


def failure_of(name: str, exc: BaseException) -> Failure:
    """The :class:`Failure` of an image whose request raised ``exc`` (a
    :class:`RequestFailed` keeps its code)."""
    if isinstance(exc, RequestFailed):
        return Failure(name, exc.code, exc.message)
    if isinstance(exc, ClientTimeout):
        return Failure(name, "timeout", str(exc))
    if isinstance(exc, ImageUnreadable):
        return Failure(name, "image_unreadable", str(exc))
    return Failure(name, "unreadable", f"{type(exc).__name__}: {exc}")


def auto_wait(info: dict[str, Any]) -> float | None:
    """Seconds to wait for an auto reply from the daemon of this ``info``: its
    ``limits.autoTimeout`` and :data:`AUTO_WAIT_MARGIN_S` (None without one)."""
    limits = info.get("limits")
    allowed = limits.get("autoTimeout") if isinstance(limits, dict) else None
    if isinstance(allowed, (int, float)) and not isinstance(allowed, bool) and allowed > 0:
        return float(allowed) + AUTO_WAIT_MARGIN_S
    return None


class DaemonEngine:
    """Auto requests through the daemon at ``socket_path`` (None: the default socket).

    Args:
        request: :meth:`Client.auto` keywords (settings, ``tile_shape``, ``halo``).
        timeout: seconds to wait per reply (None: the daemon's ``autoTimeout`` + 30 s).
    """

    name = "daemon"

    def __init__(self, request: dict[str, Any], socket_path: str | None = None,
                 timeout: float | None = None) -> None:
        self.request = {**request, "object_masks": True}
        self.socket_path = socket_path
        self.timeout = timeout
        self.info: dict[str, Any] = {}
        self._clients: queue.SimpleQueue[Client] = queue.SimpleQueue()
        self._all: list[Client] = []

    def open(self) -> dict[str, Any]:
        """Connect and ask ``info``; returns the model's identity (``model``, checkpoint
        file name) for the manifest.

        Raises:
            ClientError: no daemon answers.
        """
        client = self._client(60.0 if self.timeout is None else self.timeout)
        self.info = client.info()
        if self.timeout is None:
            client.timeout = auto_wait(self.info) or 600.0 + AUTO_WAIT_MARGIN_S
        self._clients.put(client)
        ckpt = self.info.get("checkpoint")
        return {"model": self.info.get("model"), "checkpoint": Path(ckpt).name if ckpt else None}

    @property
    def devices(self) -> int:
        """Devices the daemon has (``info``'s ``devices``; 1 without that field)."""
        return max(1, len(self.info.get("devices") or [None]))

    def _client(self, timeout: float | None = None) -> Client:
        client = Client(self.socket_path, timeout=timeout or self._timeout())
        self._all.append(client)
        return client

    def _timeout(self) -> float:
        return self.timeout or auto_wait(self.info) or 600.0 + AUTO_WAIT_MARGIN_S

    def _take(self) -> Client:
        try:
            return self._clients.get_nowait()
        except queue.Empty:
            return self._client()

    def _auto(self, job: Job) -> Outcome:
        """Read the file and run its auto request (worker thread)."""
        client = self._take()
        try:
            for attempt in range(BUSY_TRIES):
                try:
                    return Outcome(job, client.auto(str(job.image.path), **self.request), None)
                except RequestFailed as exc:
                    if exc.code != "busy" or attempt == BUSY_TRIES - 1:
                        raise
                    time.sleep(2 ** attempt)
            raise AssertionError("unreachable")
        except (RequestFailed, ImageUnreadable, ClientTimeout, OSError) as exc:
            return Outcome(job, None, failure_of(job.image.name, exc))
        finally:
            self._clients.put(client)

    def _embed(self, job: Job, client: Client) -> None:
        """Send the image ahead (prefetch thread); its failures are the auto request's."""
        try:
            client.embed(str(job.image.path))
        except (RequestFailed, ImageUnreadable, ClientTimeout, OSError):
            pass

    def run(self, jobs: Sequence[Job], cancel: threading.Event | None = None
            ) -> Iterator[Outcome]:
        """Outcomes of ``jobs`` in order, :attr:`devices` auto requests in flight and the
        next image embedded ahead. Once ``cancel`` is set no request is started; those in
        flight are still yielded.

        Raises:
            ClientError: the daemon was lost (not an image's error reply).
        """
        slots = self.devices
        ahead = self.request.get("tile_shape") is None
        prefetch_client = self._client() if ahead else None
        pending: deque[Future[Outcome]] = deque()
        with ThreadPoolExecutor(slots, "batch-auto") as autos, \
                ThreadPoolExecutor(1, "batch-embed") as embeds:
            def submit(k: int) -> None:
                if cancel is not None and cancel.is_set():
                    return
                if k < len(jobs):
                    pending.append(autos.submit(self._auto, jobs[k]))
                if ahead and k + slots < len(jobs):
                    embeds.submit(self._embed, jobs[k + slots], prefetch_client)

            for k in range(min(slots, len(jobs))):
                submit(k)
            k = 0
            while pending:
                outcome = pending.popleft().result()
                submit(k + slots)
                k += 1
                yield outcome

    def close(self) -> None:
        """Close every connection."""
        for c in self._all:
            c.close()
        self._all.clear()
