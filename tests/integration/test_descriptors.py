"""Running out of file descriptors, and --max-connections (issue 15.3), with the fake engine.

Under ``prlimit --nofile=64`` and 200 idle clients, asyncio's own accept loop logged a
traceback per failed ``accept()`` (700,000 of them) and a fresh client waited 240 s. Here a
server process runs with a 64-descriptor limit (soft and hard, as prlimit sets them), idle
clients exhaust it, and a fresh client must be answered within seconds of them leaving,
with a handful of warnings in the log and no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import short_tmp_socket_dir
from .test_server_faults import ServerThread, frame, read_frame

REPO = Path(__file__).resolve().parents[2]
NOFILE = 64
IDLE_CLIENTS = 120
SERVED_WITHIN_S = 5.0

CHILD = """
import asyncio, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))
from sam2_service.daemon.config import ServiceConfig
from sam2_service.daemon.ops.logs import setup_logging
from sam2_service.daemon.serving.server import Server
from tests.fake_engine import FakeEngine
cfg = ServiceConfig(socket_path=sys.argv[1], log_file=Path(sys.argv[2]), warmup=False)
setup_logging(cfg.log_path)
asyncio.run(Server(cfg, FakeEngine()).serve())
"""


def connect(path: str, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def ping(path: str, rid: str, timeout: float = 10.0) -> dict | None:
    with connect(path, timeout) as s:
        s.sendall(frame({"op": "ping", "requestId": rid}))
        return read_frame(s)


@pytest.fixture
def limited_server():
    """A server process with RLIMIT_NOFILE 64 (soft and hard); yields (socket, log, proc)."""
    d = Path(short_tmp_socket_dir())
    sock, log, err = str(d / "s.sock"), d / "log.jsonl", d / "stderr"
    with open(err, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", CHILD.format(nofile=NOFILE), sock, str(log)],
                                cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        yield sock, log, err, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_descriptor_exhaustion_backs_off_quietly_and_recovers(limited_server):
    sock, log, err, proc = limited_server
    assert ping(sock, "before") == {"requestId": "before", "ok": True}
    idle = [connect(sock) for _ in range(IDLE_CLIENTS)]  # the backlog holds the surplus
    try:
        time.sleep(1.5)  # the server runs out of descriptors, backs off, retries, ...
        starved = connect(sock, timeout=0.5)
        starved.sendall(frame({"op": "ping", "requestId": "starved"}))
        with pytest.raises(socket.timeout):
            starved.recv(1)  # not accepted: still in the backlog
        starved.close()
    finally:
        for s in idle:
            s.close()
    freed = time.monotonic()
    deadline = freed + SERVED_WITHIN_S
    while True:  # a fresh client, once the idle ones have gone
        try:
            reply = ping(sock, "fresh", timeout=SERVED_WITHIN_S)
            break
        except OSError:
            assert time.monotonic() < deadline
    assert reply == {"requestId": "fresh", "ok": True}
    assert time.monotonic() - freed < SERVED_WITHIN_S
    assert proc.poll() is None
    text, stderr = log.read_text(), err.read_text()
    warnings = text.count("Out of file descriptors")
    assert 1 <= warnings <= 3, warnings
    records = [json.loads(line) for line in text.splitlines()]
    (limit,) = [r for r in records if r["msg"] == "Open-file limit"]
    assert limit["soft"] == limit["hard"] == NOFILE
    assert "Traceback" not in stderr and "out of system resource" not in stderr, stderr[:2000]


def test_connections_beyond_max_connections_are_closed_at_once(caplog):
    srv = ServerThread(_engine(), max_connections=3)
    held = []
    try:
        for i in range(3):  # each answered once, so all three are open and counted
            s = srv.connect()
            s.sendall(frame({"op": "ping", "requestId": f"h{i}"}))
            assert read_frame(s)["requestId"] == f"h{i}"
            held.append(s)
        for i in range(5):
            extra = srv.connect()
            t0 = time.monotonic()
            try:
                extra.sendall(frame({"op": "ping", "requestId": f"x{i}"}))
                assert read_frame(extra) is None  # closed with no reply...
            except (ConnectionResetError, BrokenPipeError):
                pass  # ... or reset, as the ping was unread when it closed
            assert time.monotonic() - t0 < 2.0
            extra.close()
        held.pop().close()
        deadline = time.monotonic() + SERVED_WITHIN_S
        while True:  # the slot is free once the server has seen the close
            s = srv.connect()
            try:
                s.sendall(frame({"op": "ping", "requestId": "again"}))
                reply = read_frame(s)
            except (ConnectionResetError, BrokenPipeError):
                reply = None
            s.close()
            if reply is not None:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert reply == {"requestId": "again", "ok": True}
        refused = [r for r in caplog.records if "--max-connections reached" in r.getMessage()]
        assert len(refused) == 1  # rate-limited
    finally:
        for s in held:
            s.close()
        srv.stop()


def _engine():
    from tests.fake_engine import FakeEngine

    return FakeEngine()
