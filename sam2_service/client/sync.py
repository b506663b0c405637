"""The blocking transport: :class:`Client` carries :mod:`.core`'s requests over one socket.

Safe to share between threads: a lock makes each request and its reply one exchange, so every
thread gets its own reply.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Iterable, Sequence

import numpy as np

from ..wire.errors import ServiceError
from ..wire.frames import FrameDecoder, encode_message
from ..wire.peer import peer_uid
from .auto import AutoResult, auto_steps
from .core import (
    CLIENT_MAX_FRAME_BYTES,
    CONNECT_RETRY_S,
    DEFAULT_TIMEOUT,
    RECV_CHUNK,
    ClientError,
    ImageInput,
    ImageMemo,
    ImageRef,
    PointInput,
    SegmentResult,
    Steps,
    check_response,
    check_server_uid,
    connect_failed,
    decode_reply,
    default_socket_path,
    embed_steps,
    queue_stayed_full,
    release_steps,
    segment_steps,
)


class Client:
    """Blocking client; one connection, reused for every request until :meth:`close`.

    Args:
        socket_path: the daemon's socket (default :func:`~.core.default_socket_path`).
        timeout: seconds to wait for connecting (a full accept queue is retried until then)
            and for each reply.

    Every method raises :class:`~.core.RequestFailed` on an error reply (``untrusted_server``
    when the socket's server runs as another user, before anything is sent) and
    :class:`~.core.ClientError` when the daemon cannot be reached or sends a bad frame.
    """

    def __init__(self, socket_path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder(CLIENT_MAX_FRAME_BYTES)
        self._lock = threading.RLock()
        self.memo = ImageMemo()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = _connect_retrying(self.socket_path, self.timeout)
            try:
                check_server_uid(peer_uid(sock), self.socket_path)
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request object and return the reply object (error replies included)."""
        with self._lock:
            sock = self._connect()
            try:
                sock.sendall(encode_message(message))
                while (payload := self._decoder.next_frame()) is None:
                    data = sock.recv(RECV_CHUNK)
                    if not data:
                        raise ClientError("daemon closed the connection before replying")
                    self._decoder.feed(data)
            except (OSError, ServiceError) as exc:
                self.close()
                if isinstance(exc, socket.timeout):
                    raise ClientError(f"no reply within {self.timeout} s") from None
                raise ClientError(f"connection to daemon failed: {exc}") from None
            except ClientError:
                self.close()
                raise
        return decode_reply(payload)

    def _drive(self, steps: Steps) -> Any:
        try:
            message = next(steps)
            while True:
                message = steps.send(self.request(message))
        except StopIteration as done:
            return done.value

    def ping(self) -> dict[str, Any]:
        """``{"op": "ping"}``; raises :class:`~.core.RequestFailed` on an error reply."""
        return check_response(self.request({"op": "ping"}))

    def info(self) -> dict[str, Any]:
        """``{"op": "info"}``: model, checkpoint, weights, device, dtype, versions."""
        return check_response(self.request({"op": "info"}))

    def segment(self, image: ImageInput, *, bbox: Sequence[float] | None = None,
                points: Iterable[PointInput] = (), request_id: str | None = None,
                reuse: bool = True, encoding: str | None = None, multimask: bool = False,
                boxes: Iterable[Sequence[float]] | None = None,
                mask_input: str | None = None) -> SegmentResult:
        """Segment ``image`` with a box and/or points (see :func:`~.core.build_segment_request`).

        With ``reuse``, an image this client has sent before goes as its ``imageId``; if
        the daemon no longer has it (``unknown_image``) the image is resent at once. An
        :class:`~.core.ImageRef` is always sent by id (``unknown_image`` then raises).

        Issue 13 options (docs/protocol.md, "Protocol additions"; any of them makes the reply
        carry ``maskId``, :attr:`~.core.SegmentResult.mask_id`): ``encoding`` the wire encoding
        (``"raw"``, ``"rle"``, ``"png"``; the mask is decoded to the same (H, W) uint8 array
        whichever), ``multimask`` SAM2's three candidates in ``result.candidates``, ``boxes``
        a batched box prompt (one mask per box in ``result.masks``; ``mask`` is their union),
        ``mask_input`` the ``maskId`` of an earlier mask on this image to refine.

        Raises:
            RequestFailed: an error reply (``.code``, ``.message``, ``.request_id``).
            ClientError: the daemon could not be reached or sent a bad reply.
        """
        prepared = image if isinstance(image, ImageRef) else self.memo.prepare(image)
        return self._drive(segment_steps(self.memo, prepared, reuse=reuse, bbox=bbox,
                                         points=points, request_id=request_id, encoding=encoding,
                                         multimask=multimask, boxes=boxes,
                                         mask_input=mask_input))

    def embed(self, image: str | os.PathLike | bytes | np.ndarray,
              request_id: str | None = None) -> ImageRef:
        """``{"op": "embed"}``: have the daemon compute (or find) the image embedding now;
        returns the :class:`~.core.ImageRef` to segment it by id."""
        return self._drive(embed_steps(self.memo, self.memo.prepare(image), request_id))

    def auto(self, image: ImageInput, *, tile_shape: Sequence[int] | None = None,
             halo: Sequence[int] | None = None, request_id: str | None = None,
             **settings: Any) -> AutoResult:
        """``{"op": "auto"}``: every object of ``image`` as a label map.

        Args:
            image: as for :meth:`segment`; an :class:`~.core.ImageRef` goes by id.
            tile_shape, halo: (h, w) pixels, for tiling.
            settings: SAM2AutomaticMaskGenerator keywords (``points_per_side``,
                ``pred_iou_thresh``...; see :data:`~.auto.AUTO_KEYWORDS`).

        Returns:
            :class:`~.auto.AutoResult`; unpacks as ``labels, table`` (HxW uint16 numpy
            array, one dict per id).

        Raises:
            RequestFailed: an error reply; ClientError: no daemon or a bad reply.
        """
        prepared = image if isinstance(image, ImageRef) else self.memo.prepare(image)
        return self._drive(auto_steps(self.memo, prepared, tile_shape=tile_shape, halo=halo,
                                      request_id=request_id, **settings))

    def release(self, image: ImageRef | str) -> bool:
        """``{"op": "release"}``: drop the image's cached embedding; False if none was cached."""
        return self._drive(release_steps(self.memo, image))

    def close(self) -> None:
        """Close the connection (a later request reconnects)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
                self._decoder = FrameDecoder(CLIENT_MAX_FRAME_BYTES)


def _connect_retrying(path: str, timeout: float) -> socket.socket:
    """A socket connected to ``path``; EAGAIN (the server's accept queue is full) is retried
    until ``timeout`` seconds have passed.

    Raises:
        ClientError: the connect failed, or the queue stayed full.
    """
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise queue_stayed_full(path, timeout) from None
            time.sleep(CONNECT_RETRY_S)
        except OSError as exc:
            sock.close()
            raise connect_failed(path, exc) from None
