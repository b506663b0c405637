"""The blocking transport: :class:`Client` carries :mod:`.ops`' steps over one socket in the
calling thread.

Safe to share between threads: a lock makes each request and its reply one exchange, so every
thread gets its own reply.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from ..wire.errors import ServiceError
from ..wire.frames import encode_message
from .connection import RECV_CHUNK, ReplyDecoder, connect_steps, exchange_failed
from .core import DEFAULT_TIMEOUT, ClientError, decode_reply
from .ops import Operations, Pause, Run, Send, Steps


class Client(Operations):
    """Blocking client; one connection, reused for every request until :meth:`close` (a
    request after a failed exchange reconnects).

    Args:
        socket_path, timeout: the daemon's socket and the seconds to wait for connecting and
            for each reply, as for :class:`~.ops.Operations`.

    Its operations (``ping``, ``info``, ``segment``, ``embed``, ``auto``, ``release``) are
    :class:`~.ops.Operations`', which documents them; each returns its result. Every one
    raises :class:`~.core.RequestFailed` on an error reply (``untrusted_server`` when the
    socket's server runs as another user, before anything is sent) and
    :class:`~.core.ClientError` when the daemon cannot be reached or sends a bad frame.
    """

    def __init__(self, socket_path: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(socket_path, timeout)
        self._sock: socket.socket | None = None
        self._decoder = ReplyDecoder()
        self._lock = threading.RLock()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = self._run(connect_steps(self.socket_path, self.timeout, self.timeout))
        return self._sock

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request object and return the reply object (error replies included).

        Raises:
            RequestFailed: ``untrusted_server`` (the socket's server runs as another user).
            ClientError: the daemon could not be reached, hung up, or sent a bad frame.
        """
        with self._lock:  # re-entrant: the reply read is this request's
            self.send(message)
            return self.receive()

    def send(self, message: dict[str, Any]) -> None:
        """Send one request object without reading its reply (for a request answered by a
        stream of replies, read with :meth:`receive`). Raises as :meth:`request`."""
        with self._lock:
            sock = self._connect()  # its own errors are already ClientError
            try:
                sock.settimeout(self.timeout)  # it may have changed since the connect
                sock.sendall(encode_message(message))
            except (OSError, ServiceError, ClientError) as exc:
                self.close()
                raise exchange_failed(exc, self.timeout) from None

    def receive(self) -> dict[str, Any]:
        """The next reply object on the connection (after :meth:`send`). Raises as
        :meth:`request`."""
        with self._lock:
            try:
                sock = self._connect()
                sock.settimeout(self.timeout)
                while (payload := self._decoder.next_frame()) is None:
                    self._decoder.feed(sock.recv(RECV_CHUNK))
            except (OSError, ServiceError, ClientError) as exc:
                self.close()
                raise exchange_failed(exc, self.timeout) from None
        return decode_reply(payload)

    def _run(self, steps: Steps) -> Any:
        """Carry out ``steps`` here: requests over the socket, work and pauses inline."""
        run = Run(steps)
        while not run.done:
            step = run.step
            if isinstance(step, Send):
                run.send(self.request(step.message))
            elif isinstance(step, Pause):
                run.send(time.sleep(step.seconds))
            else:
                run.send(step.run())
        return run.result

    def open_video(self, source: Any, *, request_id: str | None = None) -> Any:
        """Open a video session over ``source`` (a video file, a folder of frames, a sequence
        of images, or a (T, H, W[, 3]) array): a
        :class:`~sam2_service.client.video.VideoSession`, on a connection of its own.

        Raises:
            RequestFailed: the daemon refused it (``video_too_large``, ``too_many_sessions``,
                ``image_decode``, ...).
            ValueError, ImageUnreadable: ``source`` cannot be read.
        """
        from .video import open_video

        return open_video(self, source, request_id)

    def close(self) -> None:
        """Close the connection (a later request reconnects)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
                self._decoder = ReplyDecoder()
