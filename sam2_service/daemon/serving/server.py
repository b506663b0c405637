"""The daemon's lifecycle: ``Server(config).serve()`` with startup, main loop and shutdown
(as uvicorn's ``Server``): signals, the model, the socket, the watchdog.

Data flows one way: socket bytes -> :class:`~sam2_service.daemon.serving.connection.Connection`
(frames) -> :class:`~sam2_service.daemon.serving.dispatch.Dispatcher` (request -> reply, the only
place where exceptions become error responses) -> :class:`~sam2_service.daemon.inference.worker.InferenceWorker`
(the model's thread; one per device, :class:`~sam2_service.daemon.inference.devices.DevicePool`) -> reply
-> frame -> socket.
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
from typing import Sequence

from ..config import ALL_CUDA, ServiceConfig, StartupError
from ..inference.devices import DevicePool
from ..inference.disk_cache import DiskEmbeddingStore, open_store
from ..inference.engine import Engine, Sam2Engine, package_versions
from ..inference.hardware import expand_devices
from ..inference.worker import InferenceWorker
from ..ops.logs import event
from ..ops.memory import tune_allocator
from ..ops.service_files import LAUNCHD_SOCKET_NAME
from ..ops.systemd import notify, watchdog_interval
from .accept import accept_loop, raise_nofile_limit
from .connection import READ_CHUNK, Connection, ReadBudget
from .dispatch import DUMMY_WARNING, Dispatcher
from .sockets import LISTEN_BACKLOG, bind_unix_socket, check_socket_path, inherited_listener

log = logging.getLogger("sam2_service.server")


class Server:
    """The SAM2 daemon on a Unix socket.

    Args:
        config: all settings.
        engine: an already loaded engine, or a list of them, one worker each (tests); by
            default :meth:`startup` loads one per device of ``config.devices``.
    """

    def __init__(self, config: ServiceConfig,
                 engine: Engine | Sequence[Engine] | None = None) -> None:
        self.config = config
        self._given = None if engine is None else (
            list(engine) if isinstance(engine, (list, tuple)) else [engine])
        #: The inference workers, one per device (once started).
        self.pool: DevicePool | None = None
        self._disk: DiskEmbeddingStore | None = None  # the embedding cache's disk tier
        self.dispatcher: Dispatcher | None = None
        self._listener: socket.socket | None = None  # the listening socket, once listening
        self._acceptor: asyncio.Task | None = None  # accept_loop on it
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we made
        self._watchdog: asyncio.Task | None = None
        self._conns: dict[asyncio.Task, Connection] = {}
        self._budget = ReadBudget(config.max_buffered_bytes)
        self._stop = asyncio.Event()
        self.abandoned = False  # a stop came before the socket was listening

    # -- lifecycle -----------------------------------------------------------------------
    async def serve(self) -> None:
        """Start, serve until SIGTERM/SIGINT or :meth:`stop`, then shut down.

        Raises:
            StartupError: the model or the socket could not be set up.
        """
        loop = asyncio.get_running_loop()
        installed = self._install_signal_handlers(loop)
        try:
            if await self._start_unless_stopped():
                await self._stop.wait()
        finally:
            await self.shutdown()
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _start_unless_stopped(self) -> bool:
        """Run :meth:`startup`, abandoning it as soon as a stop is requested (SIGTERM or
        Ctrl-C while the model loads or warms up): the socket is then never bound. A model
        load or warm-up already running on the inference thread is left to finish there;
        its result is dropped. Returns True if the server started."""
        startup = asyncio.ensure_future(self.startup())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({startup, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if startup.done():
            startup.result()  # StartupError propagates
            if self.listening:
                return True
        else:
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await startup
        event(log, "Start-up abandoned: shutdown requested before listening")
        self.abandoned = True
        return False

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
        """Take the service manager's socket or check ours, start one worker per device
        with its model (loaded unless given), listen, and tell systemd we are ready."""
        cfg = self.config
        event(log, "Starting sam2-service", **package_versions(), model=cfg.model,
              device=cfg.device, socket=cfg.socket_path, logFile=str(cfg.log_path))
        raise_nofile_limit()
        inherited = inherited_listener(LAUNCHD_SOCKET_NAME)
        if inherited is None:
            check_socket_path(cfg.socket_path)
        await self._start_workers()
        self.dispatcher = Dispatcher(cfg, self.pool)
        if self._stop.is_set():  # never bind once a stop was requested
            return
        sock = inherited or self._bind()
        path = sock.getsockname() or cfg.socket_path
        sock.listen(LISTEN_BACKLOG)  # an inherited socket too: its manager's backlog may be less
        self._listener = sock
        self._acceptor = asyncio.ensure_future(
            accept_loop(sock, self._serve_socket, cfg.max_connections))
        event(log, "Server listening", socket=path, pid=os.getpid(),
              activation="inherited" if inherited else "bound")
        notify(f"READY=1\nSTATUS=Listening on {path}")
        interval = watchdog_interval()
        if interval:
            self._watchdog = asyncio.ensure_future(self._watchdog_pings(interval))

    async def _start_workers(self) -> None:
        """One worker per device (or per given engine), each model loaded and warmed up on
        its own inference thread (every torch call of a model on one thread). The models are
        built one after another: two at once race in ``torch.jit.script``'s global registry
        (sam2's ``SAM2Transforms``; a ``KeyError`` in ``_clear_fn_overloads``). The warm-ups
        run in parallel."""
        cfg = self.config
        if self._given is not None:
            devices = [e.device for e in self._given]
        elif cfg.devices == [ALL_CUDA]:  # torch's device count, off the event loop
            devices = await asyncio.to_thread(expand_devices, cfg.devices)
        else:
            devices = cfg.devices
        self._disk = disk = open_store(cfg)  # shared by the workers
        workers = [InferenceWorker(self._given[i] if self._given else None, cfg.max_image_pixels,
                                   cache_bytes=cfg.cache_bytes, max_queue=cfg.max_queue,
                                   logits_entries=cfg.logits_cache_entries, disk=disk)
                   for i in range(len(devices))]
        self.pool = DevicePool(workers)
        if self._given is None:
            for w, device in zip(workers, devices):
                await w.load(functools.partial(Sam2Engine.load, cfg, device))
        for i, w in enumerate(workers):
            eng = w.engine
            event(log, "Model loaded successfully", loadTimeMs=round(eng.load_time_ms, 1),
                  device=eng.device, dtype=eng.precision, model=cfg.model, weights=eng.weights,
                  checkpoint=None if eng.weights == "dummy" else str(cfg.checkpoint_path),
                  **({"deviceIndex": i} if len(workers) > 1 else {}))
        if workers[0].engine.weights == "dummy":
            event(log, DUMMY_WARNING, logging.WARNING)
        if cfg.warmup:
            times = await asyncio.gather(*(w.warmup() for w in workers))
            for w, warmup_ms in zip(workers, times):
                event(log, "Warm-up complete", warmupMs=round(warmup_ms, 1),
                      device=w.engine.device)

    def _bind(self) -> socket.socket:
        """Bind our own socket (not socket-activated) and remember its inode for unlinking."""
        sock = bind_unix_socket(self.config.socket_path)
        st = os.stat(self.config.socket_path)
        self._socket_id = (st.st_dev, st.st_ino)
        return sock

    async def _watchdog_pings(self, interval: float) -> None:
        """``WATCHDOG=1`` every ``interval / 2`` s while every inference thread is healthy:
        alive, and not stuck in one job for longer than ``interval``. A hung inference thread
        stops the pings, so systemd restarts the daemon (``WatchdogSec=``)."""
        assert self.pool is not None
        while True:
            stuck, running_for = self.pool.stuck(interval)
            if not stuck:
                notify("WATCHDOG=1")
            else:
                event(log, "Inference thread unresponsive; watchdog pings stopped",
                      logging.ERROR, runningForS=None if running_for is None
                      else round(running_for, 1))
            await asyncio.sleep(interval / 2)

    async def shutdown(self) -> None:
        """Stop accepting; let requests being answered finish (up to ``shutdown_timeout``),
        close idle connections, stop the worker and remove the socket this server made."""
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            notify("STOPPING=1")
        if self._listener is not None:
            self._listener.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._stop.set()
        if self.pool is not None:
            failed = self.pool.fail_waiting()
            if failed:
                event(log, "Refused queued requests", queued=failed, code="shutting_down")
        for task, conn in list(self._conns.items()):
            if not conn.busy:
                task.cancel()
        if self._conns:
            done, pending = await asyncio.wait(list(self._conns), timeout=self.config.shutdown_timeout)
            if pending and self.pool is not None and self.pool.fail_running(
                    "the daemon is shutting down; the request did not finish within the "
                    f"shutdown timeout ({self.config.shutdown_timeout} s)"):
                _, pending = await asyncio.wait(pending, timeout=1.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self.pool is not None:
            self.pool.close()
        if self._disk is not None:  # pending writes, within --shutdown-timeout
            self._disk.close()
        self._unlink_socket()
        if self._acceptor is not None:
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

    @property
    def listening(self) -> bool:
        """True once the socket is listening (start-up complete), until shutdown."""
        return self._acceptor is not None and not self._acceptor.done()

    # -- connections ---------------------------------------------------------------------
    async def _serve_socket(self, conn: socket.socket) -> None:
        """Serve one accepted socket (see :func:`accept_loop`)."""
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=READ_CHUNK)
        except OSError:
            conn.close()
            return
        await self._handle_connection(reader, writer)

    async def _handle_connection(self, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        """Serve one accepted connection (:class:`Connection`), tracked for shutdown."""
        task = asyncio.current_task()
        assert task is not None and self.dispatcher is not None
        conn = self._conns[task] = Connection(reader, writer, self.config, self.dispatcher,
                                              self._stop, self._budget)
        try:
            await conn.serve()
        finally:
            self._conns.pop(task, None)


def run(config: ServiceConfig) -> int:
    """Serve until stopped; returns the process exit code (0 clean, 1 startup failure).

    After the loop ends, waits for a job still running on an inference thread (one whose
    client hung up, or that outlived the shutdown timeout; every device's) for what is left of
    ``shutdown_timeout`` (nothing, when a stop abandoned the start-up: a model load or
    warm-up still running is not waited for). If one still runs, the logs are flushed and the
    process leaves with ``os._exit``: finalising the interpreter while that thread is inside
    torch aborts it (SIGABRT, exit 134) instead of the documented exit code.
    """
    # before any thread is started (the arena limit applies to arenas made after it)
    event(log, "Memory allocator", allocator=tune_allocator(config.allocator))
    server = Server(config)
    code = 0
    try:
        asyncio.run(server.serve())
    except StartupError as exc:
        event(log, str(exc), logging.ERROR)
        code = 1
    pool = server.pool
    if pool is not None and not pool.close(0.0 if server.abandoned else config.shutdown_timeout):
        event(log, "Inference still running at exit; leaving without waiting for it",
              logging.WARNING, shutdownTimeout=config.shutdown_timeout)
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    return code
