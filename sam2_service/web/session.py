"""One WebSocket session of the gateway: its image, its points, and the messages of the
browser protocol (docs/web.md).

A :class:`Session` reads the client's JSON messages one at a time (:meth:`Session.handle`) and
answers through a send callback. Clicks are answered at once with ``point_added``; a worker task
then asks the daemon for the mask of *all* the session's points. When clicks come faster than
the model, a reply for points that are no longer all the points is dropped and the worker asks
again, so the last click always gets its own result. :class:`ImageUsers` counts the sessions per
image, so the daemon's cached embedding is released when the last one goes.

Model requests of all sessions pass the shared :class:`~.upstream.Gate` (at most the daemon's
queue size in flight); a click beyond the daemon's ``maxPoints`` is refused here, keeping the
earlier points and their mask. Any exception while handling a message becomes an ``error``
message: the session goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections import Counter
from functools import partial
from typing import Any, Awaitable, Callable

import orjson

from ..client import AsyncClient, ClientError, ImageRef
from ..client.interactive import (
    ImageHandle,
    PngMask,
    Tickets,
    error_text,
    pixel_inside,
    png_segment_request,
    read_png_reply,
)
from ..wire.codecs import decode_base64, image_size
from ..wire.errors import ImageDecodeError, ImageTooLarge
from .config import WebConfig
from .upstream import Upstream, once_more

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class ProtocolError(Exception):
    """A client message the gateway cannot act on; its text goes back as an ``error`` message."""


class ImageUsers:
    """How many sessions use each image; the daemon's embedding is released at zero."""

    def __init__(self, client: AsyncClient, timeout: float = 120.0) -> None:
        self.client, self.timeout = client, timeout
        self._count: Counter[str] = Counter()

    def acquire(self, image_id: str) -> None:
        """One more session uses ``image_id``."""
        self._count[image_id] += 1

    async def drop(self, image_id: str) -> None:
        """One session fewer; the last one out releases the daemon's cached embedding."""
        self._count[image_id] -= 1
        if self._count[image_id] > 0:
            return
        del self._count[image_id]
        try:
            await once_more(partial(self.client.release, image_id), self.timeout)
        except ClientError as exc:  # the daemon is gone or restarted: nothing left to free
            log.info("could not release %s: %s", image_id[:12], exc)

    def users(self, image_id: str) -> int:
        """Sessions using ``image_id`` now."""
        return self._count.get(image_id, 0)


def _number(msg: dict[str, Any], key: str) -> float:
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"click needs a finite number '{key}' (image pixels), got {value!r}")
    return value


class Session:
    """One browser session. Call :meth:`start`, feed text messages to :meth:`handle`
    (False means the client asked to close), and :meth:`close` at the end."""

    def __init__(self, config: WebConfig, users: ImageUsers, send: Send,
                 upstream: Upstream | None = None, instance: str = "") -> None:
        self.session_id = str(uuid.uuid4())
        self.config, self.users, self._send = config, users, send
        self.upstream = upstream or Upstream()
        self.instance = instance  # the gateway's per-start id, echoed in session_created
        self.client = AsyncClient(config.socket_path, timeout=config.timeout)
        self.image: ImageHandle | None = None  # its source: the file bytes, as sent
        self.points: list[tuple[float, float, int]] = []
        self.tickets = Tickets()  # taken by init, click and reset: older results are dropped
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        """Send ``session_created`` and start the segmentation worker."""
        self._worker = asyncio.create_task(self._segment_loop())
        await self._send({"type": "session_created", "session_id": self.session_id,
                          "instance": self.instance})

    async def handle(self, text: str) -> bool:
        """Act on one client message; errors are answered, never raised. False: close."""
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            await self.error(f"message is not valid JSON: {exc}")
            return True
        kind = msg.get("type") if isinstance(msg, dict) else None
        handlers = {"init": self._init, "click": self._click, "reset": self._reset}
        handler = handlers.get(kind) if isinstance(kind, str) else None
        if kind == "close":
            return False
        if handler is None:
            await self.error(f"unknown message type {kind!r}; expected init, click, reset or close"
                             if isinstance(msg, dict) else "message must be a JSON object")
            return True
        try:
            await handler(msg)
        except ProtocolError as exc:
            await self.error(str(exc))
        except Exception as exc:  # a bug must not end the session without a word
            log.exception("session %s: %s message failed", self.session_id, kind)
            await self.error(f"the gateway failed on this {kind} message ({type(exc).__name__}: "
                             f"{exc}); the session goes on")
        return True

    async def error(self, message: str) -> None:
        """Send an ``error`` message; the session goes on."""
        await self._send({"type": "error", "message": message})

    async def close(self) -> None:
        """Stop the worker, close the daemon connection, give up the image."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        await self.client.close()
        await self._set_image(None)

    async def _set_image(self, image: ImageHandle | None) -> None:
        old, self.image = self.image, image
        if image is not None:
            self.users.acquire(image.image_id)
        if old is not None:
            await self.users.drop(old.image_id)

    def _decode_image(self, msg: dict[str, Any]) -> tuple[bytes, int, int]:
        text = msg.get("image")
        if not isinstance(text, str) or not text:
            raise ProtocolError("init needs 'image': a data:image/png or data:image/jpeg base64 "
                                "URL, or bare base64")
        try:
            data = decode_base64(text, field="image")
            width, height = image_size(data)
        except (ImageDecodeError, ImageTooLarge) as exc:  # every decoder error is one of these
            raise ProtocolError(f"cannot load the image: {exc.message}") from None
        if width * height > self.config.max_image_pixels:
            raise ProtocolError(f"image is {width}x{height} = {width * height} pixels; the limit is "
                                f"{self.config.max_image_pixels} (--max-image-pixels)")
        return data, width, height

    async def _init(self, msg: dict[str, Any]) -> None:
        self.points = []
        self.tickets.take()
        try:
            data, width, height = self._decode_image(msg)
        except ProtocolError:
            await self._set_image(None)
            raise
        try:
            self.upstream.learn(await once_more(self.client.info, self.config.timeout))
            ref = await self._embed(data)
        except ClientError as exc:
            await self._set_image(None)
            raise ProtocolError(f"image not loaded: {error_text(exc)}") from None
        except Exception:  # a bug (answered by handle's catch-all): no earlier image stays
            await self._set_image(None)
            raise
        await self._set_image(ImageHandle(data, ImageRef(ref.image_id, width, height)))
        await self._send({"type": "image_loaded", "width": width, "height": height,
                          "image_id": ref.image_id})

    async def _click(self, msg: dict[str, Any]) -> None:
        if self.image is None:
            raise ProtocolError("no image loaded: send {\"type\":\"init\",\"image\":...} first")
        x, y = _number(msg, "x"), _number(msg, "y")
        label = msg.get("label", 1)
        if label not in (0, 1) or isinstance(label, (bool, float)):
            raise ProtocolError(f"click 'label' must be 1 (foreground) or 0 (background), got {label!r}")
        w, h = self.image.ref.width, self.image.ref.height
        if not pixel_inside(x, y, w, h):  # a click names a pixel (docs/web.md)
            raise ProtocolError(f"point ({x}, {y}) is outside the {w}x{h} image "
                                f"(0 <= x < {w}, 0 <= y < {h})")
        limit = self.upstream.max_points
        if limit is not None and len(self.points) >= limit:  # the points and mask stay
            raise ProtocolError(f"click refused: this object has {len(self.points)} points, the "
                                f"daemon's limit (maxPoints {limit}, its --max-points); reset "
                                "the points or start a new object")
        self.points.append((x, y, label))
        self.tickets.take()
        await self._send({"type": "point_added", "x": x, "y": y, "label": label,
                          "total_points": len(self.points)})
        self._wake.set()

    async def _reset(self, msg: dict[str, Any]) -> None:
        self.points = []
        self.tickets.take()
        await self._send({"type": "points_cleared"})

    async def _model(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()`` (a model request) through the shared gate, once more if its connection
        failed (the daemon closes idle connections), never after a time-out."""
        async with self.upstream.gate.slot(self.config.timeout):
            return await once_more(call, self.config.timeout)

    async def _embed(self, data: bytes) -> ImageRef:
        """The daemon's embedding of the image bytes ``data`` (hashed once, here)."""
        return await self._model(partial(self.client.embed, data))

    async def _segment_png(self, points: list[tuple[float, float, int]], ref: ImageRef) -> PngMask:
        """The mask of ``points`` on the embedded image, as the daemon's PNG."""
        request = png_segment_request(ref, points)
        return read_png_reply(await self._model(partial(self.client.request, request)))

    async def _segment_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            image, points, ticket = self.image, list(self.points), self.tickets.latest
            if image is None or not points:
                continue
            try:
                result = await image.arun(partial(self._segment_png, points), self._embed)
            except ClientError as exc:
                if self.tickets.is_latest(ticket):
                    await self.error(f"segmentation failed: {error_text(exc)}")
                continue
            except Exception as exc:  # a bug here must not silently stop all later results
                log.exception("session %s: segment failed", self.session_id)
                await self.error(f"segmentation failed in the gateway: {exc!r}")
                continue
            if self.tickets.is_latest(ticket):  # else a newer click woke us again
                await self._send({"type": "segmentation_result", "mask": result.png,
                                  "score": result.score, "num_points": len(points),
                                  "inference_time_ms": result.inference_time_ms})
