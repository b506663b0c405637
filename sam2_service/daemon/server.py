"""The daemon: ``Server(config).serve()`` with startup, main loop and shutdown (as uvicorn).

Data flows one way: socket bytes -> :class:`~sam2_service.wire.frames.FrameDecoder` ->
:func:`~sam2_service.wire.schema.parse_request` -> :class:`~sam2_service.daemon.worker.InferenceWorker`
-> response object -> frame -> socket. This module is the only place where exceptions
become error responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..wire.errors import FrameTooLarge, ServiceError, ShuttingDown
from ..wire.frames import FrameDecoder, decode_message, encode_message
from ..wire.peer import peer_allowed, peer_uid
from ..wire.schema import (
    PROTOCOL_VERSION,
    EmbedRequest,
    InfoRequest,
    PingRequest,
    ReleaseRequest,
    SegmentRequest,
    embed_response,
    error_response,
    new_request_id,
    parse_request,
    ping_response,
    read_request_id,
    release_response,
    segment_response,
)
from .config import ServiceConfig, StartupError
from .engine import Sam2Engine, package_versions
from .logs import event
from .service_files import LAUNCHD_SOCKET_NAME
from .sockets import LISTEN_BACKLOG, bind_unix_socket, check_socket_path, inherited_listener, peer_hung_up
from .systemd import notify, watchdog_interval
from .worker import InferenceWorker

log = logging.getLogger("sam2_service.server")

READ_CHUNK = 1 << 18  # bytes asked of the socket per read
DUMMY_WARNING = "DUMMY WEIGHTS: random-init model loaded with --dummy-weights; masks are meaningless"


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
        self._watchdog: asyncio.Task | None = None
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
        """Take the service manager's socket or check ours, load the model (if not given),
        start the worker, listen, and tell systemd we are ready."""
        cfg = self.config
        event(log, "Starting sam2-service", **package_versions(), model=cfg.model,
              device=cfg.device, socket=cfg.socket_path, logFile=str(cfg.log_path))
        inherited = inherited_listener(LAUNCHD_SOCKET_NAME)
        if inherited is None:
            check_socket_path(cfg.socket_path)
        self.worker = InferenceWorker(self.engine, cfg.max_image_pixels,
                                      cache_bytes=cfg.cache_bytes, max_queue=cfg.max_queue)
        if self.engine is None:  # on the inference thread: all torch work stays on one thread
            self.engine = await self.worker.load(functools.partial(Sam2Engine.load, cfg))
        eng = self.engine
        event(log, "Model loaded successfully", loadTimeMs=round(eng.load_time_ms, 1),
              device=eng.device, dtype=eng.precision, model=cfg.model, weights=eng.weights,
              checkpoint=None if eng.weights == "dummy" else str(cfg.checkpoint_path))
        if eng.weights == "dummy":
            event(log, DUMMY_WARNING, logging.WARNING)
        if cfg.warmup:
            warmup_ms = await self.worker.warmup()
            event(log, "Warm-up complete", warmupMs=round(warmup_ms, 1))
        sock = inherited or self._bind()
        path = sock.getsockname() or cfg.socket_path
        self._server = await asyncio.start_unix_server(  # asyncio listens again: pass ours
            self._handle_connection, sock=sock, limit=READ_CHUNK, backlog=LISTEN_BACKLOG)
        event(log, "Server listening", socket=path, pid=os.getpid(),
              activation="inherited" if inherited else "bound")
        notify(f"READY=1\nSTATUS=Listening on {path}")
        interval = watchdog_interval()
        if interval:
            self._watchdog = asyncio.ensure_future(self._watchdog_pings(interval))

    def _bind(self) -> socket.socket:
        """Bind our own socket (not socket-activated) and remember its inode for unlinking."""
        sock = bind_unix_socket(self.config.socket_path)
        st = os.stat(self.config.socket_path)
        self._socket_id = (st.st_dev, st.st_ino)
        return sock

    async def _watchdog_pings(self, interval: float) -> None:
        """``WATCHDOG=1`` every ``interval / 2`` s while the inference thread is healthy:
        alive, and not stuck in one job for longer than ``interval``. A hung inference thread
        stops the pings, so systemd restarts the daemon (``WatchdogSec=``)."""
        assert self.worker is not None
        while True:
            since = self.worker.running_since
            stuck = since is not None and time.monotonic() - since > interval
            if self.worker.alive and not stuck:
                notify("WATCHDOG=1")
            else:
                event(log, "Inference thread unresponsive; watchdog pings stopped",
                      logging.ERROR, runningForS=None if since is None
                      else round(time.monotonic() - since, 1))
            await asyncio.sleep(interval / 2)

    async def shutdown(self) -> None:
        """Stop accepting; let requests being answered finish (up to ``shutdown_timeout``),
        close idle connections, stop the worker and remove the socket this server made."""
        if self._server is not None:
            self._server.close()
            notify("STOPPING=1")
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._stop.set()
        if self.worker is not None:
            failed = self.worker.fail_waiting()
            if failed:
                event(log, "Refused queued requests", queued=failed, code="shutting_down")
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
            self.worker.close()
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
            if not self._admit(writer):
                return
            while not self._stop.is_set():
                payload = await self._next_frame(reader, writer, decoder)
                if payload is None:
                    break
                conn.busy = True
                response = await self._answer_watching(payload, reader, writer, decoder)
                if response is None:
                    break  # the peer hung up; its request was dropped
                writer.write(encode_message(response))
                await writer.drain()
                conn.busy = False
            if self._stop.is_set():
                await self._refuse_buffered(decoder, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # peer went away, or shutdown closed an idle connection
        finally:
            self._conns.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Check the peer's uid (:func:`peer_uid`); refuse other users."""
        sock = writer.get_extra_info("socket")
        try:
            uid = peer_uid(sock) if sock is not None else None
        except OSError:
            uid = None
        if peer_allowed(uid, os.geteuid()):
            return True
        event(log, "Refused connection from another user", logging.WARNING, peerUid=uid)
        return False

    async def _next_frame(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          decoder: FrameDecoder) -> bytes | None:
        """The next complete frame's payload, or None when the connection should close:
        the peer hung up, sent an oversize prefix (answered ``frame_too_large``), or sent no
        complete frame within ``idle_timeout`` (partial data does not extend it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.idle_timeout
        while True:
            try:
                payload = decoder.next_frame()
            except FrameTooLarge as exc:  # cannot resynchronise: answer, then close
                writer.write(encode_message(self._error(new_request_id(), exc)))
                await writer.drain()
                return None
            if payload is not None:
                return payload
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), deadline - loop.time())
            except asyncio.TimeoutError:
                event(log, "Closed idle connection", idleTimeout=self.config.idle_timeout,
                      partialFrame=decoder.in_frame)
                return None
            if not data:
                return None
            decoder.feed(data)

    async def _answer_watching(self, payload: bytes, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter,
                               decoder: FrameDecoder) -> dict[str, Any] | None:
        """Answer ``payload`` while still reading the socket, so that a peer that hangs up
        is noticed: its job is then dropped (or, if running, finished and discarded) and
        None returned. Bytes read meanwhile (pipelined requests) go to ``decoder``, up to
        one frame's worth; a half-close (EOF without hang-up) still gets its reply."""
        respond = asyncio.ensure_future(self._respond(payload, time.monotonic()))
        read: asyncio.Future | None = None
        limit = self.config.max_frame_bytes + 4
        try:
            while read is not None or decoder.buffered < limit:
                read = read or asyncio.ensure_future(reader.read(READ_CHUNK))
                await asyncio.wait({respond, read}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    break
                data, read = read.result(), None
                if data:
                    decoder.feed(data)
                    continue
                sock = writer.get_extra_info("socket")
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

    async def _refuse_buffered(self, decoder: FrameDecoder, writer: asyncio.StreamWriter) -> None:
        """On shutdown, answer requests already received but not started with
        ``shutting_down``."""
        with contextlib.suppress(FrameTooLarge):
            while (payload := decoder.next_frame()) is not None:
                rid = read_request_id(_loads_or_none(payload))
                writer.write(encode_message(self._error(rid, ShuttingDown(
                    "the daemon is shutting down; the request was not run"))))
        await writer.drain()

    async def _respond(self, payload: bytes, arrived: float) -> dict[str, Any]:
        """Answer one frame's payload; never raises (errors become error responses).
        ``arrived`` is the ``time.monotonic()`` at which the frame was complete."""
        request_id = None
        try:
            obj = decode_message(payload)
            request_id = read_request_id(obj)
            request = parse_request(obj, max_points=self.config.max_points)
            if isinstance(request, PingRequest):
                return ping_response(request.request_id)
            if isinstance(request, InfoRequest):
                return self._info(request.request_id)
            if isinstance(request, ReleaseRequest):
                return self._release(request)
            if isinstance(request, EmbedRequest):
                return await self._embed(request, arrived)
            assert isinstance(request, SegmentRequest)
            return await self._segment(request, arrived)
        except ServiceError as exc:
            return self._error(request_id or new_request_id(), exc)
        except Exception as exc:  # a bug or a model failure: report it, keep serving
            rid = request_id or new_request_id()
            event(log, "Internal error", logging.ERROR, exc_info=True, requestId=rid,
                  code="internal")
            return error_response(rid, "internal", f"internal error: {type(exc).__name__}: {exc}")

    async def _segment(self, request: SegmentRequest, arrived: float) -> dict[str, Any]:
        assert self.worker is not None
        event(log, "Received request", requestId=request.request_id,
              hasBbox=request.bbox is not None, points=len(request.points),
              imageChars=len(request.image_base64 or ""), imageId=request.image_id)
        out = await self.worker.segment(request, arrived + self.config.request_timeout)
        timings = {**out.timings, "total": (time.monotonic() - arrived) * 1000}
        event(log, "Inference complete", requestId=request.request_id,
              inferenceTimeMs=round(timings["total"], 1), maskCoverage=round(out.coverage, 4),
              score=round(out.score, 4), cached=out.cached, imageId=out.image_id,
              width=out.width, height=out.height,
              **{f"{k}Ms": round(v, 1) for k, v in out.timings.items()})
        return segment_response(request.request_id, width=out.width, height=out.height,
                                mask_base64=out.mask_base64, score=out.score,
                                image_id=out.image_id, cached=out.cached, timings=timings)

    async def _embed(self, request: EmbedRequest, arrived: float) -> dict[str, Any]:
        assert self.worker is not None
        out = await self.worker.embed(request, arrived + self.config.request_timeout)
        timings = {**out.timings, "total": (time.monotonic() - arrived) * 1000}
        event(log, "Image embedded", requestId=request.request_id, imageId=out.image_id,
              cached=out.cached, width=out.width, height=out.height,
              **{f"{k}Ms": round(v, 1) for k, v in timings.items()})
        return embed_response(request.request_id, width=out.width, height=out.height,
                              image_id=out.image_id, cached=out.cached, timings=timings)

    def _release(self, request: ReleaseRequest) -> dict[str, Any]:
        assert self.worker is not None
        released = self.worker.release(request.image_id)
        event(log, "Image released", requestId=request.request_id, imageId=request.image_id,
              released=released)
        return release_response(request.request_id, image_id=request.image_id, released=released)

    def _error(self, request_id: str, exc: ServiceError) -> dict[str, Any]:
        event(log, "Request failed", logging.WARNING, requestId=request_id, code=exc.code,
              error=exc.message, field=exc.field)
        return error_response(request_id, exc.code, exc.message)

    def _info(self, request_id: str) -> dict[str, Any]:
        assert self.engine is not None
        assert self.worker is not None
        cfg, stats = self.config, self.worker.cache_stats()
        info: dict[str, Any] = {
            "requestId": request_id, "ok": True, "protocol": PROTOCOL_VERSION,
            **self.engine.info(), "socket": cfg.socket_path, "pid": os.getpid(),
            "cache": {"capacityBytes": cfg.cache_bytes, "bytes": stats.bytes,
                      "entries": stats.entries, "hits": stats.hits, "misses": stats.misses,
                      "evictions": stats.evictions},
            "queue": {"waiting": self.worker.waiting, "maxQueue": cfg.max_queue},
            "limits": {"maxFrameBytes": cfg.max_frame_bytes,
                       "maxImagePixels": cfg.max_image_pixels, "maxPoints": cfg.max_points,
                       "requestTimeout": cfg.request_timeout, "idleTimeout": cfg.idle_timeout},
        }
        if self.engine.weights == "dummy":
            info["warning"] = DUMMY_WARNING
        return info


def _loads_or_none(payload: bytes) -> Any:
    try:
        return decode_message(payload)
    except ServiceError:
        return None


def run(config: ServiceConfig) -> int:
    """Serve until stopped; returns the process exit code (0 clean, 1 startup failure).

    After the loop ends, waits for a job still running on the inference thread (one whose
    client hung up, or that outlived the shutdown timeout) for what is left of
    ``shutdown_timeout``. If it still runs, the logs are flushed and the process leaves
    with ``os._exit``: finalising the interpreter while that thread is inside torch aborts
    it (SIGABRT, exit 134) instead of the documented exit code.
    """
    server = Server(config)
    code = 0
    try:
        asyncio.run(server.serve())
    except StartupError as exc:
        event(log, str(exc), logging.ERROR)
        code = 1
    worker = server.worker
    if worker is not None and not worker.close(worker.shutdown_time_left(config.shutdown_timeout)):
        event(log, "Inference still running at exit; leaving without waiting for it",
              logging.WARNING, shutdownTimeout=config.shutdown_timeout)
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    return code
