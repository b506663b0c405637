"""One client connection: admit the peer, read frames, answer them, write the replies.

Bytes read go to a :class:`~sam2_service.wire.frames.FrameDecoder`; each whole frame is
answered by the :class:`~sam2_service.daemon.serving.dispatch.Dispatcher` while the socket is still
read, so that a peer that hangs up is noticed and its request dropped. No request parsing
and no error-response policy live here: the dispatcher owns both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from ...wire.errors import Busy, FrameTooLarge, ServiceError, ShuttingDown
from ...wire.frames import FrameDecoder, decode_message, encode_message, encode_message_parts
from ...wire.peer import peer_allowed, peer_uid
from ...wire.schema import new_request_id, read_request_id
from ..config import ServiceConfig
from ..ops.logs import event
from ..video.sessions import CURRENT_OWNER, VideoOwner
from ..video.streams import ReplyStream
from .dispatch import Dispatcher
from .sockets import peer_hung_up

log = logging.getLogger("sam2_service.server")

READ_CHUNK = 1 << 18  # bytes asked of the socket per read
#: A reply larger than this is written in slices of this size, each drained before the
#: next. asyncio's selector transport (CPython 3.11) keeps what one ``write`` could not send
#: in one bytearray and deletes each sent chunk from its front, moving the rest every time:
#: a 2.7 MB reply (a raw 1080p mask) took 6-8 ms to reach a local client in one write
#: against 2.5-3 ms in slices (2-core development machine, docs/benchmarks.md). The socket's
#: send buffer is left at the system's default: a larger one would let a client that never
#: reads park a whole reply in kernel memory instead of meeting ``--write-timeout``.
WRITE_SLICE = 1 << 18


class ReadBudget:
    """The bytes of requests held over all connections (``--max-buffered-mb``): read, or
    announced by a frame's length prefix, and not yet answered.

    A connection takes what it holds: for the frame being read, the larger of the bytes
    buffered and the length its prefix announces (so a frame stalled one byte short counts
    in full from its first read); for the frame being answered, its payload until the reply
    is written. All on the event loop's thread: no lock.

    Args:
        limit: the most bytes held at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Hold ``n`` more bytes if that stays within :attr:`limit`; False (nothing held)
        otherwise."""
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        """Release ``n`` bytes held."""
        self.used -= n


class Connection:
    """Serves one accepted connection until the peer leaves, idles out, or the server stops.

    Args:
        reader, writer: the connection's asyncio streams.
        config: ``max_frame_bytes``, ``idle_timeout`` and ``write_timeout`` are used here.
        dispatcher: answers each frame's payload.
        stopping: set when the server shuts down: no new frame is started, frames already
            received are answered ``shutting_down``.
        budget: shared by all connections (``max_buffered_bytes``); a frame that does not
            fit is answered ``busy`` and the connection closed.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 config: ServiceConfig, dispatcher: Dispatcher, stopping: asyncio.Event,
                 budget: ReadBudget) -> None:
        self.reader = reader
        self.writer = writer
        self.config = config
        self.dispatcher = dispatcher
        self.stopping = stopping
        self.decoder = FrameDecoder(config.max_frame_bytes)
        self.budget = budget
        self._reading = 0  # bytes of the budget held for the frame(s) being read
        self._answering = 0  # ... and for the frame being answered
        #: True while a whole request has been read and is being answered (shutdown lets it
        #: finish; an idle connection is closed at once).
        self.busy = False
        #: The video sessions this connection opened (closed with it).
        self.owner = VideoOwner()

    async def serve(self) -> None:
        """Run the connection to its end and close it; never raises except CancelledError
        being swallowed (a cancel closes the connection)."""
        CURRENT_OWNER.set(self.owner)  # this task's context: its requests' sessions are ours
        try:
            if not self._admit():
                return
            while not self.stopping.is_set():
                payload = await self._next_frame()
                if payload is None:
                    break
                self.busy = True
                response = await self._answer_watching(payload)
                if response is None:
                    break  # the peer hung up; its request was dropped
                if isinstance(response, ReplyStream):  # one reply per frame, then a last one
                    if await self._answer_watching(payload, self._pump(response)) is None:
                        break  # the peer hung up: the stream was cancelled
                else:
                    await self._write(response)
                self.budget.give(self._answering)
                self._answering = 0
                self.busy = False
            if self.stopping.is_set():
                await self._refuse_buffered()
        except (ConnectionError, asyncio.CancelledError):
            pass  # peer went away, or shutdown closed an idle connection
        finally:
            self.dispatcher.video.disconnected(self.owner)
            self.budget.give(self._reading + self._answering)
            self._reading = self._answering = 0
            self.writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.writer.wait_closed()

    def _admit(self) -> bool:
        """Check the peer's uid (:func:`peer_uid`); refuse other users."""
        sock = self.writer.get_extra_info("socket")
        try:
            uid = peer_uid(sock) if sock is not None else None
        except OSError:
            uid = None
        if peer_allowed(uid, os.geteuid()):
            return True
        event(log, "Refused connection from another user", logging.WARNING, peerUid=uid)
        return False

    async def _pump(self, stream: ReplyStream) -> bool:
        """Write each reply of ``stream`` as it comes (True at its end)."""
        try:
            async for reply in stream.replies:
                await self._write(reply)
        finally:
            await stream.replies.aclose()
        return True

    async def _write(self, response: dict[str, Any]) -> None:
        await self._send(*encode_message_parts(response))

    async def _send(self, *parts: bytes) -> None:
        """Write ``parts`` (one frame, or its length prefix and payload; in
        :data:`WRITE_SLICE` slices when larger) and wait until the client has taken them,
        for at most ``write_timeout`` in all.

        Raises:
            ConnectionError: the client did not read in time; the connection was aborted
                (what it had not read is dropped).
        """
        try:
            await asyncio.wait_for(self._write_slices(parts), self.config.write_timeout)
        except asyncio.TimeoutError:
            transport = self.writer.transport
            event(log, "Closed connection: reply not read within the write timeout",
                  logging.WARNING, writeTimeout=self.config.write_timeout,
                  unsentBytes=transport.get_write_buffer_size())
            transport.abort()
            raise ConnectionAbortedError("write timeout") from None

    async def _write_slices(self, parts: tuple[bytes, ...]) -> None:
        for part in parts:
            view = memoryview(part)
            for start in range(0, len(part), WRITE_SLICE):
                self.writer.write(view[start:start + WRITE_SLICE])
                await self.writer.drain()

    def _hold_read(self) -> bool:
        """Take from the budget what the frame being read needs (see :class:`ReadBudget`);
        False if it does not fit (what was held stays held)."""
        announced = self.decoder.pending_length
        if announced is not None and announced > self.config.max_frame_bytes:
            announced = None  # refused as frame_too_large, never read
        want = max(self.decoder.buffered, announced or 0)
        if want > self._reading and not self.budget.take(want - self._reading):
            return False
        if want < self._reading:
            self.budget.give(self._reading - want)
        self._reading = want
        return True

    def _frame_taken(self, payload: bytes) -> None:
        """A whole frame left the decoder: its share moves from reading to answering."""
        moved = min(self._reading, len(payload))
        self._reading -= moved
        self._answering += moved
        self._hold_read()  # only gives back: the decoder holds less now

    async def _next_frame(self) -> bytes | None:
        """The next complete frame's payload, or None when the connection should close:
        the peer hung up, sent an oversize prefix (answered ``frame_too_large``), or sent no
        complete frame within ``idle_timeout`` (partial data does not extend it)."""
        loop = asyncio.get_running_loop()
        idle = self.config.idle_timeout
        if self.owner.sessions:  # a video session's user may think longer between requests
            idle = max(idle, self.config.video_idle_timeout)
        deadline = loop.time() + idle
        while True:
            if not self._hold_read():
                await self._write(self.dispatcher.error(new_request_id(), Busy(
                    f"the daemon holds {self.budget.used} bytes of requests not yet "
                    "answered; this frame would take it past --max-buffered-mb "
                    f"({self.budget.limit} bytes); try again shortly")))
                return None
            try:
                payload = self.decoder.next_frame()
            except FrameTooLarge as exc:  # cannot resynchronise: answer, then close
                await self._write(self.dispatcher.error(new_request_id(), exc))
                return None
            if payload is not None:
                self._frame_taken(payload)
                return payload
            try:
                data = await asyncio.wait_for(self.reader.read(READ_CHUNK),
                                              deadline - loop.time())
            except asyncio.TimeoutError:
                event(log, "Closed idle connection", idleTimeout=self.config.idle_timeout,
                      partialFrame=self.decoder.in_frame)
                return None
            if not data:
                return None
            self.decoder.feed(data)

    async def _answer_watching(self, payload: bytes, work: Any = None) -> Any:
        """Answer ``payload`` while still reading the socket, so that a peer that hangs up
        is noticed: its job is then dropped (or, if running, finished and discarded) and
        None returned. Bytes read meanwhile (pipelined requests) go to the decoder, up to
        one frame's worth; a half-close (EOF without hang-up) still gets its reply. ``work``,
        when given, is awaited instead of answering ``payload`` (a stream's :meth:`_pump`)."""
        respond = asyncio.ensure_future(
            work if work is not None else self.dispatcher.respond(payload, time.monotonic()))
        read: asyncio.Future | None = None
        limit = self.config.max_frame_bytes + 4
        try:
            while read is not None or self.decoder.buffered < limit:
                read = read or asyncio.ensure_future(self.reader.read(READ_CHUNK))
                await asyncio.wait({respond, read}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    break
                data, read = read.result(), None
                if data:
                    self.decoder.feed(data)
                    if not self._hold_read():
                        break  # over budget: no more reading; the next frame gets busy
                    continue
                sock = self.writer.get_extra_info("socket")
                if sock is not None and peer_hung_up(sock):
                    event(log, "Client disconnected; request dropped")
                    return None
                break  # half-closed: answer, then the loop ends at EOF
            return await respond
        finally:  # cancel what is left and wait for it, so that nobody still reads the stream
            for fut in (respond, read):
                if fut is not None and not fut.done():
                    fut.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await fut

    async def _refuse_buffered(self) -> None:
        """On shutdown, answer requests already received but not started with
        ``shutting_down``."""
        frames = []
        with contextlib.suppress(FrameTooLarge):
            while (payload := self.decoder.next_frame()) is not None:
                rid = read_request_id(_loads_or_none(payload))
                frames.append(encode_message(self.dispatcher.error(rid, ShuttingDown(
                    "the daemon is shutting down; the request was not run"))))
        await self._send(b"".join(frames))


def _loads_or_none(payload: bytes) -> Any:
    """The payload's JSON, or None if it is not JSON (to read a ``requestId`` from)."""
    try:
        return decode_message(payload)
    except ServiceError:
        return None
