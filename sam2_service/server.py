"""The daemon: ``Server(config).serve()`` with startup, main loop and shutdown (as uvicorn).

Data flows one way: socket bytes -> :class:`~sam2_service.protocol.FrameDecoder` ->
:func:`~sam2_service.schema.parse_request` -> :class:`~sam2_service.worker.InferenceWorker`
-> response object -> frame -> socket. This module is the only place where exceptions
become error responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass
from typing import Any

from .config import ServiceConfig
from .engine import Sam2Engine, package_versions
from .errors import FrameTooLarge, ServiceError, StartupError
from .logs import event
from .protocol import FrameDecoder, decode_message, encode_message
from .schema import (PROTOCOL_VERSION, InfoRequest, PingRequest, SegmentRequest, error_response,
                     new_request_id, parse_request, ping_response, read_request_id,
                     segment_response)
from .worker import InferenceWorker

log = logging.getLogger("sam2_service.server")

READ_CHUNK = 1 << 18  # bytes asked of the socket per read
LISTEN_BACKLOG = 64
DUMMY_WARNING = "DUMMY WEIGHTS: random-init model loaded with --dummy-weights; masks are meaningless"


def max_socket_path_bytes(platform: str = sys.platform) -> int:
    """Longest Unix socket path the platform's ``sockaddr_un.sun_path`` holds, without its NUL:
    107 bytes on Linux (108-byte field), 103 on macOS and the BSDs (104-byte field)."""
    return 107 if platform.startswith("linux") else 103


def _probe_existing(path: str) -> None:
    """Make ``path`` free for bind: remove a stale socket; refuse anything else.

    Raises:
        StartupError: a live daemon answers there, or the path is not a socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to replace it "
                           "(remove it yourself or choose another --socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: nobody listens
        return
    except OSError as exc:
        raise StartupError(f"cannot probe existing socket {path}: {exc}") from None
    finally:
        probe.close()
    raise StartupError(f"already running: a daemon is listening on {path} "
                       "(stop it first, or choose another --socket)")


def check_socket_path(path: str) -> None:
    """Fail fast, before the model loads, if ``path`` cannot become our socket.

    Raises:
        StartupError: the path is too long for the platform, a live daemon answers there,
            or it exists and is not a socket. A stale socket is removed.
    """
    limit = max_socket_path_bytes()
    if len(os.fsencode(path)) > limit:
        raise StartupError(f"socket path is {len(os.fsencode(path))} bytes, longer than this "
                           f"platform's limit of {limit}: choose a shorter --socket")
    _probe_existing(path)


def bind_unix_socket(path: str) -> socket.socket:
    """A listening Unix socket at ``path``, owner-only (0600) from birth: the umask is set
    before ``bind`` (as ssh-agent does), not a chmod after.

    Raises:
        StartupError: see :func:`check_socket_path`, or bind fails.
    """
    check_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind {path}: {exc}") from None
    finally:
        os.umask(old_umask)
    sock.listen(LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


@dataclass
class _Connection:
    busy: bool = False  # a whole request has been read and is being answered


class Server:
    """The SAM2 daemon on a Unix socket.

    Args:
        config: all settings.
        engine: an already loaded engine (tests); by default :meth:`startup` loads one.
    """

    def __init__(self, config: ServiceConfig, engine: Sam2Engine | None = None) -> None:
        self.config = config
        self.engine = engine
        self.worker: InferenceWorker | None = None
        self._server: asyncio.AbstractServer | None = None
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we made
        self._conns: dict[asyncio.Task, _Connection] = {}
        self._stop = asyncio.Event()
        self.started = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------
    async def serve(self) -> None:
        """Start, serve until SIGTERM/SIGINT or :meth:`stop`, then shut down.

        Raises:
            StartupError: the model or the socket could not be set up.
        """
        loop = asyncio.get_running_loop()
        installed = self._install_signal_handlers(loop)
        try:
            await self.startup()
            if not self._stop.is_set():
                self.started.set()
                await self._stop.wait()
        finally:
            await self.shutdown()
            for sig in installed:
                loop.remove_signal_handler(sig)

    def stop(self) -> None:
        """Ask the server to shut down (safe to call from the loop's thread, any number of times)."""
        self._stop.set()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        return installed

    def _on_signal(self, sig: int) -> None:
        event(log, "Shutdown requested", signal=signal.Signals(sig).name)
        self.stop()

    async def startup(self) -> None:
        """Load the model (if not given), start the worker, bind and listen."""
        cfg = self.config
        event(log, "Starting sam2-service", **package_versions(), model=cfg.model,
              device=cfg.device, socket=cfg.socket_path, logFile=str(cfg.log_path))
        check_socket_path(cfg.socket_path)
        if self.engine is None:
            self.engine = await asyncio.to_thread(Sam2Engine.load, cfg)
        eng = self.engine
        event(log, "Model loaded successfully", loadTimeMs=round(eng.load_time_ms, 1),
              device=eng.device, dtype=eng.precision, model=cfg.model, weights=eng.weights,
              checkpoint=None if eng.weights == "dummy" else str(cfg.checkpoint_path))
        if eng.weights == "dummy":
            event(log, DUMMY_WARNING, logging.WARNING)
        self.worker = InferenceWorker(eng, cfg.max_image_pixels)
        if cfg.warmup:
            warmup_ms = await self.worker.warmup()
            event(log, "Warm-up complete", warmupMs=round(warmup_ms, 1))
        sock = bind_unix_socket(cfg.socket_path)
        st = os.stat(cfg.socket_path)
        self._socket_id = (st.st_dev, st.st_ino)
        self._server = await asyncio.start_unix_server(self._handle_connection, sock=sock,
                                                       limit=READ_CHUNK)
        event(log, "Server listening", socket=cfg.socket_path, pid=os.getpid())

    async def shutdown(self) -> None:
        """Stop accepting; let requests being answered finish (up to ``shutdown_timeout``),
        close idle connections, stop the worker and remove the socket this server made."""
        if self._server is not None:
            self._server.close()
        self._stop.set()
        for task, conn in list(self._conns.items()):
            if not conn.busy:
                task.cancel()
        if self._conns:
            done, pending = await asyncio.wait(list(self._conns), timeout=self.config.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self.worker is not None:
            self.worker.close(wait=False)
        self._unlink_socket()
        if self._server is not None:
            event(log, "Server stopped", socket=self.config.socket_path)

    def _unlink_socket(self) -> None:
        """Remove the socket file only if it is still the one this server bound."""
        if self._socket_id is None:
            return
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(self.config.socket_path)
            if (st.st_dev, st.st_ino) == self._socket_id:
                os.unlink(self.config.socket_path)
        self._socket_id = None

    # -- connections ---------------------------------------------------------------------
    async def _handle_connection(self, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = self._conns[task] = _Connection()
        decoder = FrameDecoder(self.config.max_frame_bytes)
        try:
            while not self._stop.is_set():
                try:
                    payload = decoder.next_frame()
                except FrameTooLarge as exc:  # cannot resynchronise: answer, then close
                    writer.write(encode_message(self._error(new_request_id(), exc)))
                    await writer.drain()
                    break
                if payload is None:
                    data = await reader.read(READ_CHUNK)
                    if not data:
                        break
                    decoder.feed(data)
                    continue
                conn.busy = True
                response = await self._respond(payload)
                writer.write(encode_message(response))
                await writer.drain()
                conn.busy = False
        except (ConnectionError, asyncio.CancelledError):
            pass  # peer went away, or shutdown closed an idle connection
        finally:
            self._conns.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _respond(self, payload: bytes) -> dict[str, Any]:
        """Answer one frame's payload; never raises (errors become error responses)."""
        request_id = None
        try:
            obj = decode_message(payload)
            request_id = read_request_id(obj)
            request = parse_request(obj, max_points=self.config.max_points)
            if isinstance(request, PingRequest):
                return ping_response(request.request_id)
            if isinstance(request, InfoRequest):
                return self._info(request.request_id)
            assert isinstance(request, SegmentRequest)
            return await self._segment(request)
        except ServiceError as exc:
            return self._error(request_id or new_request_id(), exc)
        except Exception as exc:  # a bug or a model failure: report it, keep serving
            rid = request_id or new_request_id()
            event(log, "Internal error", logging.ERROR, exc_info=True, requestId=rid,
                  code="internal")
            return error_response(rid, "internal", f"internal error: {type(exc).__name__}: {exc}")

    async def _segment(self, request: SegmentRequest) -> dict[str, Any]:
        assert self.worker is not None
        event(log, "Received request", requestId=request.request_id,
              hasBbox=request.bbox is not None, points=len(request.points),
              imageChars=len(request.image_base64))
        out = await self.worker.segment(request)
        event(log, "Inference complete", requestId=request.request_id,
              inferenceTimeMs=round(out.total_ms, 1), maskCoverage=round(out.coverage, 4),
              score=round(out.score, 4), decodeMs=round(out.decode_ms, 1),
              encodeMs=round(out.encode_ms, 1), predictMs=round(out.predict_ms, 1),
              width=out.width, height=out.height)
        return segment_response(request.request_id, width=out.width, height=out.height,
                                mask_base64=out.mask_base64, score=out.score,
                                inference_time_ms=out.total_ms)

    def _error(self, request_id: str, exc: ServiceError) -> dict[str, Any]:
        event(log, "Request failed", logging.WARNING, requestId=request_id, code=exc.code,
              error=exc.message, field=exc.field)
        return error_response(request_id, exc.code, exc.message)

    def _info(self, request_id: str) -> dict[str, Any]:
        assert self.engine is not None
        info: dict[str, Any] = {"requestId": request_id, "ok": True,
                                "protocol": PROTOCOL_VERSION, **self.engine.info(),
                                "socket": self.config.socket_path, "pid": os.getpid()}
        if self.engine.weights == "dummy":
            info["warning"] = DUMMY_WARNING
        return info


def run(config: ServiceConfig) -> int:
    """Serve until stopped; returns the process exit code (0 clean, 1 startup failure)."""
    try:
        asyncio.run(Server(config).serve())
    except StartupError as exc:
        event(log, str(exc), logging.ERROR)
        return 1
    return 0
