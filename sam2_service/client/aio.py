"""The asyncio transport: :class:`AsyncClient` carries :mod:`.ops`' steps over one connection,
awaiting each (CPU-bound work such as PNG encoding and hashing runs in a worker thread).

An :class:`asyncio.Lock` makes each request and its reply one exchange, so concurrent callers
each get their own reply.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..wire.errors import ServiceError
from ..wire.frames import encode_message
from .connection import RECV_CHUNK, ReplyDecoder, connect_steps, exchange_failed
from .core import DEFAULT_TIMEOUT, ClientError, decode_reply
from .ops import Operations, Pause, Run, Send, Steps

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class AsyncClient(Operations):
    """asyncio client with the same operations as :class:`~.sync.Client` (documented by
    :class:`~.ops.Operations`); each returns a coroutine to await, which raises what
    ``Client``'s raises.

    Args:
        socket_path, timeout: the daemon's socket and the seconds to wait for connecting and
            for each reply, as for :class:`~.ops.Operations`.
    """

    def __init__(self, socket_path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(socket_path, timeout)
        self._streams: Streams | None = None
        self._decoder = ReplyDecoder()
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _connect(self) -> Streams:
        if self._streams is None:
            sock = await self._run(connect_steps(self.socket_path, self.timeout, 0.0))
            try:
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
            self._decoder.feed(await reader.read(RECV_CHUNK))
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
            except (asyncio.TimeoutError, OSError, ServiceError, ClientError) as exc:
                await self.close()
                raise exchange_failed(exc, self.timeout) from None
        return decode_reply(payload)

    async def send(self, message: dict[str, Any]) -> None:
        """As :meth:`Client.send <sam2_service.client.sync.Client.send>`."""
        async with self._lock:
            try:
                _, writer = await self._connect()
                writer.write(encode_message(message))
                await asyncio.wait_for(writer.drain(), self.timeout)
            except (asyncio.TimeoutError, OSError, ServiceError, ClientError) as exc:
                await self.close()
                raise exchange_failed(exc, self.timeout) from None

    async def receive(self) -> dict[str, Any]:
        """As :meth:`Client.receive <sam2_service.client.sync.Client.receive>`."""
        async with self._lock:
            try:
                reader, _ = await self._connect()
                payload = await asyncio.wait_for(self._next_payload(reader), self.timeout)
            except (asyncio.TimeoutError, OSError, ServiceError, ClientError) as exc:
                await self.close()
                raise exchange_failed(exc, self.timeout) from None
        return decode_reply(payload)

    async def _next_payload(self, reader: asyncio.StreamReader) -> bytes:
        while (payload := self._decoder.next_frame()) is None:
            self._decoder.feed(await reader.read(RECV_CHUNK))
        return payload

    async def _run(self, steps: Steps) -> Any:
        """Carry out ``steps``, awaiting each: requests over the connection, work in a thread."""
        run = Run(steps)
        while not run.done:
            step = run.step
            if isinstance(step, Send):
                run.send(await self.request(step.message))
            elif isinstance(step, Pause):
                run.send(await asyncio.sleep(step.seconds))
            else:
                run.send(await asyncio.to_thread(step.run))
        return run.result

    async def open_video(self, source: Any, *, request_id: str | None = None) -> Any:
        """As :meth:`Client.open_video`: an
        :class:`~sam2_service.client.video.AsyncVideoSession`."""
        from .video import open_video_async

        return await open_video_async(self, source, request_id)

    async def close(self) -> None:
        """Close the connection (a later request reconnects)."""
        if self._streams is not None:
            _, writer = self._streams
            self._streams = None
            self._decoder = ReplyDecoder()
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
