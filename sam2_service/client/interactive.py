"""What an interactive front-end (the browser gateway, the napari plugin) needs from the client,
written once: latest-wins request tickets, image handles that embed an image once and embed it
again when the daemon has lost it, the protocol's point rule, a mask reply kept as the daemon's
PNG, and error text for a person.

Pure logic: nothing here opens a socket or touches a file. The requests themselves go through
:class:`~sam2_service.client.Client` or :class:`~sam2_service.client.AsyncClient`, whose calls
the front-end passes in (see :meth:`ImageHandle.run`).

Coordinates are the protocol's (docs/protocol.md): pixels of the image as stored, origin at the
top-left corner of the top-left pixel, x to the right (columns), y down (rows); always given as
(x, y), never (row, col).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, TypeVar, Union

import numpy as np

from .core import (
    ClientError,
    ImageRef,
    PointInput,
    PreparedImage,
    RequestFailed,
    build_segment_request,
    check_response,
)

T = TypeVar("T")

#: The error code of a request that named an ``imageId`` the daemon no longer has.
UNKNOWN_IMAGE = "unknown_image"


class Tickets:
    """Latest request wins: each request takes a ticket (:meth:`take`) when it is sent, and its
    reply is used only while that ticket is still the latest (:meth:`is_latest`); a reply to an
    older request is dropped, because a newer one is on its way.

    Anything else that makes outstanding replies stale (a new image, the prompts cleared) also
    takes a ticket. Tickets are increasing integers from 1; safe to share between threads.
    """

    def __init__(self) -> None:
        self._latest = 0
        self._lock = threading.Lock()

    @property
    def latest(self) -> int:
        """The latest ticket taken (0 before the first)."""
        return self._latest

    def take(self) -> int:
        """A new ticket, newer than every ticket taken before; it makes them stale."""
        with self._lock:
            self._latest += 1
            return self._latest

    def is_latest(self, ticket: int) -> bool:
        """True while no ticket has been taken after ``ticket``: its reply is the one to use."""
        return ticket == self._latest


def point_inside(x: float, y: float, width: int, height: int) -> bool:
    """Whether the point (x, y), in pixels, lies inside a ``width`` x ``height`` image by the
    protocol's rule for segment ``points``: finite, ``0 <= x <= width`` and
    ``0 <= y <= height`` (the right and bottom edges count). The daemon refuses any other
    point with ``invalid_request``."""
    return (math.isfinite(x) and math.isfinite(y)
            and 0 <= x <= width and 0 <= y <= height)


def pixel_inside(x: float, y: float, width: int, height: int) -> bool:
    """Whether (x, y) names a pixel of a ``width`` x ``height`` image, taken as a pixel index
    (column x, row y, as a click on a canvas gives ``floor`` of): ``0 <= x < width`` and
    ``0 <= y < height``. Stricter than :func:`point_inside`: every pixel index it accepts is a
    point the daemon accepts, but the right and bottom edges are not pixels."""
    return point_inside(x, y, width, height) and x < width and y < height


def array_key(array: np.ndarray) -> str:
    """A key for an image array's content: hex SHA-256 of its shape, dtype and bytes (C
    order). Equal for equal arrays, different as soon as one pixel differs, so an edited image
    gets a new key (and a new embedding) while an unchanged one keeps its own."""
    digest = hashlib.sha256(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


#: What an :class:`ImageHandle` embeds: file bytes, an array or a prepared image.
ImageSource = Union[bytes, np.ndarray, PreparedImage]


class ImageHandle:
    """An image a front-end works on: what to send (``source``) and, once the daemon has
    embedded it, its :class:`~sam2_service.client.ImageRef`, so requests send the ``imageId``
    instead of the image.

    :meth:`run` (blocking) and :meth:`arun` (asyncio) call ``call(ref)``; the image is embedded
    first when it has no ref yet, and embedded again, once, when the daemon answers
    ``unknown_image`` (evicted, released, or the daemon restarted). Not locked: two threads
    running one handle at once may embed it twice (harmless, the second is ``cached``).

    Args:
        source: what ``embed`` is given: PNG/JPEG bytes, an HxW or HxWx3 uint8 array, or a
            :class:`~sam2_service.client.PreparedImage`.
        ref: the image's ref when it is known to be embedded already (e.g. from an embed
            reply), else None.
    """

    def __init__(self, source: ImageSource, ref: ImageRef | None = None) -> None:
        self.source, self.ref = source, ref

    @property
    def image_id(self) -> str | None:
        """The daemon's ``imageId`` of the image, once embedded."""
        return None if self.ref is None else self.ref.image_id

    def run(self, call: Callable[[ImageRef], T], embed: Callable[[ImageSource], ImageRef]) -> T:
        """``call(ref)``, embedding with ``embed(source)`` first when needed and again after an
        ``unknown_image`` failure. Raises what ``call`` and ``embed`` raise (a second
        ``unknown_image`` too)."""
        if self.ref is None:
            self.ref = embed(self.source)
        try:
            return call(self.ref)
        except RequestFailed as exc:
            if not image_lost(exc):
                raise
        self.ref = embed(self.source)
        return call(self.ref)

    async def arun(self, call: Callable[[ImageRef], Awaitable[T]],
                   embed: Callable[[ImageSource], Awaitable[ImageRef]]) -> T:
        """:meth:`run` with coroutine functions ``call`` and ``embed``."""
        if self.ref is None:
            self.ref = await embed(self.source)
        try:
            return await call(self.ref)
        except RequestFailed as exc:
            if not image_lost(exc):
                raise
        self.ref = await embed(self.source)
        return await call(self.ref)


class ImageHandles:
    """:class:`ImageHandle` s of arrays, found by content (:func:`array_key`), at most
    ``entries`` kept (least recently used dropped): the same pixels reuse one handle and its
    embedding, whichever layer or slice they come from; edited pixels get a new handle, embedded
    by its first request. Safe to share between threads.
    """

    def __init__(self, entries: int = 32) -> None:
        self.entries = entries
        self._handles: OrderedDict[str, ImageHandle] = OrderedDict()
        self._lock = threading.Lock()

    def for_array(self, array: np.ndarray) -> ImageHandle:
        """The handle of ``array`` (HxW or HxWx3 uint8, what is sent); hashes it, so call it
        off a GUI thread for large images."""
        key = array_key(array)
        with self._lock:
            handle = self._handles.get(key) or ImageHandle(array)
            self._handles[key] = handle
            self._handles.move_to_end(key)
            while len(self._handles) > self.entries:
                self._handles.popitem(last=False)
        return handle

    def clear(self) -> None:
        """Forget every handle (e.g. connected to another daemon)."""
        with self._lock:
            self._handles.clear()

    def __len__(self) -> int:
        return len(self._handles)


def image_lost(exc: BaseException) -> bool:
    """True if ``exc`` says the daemon no longer has the image named by ``imageId``
    (:class:`~sam2_service.client.RequestFailed` with code ``unknown_image``)."""
    return isinstance(exc, RequestFailed) and exc.code == UNKNOWN_IMAGE


@dataclass(frozen=True)
class PngMask:
    """A segment reply whose mask stays the daemon's PNG (``maskEncoding: "png"``), not
    decoded: what a front-end that shows or forwards the PNG needs.

    Attributes:
        png: standard base64 of an 8-bit greyscale PNG (0 background, 255 foreground),
            ``width`` x ``height``, exactly as the daemon sent it (``maskPng``).
        width, height: the mask's size in pixels (the image's).
        score: SAM2's IoU prediction for the mask.
        inference_time_ms: the daemon's time for the request, ms.
        image_id: the image's ``imageId``.
        mask_id: the reply's ``maskId`` (send it as ``mask_input`` to refine the mask).
    """

    png: str
    width: int
    height: int
    score: float
    inference_time_ms: float
    image_id: str | None
    mask_id: str | None


def png_segment_request(ref: ImageRef, points: Iterable[PointInput] = (),
                        request_id: str | None = None, **options: Any) -> dict[str, Any]:
    """A segment request on an embedded image (sent by ``imageId``) asking for the mask as PNG.

    Args:
        ref: the image.
        points: (x, y) or (x, y, label) in pixels; label 1 foreground (default), 0 background.
        request_id: defaults to a fresh one.
        options: :func:`~sam2_service.client.build_segment_request`'s other keywords
            (``bbox``, ``multimask``, ``boxes``, ``mask_input``).
    """
    return build_segment_request(ref, points=points, request_id=request_id, encoding="png",
                                 **options)


def read_png_reply(reply: dict[str, Any]) -> PngMask:
    """The :class:`PngMask` of a reply to :func:`png_segment_request`.

    Raises:
        RequestFailed: the reply is an error response.
        ClientError: the reply has no PNG mask or no mask size.
    """
    check_response(reply)
    png = reply.get("maskPng")
    if not isinstance(png, str) or not png:
        raise ClientError("malformed segment reply: no maskPng (was maskEncoding \"png\" sent?)")
    try:
        return PngMask(png, int(reply["maskWidth"]), int(reply["maskHeight"]),
                       float(reply.get("score", 0.0)), float(reply.get("inferenceTimeMs", 0.0)),
                       reply.get("imageId"), reply.get("maskId"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ClientError(f"malformed segment reply: {exc!r}") from None


#: Short texts for error codes a person can act on (the rest show the daemon's message).
_CODE_TEXT = {
    "busy": "the daemon is busy (its queue is full); try again in a moment",
    "timeout": "the daemon did not answer in time (its queue was long); try again",
    "shutting_down": "the daemon is shutting down; start it again (`make run`) and retry",
    UNKNOWN_IMAGE: "the daemon no longer has the image; load it again",
}


def error_text(exc: BaseException) -> str:
    """A short message for a person about a failed request (no traceback).

    - :class:`~sam2_service.client.RequestFailed`: busy, timeout, shutting down and a lost
      image get a plain sentence; ``untrusted_server`` its own explanation; other codes
      ``"the daemon refused the request (<code>): <message>"``;
    - another :class:`~sam2_service.client.ClientError` or an ``OSError``:
      ``"cannot reach the daemon: ..."`` (with how to start it when nothing listens);
    - anything else: ``"unexpected error: <type>: <text>"``.
    """
    if isinstance(exc, RequestFailed):
        if exc.code in _CODE_TEXT:
            return _CODE_TEXT[exc.code]
        if exc.code == "untrusted_server":
            return exc.message
        return f"the daemon refused the request ({exc.code}): {exc.message}"
    if isinstance(exc, (ClientError, OSError)):
        return f"cannot reach the daemon: {exc}"
    return f"unexpected error: {type(exc).__name__}: {exc}"
