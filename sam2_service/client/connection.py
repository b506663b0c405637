"""The socket side that both transports (:mod:`.sync`, :mod:`.aio`) share: connecting, written
once as steps (a full accept queue is waited out with :class:`~.ops.Pause` steps, which the
blocking transport sleeps and the asyncio one awaits), the reply decoder, and the
:class:`~.core.ClientError` a failed exchange becomes.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shlex
import socket
import stat
import time

from ..wire.frames import DEFAULT_SOCKET, FrameDecoder
from ..wire.peer import peer_uid
from .core import ClientError, check_server_uid
from .errors import ClientTimeout
from .ops import Pause, Steps

#: Largest reply frame the client accepts (an 8K mask is ~45 MB of base64).
CLIENT_MAX_FRAME_BYTES = 1 << 30
#: Bytes asked of the socket per read.
RECV_CHUNK = 1 << 18
#: Pause between connection attempts while the daemon's accept queue is full, seconds.
CONNECT_RETRY_S = 0.01


def connect_steps(path: str, timeout: float, sock_timeout: float) -> Steps:
    """Connect to the daemon's socket at ``path``; returns the connected socket once its
    server's uid is trusted (:func:`~.core.check_server_uid`).

    The connect is done here for both transports, not by :func:`asyncio.open_unix_connection`:
    asyncio takes a Unix connect's EAGAIN for "in progress", waits for the socket to be
    writable and then hands back a socket that was never connected (the first write fails
    with EINVAL). A Unix-socket connect does not block, so the event loop's thread may run it.

    Args:
        path: the socket's path.
        timeout: seconds for which EAGAIN (the server's accept queue is full) is retried,
            with a :class:`~.ops.Pause` of :data:`CONNECT_RETRY_S` between attempts.
        sock_timeout: the socket's own timeout, seconds (0.0: non-blocking, for asyncio).

    Raises:
        ClientError: the connect failed, or the queue stayed full.
        RequestFailed: ``untrusted_server``: the server runs as another user (nothing sent).
    """
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(sock_timeout)
        try:
            sock.connect(path)
            break
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise ClientError(f"cannot connect to {path}: its accept queue stayed full for "
                                  f"{timeout} s") from None
        except OSError as exc:
            sock.close()
            raise ClientError(connect_failure(path, exc)) from None
        yield Pause(CONNECT_RETRY_S)
    try:
        check_server_uid(peer_uid(sock), path)
    except BaseException:
        sock.close()
        raise
    return sock


#: What :func:`connect_failure` calls a path that is not a socket, by its ``stat`` type.
_FILE_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"),
               (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


def start_hint(path: str) -> str:
    """How to start a daemon on ``path``: ``make run``, repeating the socket unless it is the
    default one (``make run`` passes ``--socket`` itself, so the variable does not reach it)."""
    if path == DEFAULT_SOCKET:
        return "`make run`"
    quoted = shlex.quote(path)
    return f"`make run SOCKET={quoted}` or `sam2-service serve --socket {quoted}`"


def connect_failure(path: str, exc: OSError) -> str:
    """The message of a failed connect to ``path``: that the path is not a socket (and what it
    is), or the error with, where no daemon listens there, how to start one."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISSOCK(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "a file of another kind")
        return (f"cannot connect to {path}: it is not a socket (it is {kind}); give the "
                "daemon's socket with --socket or SAM2_SERVICE_SOCKET")
    text = f"cannot connect to {path}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        text += f" (is the daemon running? start it with {start_hint(path)})"
    return text


class ReplyDecoder(FrameDecoder):
    """The reply frames of one connection: at most :data:`CLIENT_MAX_FRAME_BYTES` each.

    Raises (from :meth:`feed`):
        ClientError: an empty read, i.e. the daemon closed the connection before replying.
    """

    def __init__(self) -> None:
        super().__init__(CLIENT_MAX_FRAME_BYTES)

    def feed(self, data: bytes) -> None:
        """Append received bytes; ``b""`` (end of stream) raises :class:`~.core.ClientError`."""
        if not data:
            raise ClientError("daemon closed the connection before replying")
        super().feed(data)


def exchange_failed(exc: BaseException, timeout: float) -> ClientError:
    """The error a request raises when its exchange failed with ``exc`` (after which the
    connection is closed): a :class:`~.core.ClientError` as it is, a timeout as
    :class:`~.errors.ClientTimeout` "no reply within ``timeout`` s", anything else (OSError,
    a bad frame) as "connection to daemon failed"."""
    if isinstance(exc, ClientError):
        return exc
    if isinstance(exc, (socket.timeout, asyncio.TimeoutError)):
        return ClientTimeout(f"no reply within {timeout} s")
    return ClientError(f"connection to daemon failed: {exc}")
