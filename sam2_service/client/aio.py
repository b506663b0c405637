"""The asyncio transport: :class:`AsyncClient` carries :mod:`.core`'s requests over one
connection. An :class:`asyncio.Lock` makes each request and its reply one exchange, so
concurrent callers each get their own reply.
"""

from __future__ import annotations

import asyncio
import os
import socket
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

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class AsyncClient:
    """asyncio client with the same methods as :class:`~.sync.Client`, as coroutines.

    Args:
        socket_path: the daemon's socket (default :func:`~.core.default_socket_path`).
        timeout: seconds to wait for connecting (a full accept queue is retried until then)
            and for each reply.
    """

    def __init__(self, socket_path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout = timeout
        self._streams: Streams | None = None
        self._decoder = FrameDecoder(CLIENT_MAX_FRAME_BYTES)
        self._lock = asyncio.Lock()
        self.memo = ImageMemo()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _connect(self) -> Streams:
        if self._streams is None:
            sock = await _connect_retrying(self.socket_path, self.timeout)
            try:
                check_server_uid(peer_uid(sock), self.socket_path)
                self._streams = await asyncio.open_unix_connection(sock=sock, limit=RECV_CHUNK)
            except BaseException:
                sock.close()
                raise
        return self._streams

    async def _exchange(self, message: dict[str, Any]) -> bytes:
        reader, writer = await self._connect()
        writer.write(encode_message(message))
        await writer.drain()
        while (payload := self._decoder.next_frame()) is None:
            data = await reader.read(RECV_CHUNK)
            if not data:
                raise ClientError("daemon closed the connection before replying")
            self._decoder.feed(data)
        return payload

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request object and return the reply object (error replies included).

        Raises:
            RequestFailed: ``untrusted_server`` (the socket's server runs as another user).
            ClientError: the daemon could not be reached, hung up, or sent a bad frame.
        """
        async with self._lock:
            try:
                await self._connect()  # its own deadline: a full accept queue is retried
                payload = await asyncio.wait_for(self._exchange(message), self.timeout)
            except asyncio.TimeoutError:
                await self.close()
                raise ClientError(f"no reply within {self.timeout} s") from None
            except (OSError, ServiceError) as exc:
                await self.close()
                raise ClientError(f"connection to daemon failed: {exc}") from None
            except ClientError:
                await self.close()
                raise
        return decode_reply(payload)

    async def _drive(self, steps: Steps) -> Any:
        try:
            message = next(steps)
            while True:
                message = steps.send(await self.request(message))
        except StopIteration as done:
            return done.value

    async def ping(self) -> dict[str, Any]:
        """``{"op": "ping"}``."""
        return check_response(await self.request({"op": "ping"}))

    async def info(self) -> dict[str, Any]:
        """``{"op": "info"}``."""
        return check_response(await self.request({"op": "info"}))

    async def segment(self, image: ImageInput, *, bbox: Sequence[float] | None = None,
                      points: Iterable[PointInput] = (), request_id: str | None = None,
                      reuse: bool = True, encoding: str | None = None, multimask: bool = False,
                      boxes: Iterable[Sequence[float]] | None = None,
                      mask_input: str | None = None) -> SegmentResult:
        """:meth:`Client.segment <.sync.Client.segment>` as a coroutine; PNG encoding and
        hashing run in a thread."""
        prepared = (image if isinstance(image, ImageRef)
                    else await asyncio.to_thread(self.memo.prepare, image))
        return await self._drive(segment_steps(self.memo, prepared, reuse=reuse, bbox=bbox,
                                               points=points, request_id=request_id,
                                               encoding=encoding, multimask=multimask,
                                               boxes=boxes, mask_input=mask_input))

    async def embed(self, image: str | os.PathLike | bytes | np.ndarray,
                    request_id: str | None = None) -> ImageRef:
        """:meth:`Client.embed <.sync.Client.embed>` as a coroutine."""
        prepared = await asyncio.to_thread(self.memo.prepare, image)
        return await self._drive(embed_steps(self.memo, prepared, request_id))

    async def auto(self, image: ImageInput, *, tile_shape: Sequence[int] | None = None,
                   halo: Sequence[int] | None = None, request_id: str | None = None,
                   **settings: Any) -> AutoResult:
        """:meth:`Client.auto <.sync.Client.auto>` as a coroutine."""
        prepared = (image if isinstance(image, ImageRef)
                    else await asyncio.to_thread(self.memo.prepare, image))
        return await self._drive(auto_steps(self.memo, prepared, tile_shape=tile_shape,
                                            halo=halo, request_id=request_id, **settings))

    async def release(self, image: ImageRef | str) -> bool:
        """:meth:`Client.release <.sync.Client.release>` as a coroutine."""
        return await self._drive(release_steps(self.memo, image))

    async def close(self) -> None:
        """Close the connection (a later request reconnects)."""
        if self._streams is not None:
            _, writer = self._streams
            self._streams = None
            self._decoder = FrameDecoder(CLIENT_MAX_FRAME_BYTES)
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


async def _connect_retrying(path: str, timeout: float) -> socket.socket:
    """A non-blocking socket connected to ``path``; EAGAIN (the server's accept queue is full)
    is retried until ``timeout`` seconds have passed.

    The connect is done here, not by :func:`asyncio.open_unix_connection`: asyncio takes a Unix
    connect's EAGAIN for "in progress", waits for the socket to be writable and then hands back
    a socket that was never connected (the first write fails with EINVAL). A Unix-socket connect
    does not block, so calling it on the event loop's thread is fine.

    Raises:
        ClientError: the connect failed, or the queue stayed full.
    """
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise queue_stayed_full(path, timeout) from None
            await asyncio.sleep(CONNECT_RETRY_S)
        except OSError as exc:
            sock.close()
            raise connect_failed(path, exc) from None
