"""Every operation of the clients, written once, without I/O.

An operation is a generator of *steps*: it yields :class:`Send` (send this request, give me
its reply) and :class:`Work` (run this CPU-bound function, such as PNG encoding and hashing an
image, and give me its result), and returns the operation's result. Connecting yields
:class:`Pause` too (:func:`~.connection.connect_steps`). :class:`Operations`, the base of both
clients, turns each generator into a public method by handing it to ``_run``: the one thing a
transport writes, besides ``request`` (one request, one reply) and ``close``.
:class:`~.sync.Client` carries the steps out in the calling thread and returns the result;
:class:`~.aio.AsyncClient` awaits them (``Work`` in a worker thread), so its methods return
coroutines to await.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence, Union

import numpy as np

from ..wire.limits import DEFAULT_MAX_IMAGE_PIXELS
from .auto import AutoResult, build_auto_request, parse_auto_response
from .core import (
    DEFAULT_TIMEOUT,
    ImageInput,
    ImageMemo,
    ImageRef,
    PreparedImage,
    SegmentOptions,
    SegmentResult,
    build_embed_request,
    check_response,
    check_timeout,
    default_socket_path,
    image_dimensions,
    parse_segment_response,
)


@dataclass(frozen=True)
class Send:
    """Step: send ``message`` (a request object); the reply object is sent back."""

    message: dict[str, Any]


@dataclass(frozen=True)
class Work:
    """Step: run ``fn(*args)`` (CPU-bound, no I/O); its return value is sent back."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()

    def run(self) -> Any:
        """``fn(*args)``."""
        return self.fn(*self.args)


@dataclass(frozen=True)
class Pause:
    """Step: wait ``seconds`` (then None is sent back)."""

    seconds: float


Step = Union[Send, Work, Pause]
#: The steps of an operation; the generator's return value is the operation's result.
Steps = Generator[Step, Any, Any]


class Run:
    """A :data:`Steps` generator being carried out by a transport.

    ``step`` is what to do next while ``done`` is False; :meth:`send` hands back its outcome.
    Once the generator returns, ``done`` is True and ``result`` holds its value. Exceptions
    raised by the generator pass through :meth:`send` (and the constructor).
    """

    def __init__(self, steps: Steps) -> None:
        self._steps = steps
        self.done = False
        self.result: Any = None
        self.step: Step | None = None
        self.send(None)

    def send(self, value: Any) -> None:
        """Hand ``value`` (the reply, work result or None) to the generator; advance it."""
        try:
            self.step = self._steps.send(value)
        except StopIteration as stop:
            self.done, self.result, self.step = True, stop.value, None


def request_steps(message: dict[str, Any]) -> Steps:
    """One request whose reply is returned once checked (:func:`~.core.check_response`)."""
    return check_response((yield Send(message)))


def info_steps(memo: ImageMemo) -> Steps:
    """The info exchange; returns the reply, and keeps its ``limits.maxImagePixels`` in
    ``memo`` (the limit later images are held against)."""
    reply = yield from request_steps({"op": "info"})
    limits = reply.get("limits")
    limit = limits.get("maxImagePixels") if isinstance(limits, dict) else None
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        memo.max_image_pixels = limit
    return reply


def prepare_steps(memo: ImageMemo, image: ImageInput) -> Steps:
    """Returns ``image`` when it is an :class:`ImageRef`, else ``memo.prepare(image)`` (as
    :class:`Work`): a :class:`~.core.PreparedImage`, or
    :class:`~.core.ImageTooLargeError` from the header, before anything is decoded.

    While the daemon's pixel limit is unknown, an image over the default limit first asks
    ``info`` for it (this daemon may allow more); smaller images cost a header read only.
    """
    if isinstance(image, ImageRef):
        return image
    if memo.max_image_pixels is None:
        width, height = (image_dimensions(image) if isinstance(image, np.ndarray)  # its shape
                         else (yield Work(image_dimensions, (image,))))
        if width * height > DEFAULT_MAX_IMAGE_PIXELS:
            yield from info_steps(memo)
    return (yield Work(memo.prepare, (image,)))


def segment_steps(memo: ImageMemo, image: ImageInput, options: SegmentOptions, *,
                  reuse: bool = True, request_id: str | None = None) -> Steps:
    """The segment exchange; returns the :class:`~.core.SegmentResult`.

    With ``reuse``, an image ``memo`` knows goes as its ``imageId`` first; an ``unknown_image``
    reply makes it forget the id and the full image is sent. An :class:`ImageRef` is always
    sent by id (``unknown_image`` then raises). Raises what
    :func:`~.core.parse_segment_response` raises.
    """
    prepared = yield from prepare_steps(memo, image)
    if isinstance(prepared, ImageRef):
        return parse_segment_response((yield Send(options.request(prepared, request_id))))
    if reuse and memo.known(prepared.image_id):
        reply = yield Send(options.request(prepared.ref, request_id))
        if reply.get("code") != "unknown_image":
            return parse_segment_response(reply)
        memo.forget(prepared.image_id)
    result = parse_segment_response((yield Send(options.request(prepared, request_id))))
    memo.remember(result.image_id)
    return result


def embed_steps(memo: ImageMemo, image: str | os.PathLike | bytes | np.ndarray,
                request_id: str | None = None) -> Steps:
    """The embed exchange; returns the :class:`~.core.ImageRef`, remembered in ``memo``.

    Raises:
        RequestFailed: an error reply.
    """
    prepared: PreparedImage = yield from prepare_steps(memo, image)
    reply = yield from request_steps(build_embed_request(prepared, request_id))
    memo.remember(reply["imageId"])
    return ImageRef(reply["imageId"], reply["width"], reply["height"], bool(reply["cached"]))


def auto_steps(memo: ImageMemo, image: ImageInput, **kw: Any) -> Steps:
    """The auto exchange; ``kw`` are :func:`~.auto.build_auto_request`'s. Returns the
    :class:`~.auto.AutoResult`; raises what :func:`~.auto.parse_auto_response` raises."""
    prepared = yield from prepare_steps(memo, image)
    result = parse_auto_response((yield Send(build_auto_request(prepared, **kw))))
    memo.remember(result.raw.get("imageId"))
    return result


def release_steps(memo: ImageMemo, image: ImageRef | str) -> Steps:
    """The release exchange; returns True if the daemon had the embedding.

    Raises:
        RequestFailed: an error reply.
    """
    iid = image.image_id if isinstance(image, ImageRef) else image
    memo.forget(iid)
    return bool((yield from request_steps({"op": "release", "imageId": iid}))["released"])


class Operations:
    """What :class:`~.sync.Client` and :class:`~.aio.AsyncClient` share: their settings, their
    :class:`~.core.ImageMemo` and every operation. On ``AsyncClient`` each operation returns a
    coroutine of what it returns on ``Client``.

    Args:
        socket_path: the daemon's socket (default :func:`~.core.default_socket_path`).
        timeout: seconds to wait for connecting (a full accept queue is retried until then)
            and for each reply: a finite number > 0 (else ``ValueError``); it may be changed
            later (``client.timeout = 600``), and applies from the next request.

    Every operation raises :class:`~.core.RequestFailed` on an error reply (``untrusted_server``
    when the socket's server runs as another user, before anything is sent) and
    :class:`~.core.ClientError` when the daemon cannot be reached or sends a bad frame.
    """

    def __init__(self, socket_path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout
        self.memo = ImageMemo()

    @property
    def timeout(self) -> float:
        """Seconds to wait for connecting and for each reply."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = check_timeout(value)

    def _run(self, steps: Steps) -> Any:
        """Carry out ``steps`` and return (or, asyncio, give a coroutine of) their result."""
        raise NotImplementedError

    def ping(self) -> dict[str, Any]:
        """``{"op": "ping"}``: the reply object."""
        return self._run(request_steps({"op": "ping"}))

    def info(self) -> dict[str, Any]:
        """``{"op": "info"}``: model, checkpoint, weights, device, dtype, versions, limits
        (``limits.maxImagePixels`` is kept: images are held against it from then on)."""
        return self._run(info_steps(self.memo))

    def segment(self, image: ImageInput, *, reuse: bool = True, request_id: str | None = None,
                **options: Any) -> SegmentResult:
        """Segment ``image`` with a box and/or points.

        Args:
            image: a path, PNG/JPEG bytes, an HxW or HxWx3 uint8 RGB array, or an
                :class:`~.core.ImageRef` (always sent by id: ``unknown_image`` then raises).
            reuse: an image this client has sent before goes as its ``imageId``; if the
                daemon no longer has it (``unknown_image``) the image is resent at once.
            request_id: defaults to a fresh one.
            options: :class:`~.core.SegmentOptions`' keywords: ``bbox`` (x1, y1, x2, y2) XYXY
                pixels; ``points`` (x, y) or (x, y, label) pixels, label 1 foreground
                (default) or 0 background; and the protocol additions (docs/protocol.md; any
                of them makes the reply carry ``maskId``,
                :attr:`~.core.SegmentResult.mask_id`): ``encoding`` the wire encoding
                (``"raw"``, ``"rle"``, ``"png"``; the mask is decoded to the same (H, W) uint8
                array whichever), ``multimask`` SAM2's three candidates in
                ``result.candidates``, ``boxes`` a batched box prompt (one mask per box in
                ``result.masks``; ``mask`` is their union), ``mask_input`` the ``maskId`` of
                an earlier mask on this image to refine.

        Raises:
            TypeError: an unknown keyword (at the call, also on ``AsyncClient``).
            RequestFailed: an error reply (``.code``, ``.message``, ``.request_id``).
            ClientError: the daemon could not be reached or sent a bad reply.
        """
        return self._run(segment_steps(self.memo, image, SegmentOptions(**options),
                                       reuse=reuse, request_id=request_id))

    def embed(self, image: str | os.PathLike | bytes | np.ndarray,
              request_id: str | None = None) -> ImageRef:
        """``{"op": "embed"}``: have the daemon compute (or find) the image embedding now;
        returns the :class:`~.core.ImageRef` to segment it by id."""
        return self._run(embed_steps(self.memo, image, request_id))

    def auto(self, image: ImageInput, *, tile_shape: Sequence[int] | None = None,
             halo: Sequence[int] | None = None, request_id: str | None = None,
             **settings: Any) -> AutoResult:
        """``{"op": "auto"}``: every object of ``image`` as a label map.

        Args:
            image: as for :meth:`segment`; an :class:`~.core.ImageRef` goes by id.
            tile_shape, halo: (h, w) pixels, for tiling.
            settings: SAM2AutomaticMaskGenerator keywords (``points_per_side``,
                ``pred_iou_thresh``...; see :data:`~.auto.AUTO_KEYWORDS`); and
                ``object_masks=True`` for each label's whole mask (``maskRle`` in its entry).

        Returns:
            :class:`~.auto.AutoResult`; unpacks as ``labels, table`` (HxW uint16 numpy
            array, one dict per id).

        Raises:
            TypeError: an unknown setting. RequestFailed: an error reply; ClientError: no
            daemon or a bad reply.
        """
        return self._run(auto_steps(self.memo, image, tile_shape=tile_shape, halo=halo,
                                    request_id=request_id, **settings))

    def release(self, image: ImageRef | str) -> bool:
        """``{"op": "release"}``: drop the image's cached embedding; False if none was cached."""
        return self._run(release_steps(self.memo, image))
