"""A stop requested during start-up (SIGTERM, or Ctrl-C's SIGINT, while the model loads or
warms up) ends the daemon process promptly with exit code 0 and never binds the socket:
the real ``python -m sam2_service serve`` process with the real SAM2 model, and the
:class:`Server` with a fake engine whose warm-up the test holds."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from sam2_service.daemon.config import ServiceConfig
from sam2_service.daemon.serving.server import Server
from tests.fake_engine import FakeEngine

from .conftest import short_tmp_socket_dir, start_daemon

PROMPT_EXIT_S = 5.0


def wait_for_log(path: Path, text: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never logged"
        time.sleep(0.02)


@pytest.mark.model
@pytest.mark.parametrize("sig, stage", [
    (signal.SIGTERM, "Starting sam2-service"),  # while the model is being built
    (signal.SIGINT, "Model loaded successfully"),  # while it warms up
])
def test_stop_during_startup_exits_promptly_and_never_binds(sig, stage):
    d = start_daemon(Path(short_tmp_socket_dir()), "--dummy-weights", "--device", "cpu",
                     wait=False)
    try:
        wait_for_log(d.log_path, stage)
        sent = time.monotonic()
        d.process.send_signal(sig)
        code = d.process.wait(timeout=60)
        took = time.monotonic() - sent
        log, out = d.log_path.read_text(), d.output()
        assert code == 0, out
        assert took < PROMPT_EXIT_S, f"exit took {took:.1f} s"
        assert "Start-up abandoned" in log and "Server listening" not in log
        assert "Warm-up complete" not in log
        assert not os.path.exists(d.socket_path)
        assert "Traceback" not in out and "terminate called" not in out, out
    finally:
        if d.process.poll() is None:
            d.process.kill()


class SlowWarmupEngine(FakeEngine):
    """A fake engine whose warm-up waits until the test opens ``warm_gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.warm_gate = threading.Event()
        self.warming = threading.Event()

    def warmup(self) -> float:
        self.warming.set()
        self.warm_gate.wait(30)
        return 1.0


def test_server_stop_during_warmup_returns_without_binding():
    sock_dir = Path(short_tmp_socket_dir())
    config = ServiceConfig(socket_path=str(sock_dir / "s.sock"), warmup=True,
                           log_file=sock_dir / "log.jsonl")
    engine = SlowWarmupEngine()

    async def main() -> float:
        server = Server(config, engine)
        serving = asyncio.ensure_future(server.serve())
        assert await asyncio.to_thread(engine.warming.wait, 10)
        stopped = time.monotonic()
        server.stop()
        await asyncio.wait_for(serving, PROMPT_EXIT_S)
        took = time.monotonic() - stopped
        assert not server.listening
        engine.warm_gate.set()  # let the abandoned warm-up end while the loop still runs
        while server.pool.workers[0].alive:
            await asyncio.sleep(0.01)
        return took

    try:
        took = asyncio.run(main())
        assert took < 1.0
        assert not os.path.exists(config.socket_path)
    finally:
        engine.warm_gate.set()
