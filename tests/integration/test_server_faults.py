"""The server on a real socket with a fake engine (tests/fake_engine.py): overload, deadlines,
hang-ups, idle clients, shutdown, out of memory and peer credentials, with timing under the
test's control (the fake engine holds a job until its gate opens). No SAM2 model here; the
real-model versions of the shutdown and hang-up cases are in test_lifecycle.py."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from sam2_service.daemon.config import ServiceConfig
from sam2_service.daemon.serving.server import Server
from sam2_service.wire.codecs import encode_png
from sam2_service.wire.peer import peer_allowed, peer_uid
from tests.fake_engine import FakeEngine, FakeOOM

from .conftest import short_tmp_socket_dir


class ServerThread:
    """``Server(config, engine).serve()`` on its own event loop in a thread."""

    def __init__(self, engine: FakeEngine, **settings) -> None:
        self.dir = Path(short_tmp_socket_dir())
        self.config = ServiceConfig(socket_path=str(self.dir / "s.sock"), warmup=False,
                                    log_file=self.dir / "log.jsonl", **settings)
        self.engine = engine
        self.server = Server(self.config, engine)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not os.path.exists(self.config.socket_path):
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.thread.join(15)
        assert not self.thread.is_alive()

    def waiting(self) -> int:
        return self.server.pool.workers[0].waiting

    def connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.config.socket_path)
        return s


@pytest.fixture
def engine() -> FakeEngine:
    eng = FakeEngine()
    yield eng
    eng.gate.set()  # never leave the inference thread blocked


def frame(obj: dict) -> bytes:
    body = orjson.dumps(obj)
    return struct.pack("<I", len(body)) + body


def read_frame(sock: socket.socket) -> dict | None:
    """One reply, or None if the daemon closed the connection first."""
    head = _read_exact(sock, 4)
    if head is None:
        return None
    body = _read_exact(sock, struct.unpack("<I", head)[0])
    return None if body is None else orjson.loads(body)


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def seg(seed: int, rid: str) -> dict:
    img = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return {"requestId": rid, "width": 8, "height": 6,
            "imageBase64": base64.b64encode(encode_png(img)).decode()}


def wait_until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def hold_one_running(srv: ServerThread, engine: FakeEngine, seed: int = 1) -> socket.socket:
    """A connection whose segment request is running, held in the engine by its gate."""
    engine.gate.clear()
    engine.started.clear()
    conn = srv.connect()
    conn.sendall(frame(seg(seed, "running")))
    assert engine.started.wait(5)
    return conn


def is_mask_reply(reply: dict, rid: str) -> bool:
    return reply["requestId"] == rid and "error" not in reply and reply["maskWidth"] == 8


def test_busy_beyond_max_queue_is_immediate_and_the_others_are_served(engine):
    srv = ServerThread(engine, max_queue=1)
    try:
        running = hold_one_running(srv, engine)
        queued = srv.connect()
        queued.sendall(frame(seg(2, "queued")))
        wait_until(lambda: srv.waiting() == 1)
        extra = srv.connect()
        t0 = time.perf_counter()
        extra.sendall(frame(seg(3, "extra")))
        reply = read_frame(extra)
        assert time.perf_counter() - t0 < 1.0
        assert reply["code"] == "busy" and reply["requestId"] == "extra"
        assert "max queue 1" in reply["error"] and reply["maskBase64"] == ""
        engine.gate.set()
        assert is_mask_reply(read_frame(running), "running")
        assert is_mask_reply(read_frame(queued), "queued")
        extra.sendall(frame(seg(3, "again")))  # room again: served
        assert is_mask_reply(read_frame(extra), "again")
    finally:
        srv.stop()


def test_request_timeout_answers_timeout_and_keeps_serving(engine):
    srv = ServerThread(engine, request_timeout=0.3)
    try:
        conn = hold_one_running(srv, engine)
        t0 = time.perf_counter()
        reply = read_frame(conn)
        assert 0.25 < time.perf_counter() - t0 < 2.0
        assert reply["code"] == "timeout" and reply["requestId"] == "running"
        engine.gate.set()
        conn.sendall(frame({"op": "ping", "requestId": "p"}))
        assert read_frame(conn) == {"requestId": "p", "ok": True}
        conn.sendall(frame(seg(1, "same-image")))
        reply = read_frame(conn)
        assert is_mask_reply(reply, "same-image")
        assert reply["cached"] is True  # the timed-out job ran to its end and was kept
    finally:
        srv.stop()


def test_hang_up_while_queued_drops_the_job(engine, caplog):
    caplog.set_level(logging.INFO, logger="sam2_service")
    srv = ServerThread(engine)
    try:
        running = hold_one_running(srv, engine)
        gone = srv.connect()
        gone.sendall(frame(seg(2, "gone")))
        wait_until(lambda: srv.waiting() == 1)
        gone.close()
        wait_until(lambda: srv.waiting() == 0)
        engine.gate.set()
        assert is_mask_reply(read_frame(running), "running")
        running.sendall(frame(seg(4, "after")))
        assert is_mask_reply(read_frame(running), "after")
        assert engine.embeds == 2  # seeds 1 and 4; the hung-up request never ran
        assert "Client disconnected; request dropped" in caplog.text
    finally:
        srv.stop()


def test_hang_up_while_running_finishes_and_discards(engine, caplog):
    caplog.set_level(logging.INFO, logger="sam2_service")
    srv = ServerThread(engine)
    try:
        conn = hold_one_running(srv, engine)
        conn.close()
        wait_until(lambda: "Client disconnected" in caplog.text)
        engine.gate.set()
        other = srv.connect()
        other.sendall(frame(seg(1, "next")))
        reply = read_frame(other)
        assert is_mask_reply(reply, "next") and reply["cached"] is True
    finally:
        srv.stop()


def test_half_close_still_gets_its_reply(engine):
    srv = ServerThread(engine)
    try:
        conn = srv.connect()
        conn.sendall(frame(seg(5, "half")))
        conn.shutdown(socket.SHUT_WR)
        assert is_mask_reply(read_frame(conn), "half")
        assert read_frame(conn) is None  # then closed
    finally:
        srv.stop()


def test_idle_and_partial_frame_connections_are_closed_others_are_not(engine):
    srv = ServerThread(engine, idle_timeout=0.4)
    try:
        idle, partial, busy = srv.connect(), srv.connect(), srv.connect()
        partial.sendall(struct.pack("<I", 100) + b'{"op":')
        t0 = time.perf_counter()
        for i in range(10):  # a client that keeps talking stays connected
            busy.sendall(frame({"op": "ping", "requestId": f"p{i}"}))
            assert read_frame(busy)["requestId"] == f"p{i}"
            time.sleep(0.1)
            if i == 2:  # slowloris: trickling bytes does not extend the deadline
                partial.sendall(b'"')
        assert read_frame(idle) is None and read_frame(partial) is None
        assert time.perf_counter() - t0 < 3.0
        busy.sendall(frame({"op": "ping", "requestId": "last"}))
        assert read_frame(busy)["requestId"] == "last"
    finally:
        srv.stop()


def test_shutdown_answers_running_and_refuses_queued_and_buffered(engine):
    srv = ServerThread(engine, shutdown_timeout=10)
    running = hold_one_running(srv, engine)
    queued = srv.connect()
    queued.sendall(frame(seg(2, "queued")) + frame(seg(3, "buffered")))
    wait_until(lambda: srv.waiting() == 1)
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    first, second = read_frame(queued), read_frame(queued)
    assert (first["requestId"], first["code"]) == ("queued", "shutting_down")
    assert (second["requestId"], second["code"]) == ("buffered", "shutting_down")
    time.sleep(0.2)
    engine.gate.set()
    assert is_mask_reply(read_frame(running), "running")
    stopper.join(15)
    assert not srv.thread.is_alive()
    assert not os.path.exists(srv.config.socket_path)
    assert engine.embeds == 1


def test_out_of_memory_reply_then_serving_resumes(engine):
    srv = ServerThread(engine)
    try:
        conn = srv.connect()
        engine.fail_with = FakeOOM("CUDA out of memory. Tried to allocate 20.00 GiB")
        conn.sendall(frame(seg(6, "oom")))
        reply = read_frame(conn)
        assert reply["code"] == "out_of_memory" and reply["requestId"] == "oom"
        assert engine.freed == 1
        engine.fail_with = None
        conn.sendall(frame(seg(6, "retry")))
        assert is_mask_reply(read_frame(conn), "retry")
    finally:
        srv.stop()


def test_info_reports_cache_queue_and_limits(engine):
    srv = ServerThread(engine, max_queue=3, cache_bytes=2**20)
    try:
        conn = srv.connect()
        conn.sendall(frame(seg(7, "a")) + frame(seg(7, "b")) + frame({"op": "info"}))
        read_frame(conn), read_frame(conn)
        info = read_frame(conn)
        assert info["cache"] == {"capacityBytes": 2**20, "bytes": 144, "entries": 1, "hits": 1,
                                 "misses": 1, "evictions": 0}
        assert info["queue"] == {"waiting": 0, "maxQueue": 3}
        assert info["limits"]["requestTimeout"] == 60.0
    finally:
        srv.stop()


# --- peer credentials -----------------------------------------------------------------------


def test_peer_uid_of_a_socketpair_is_our_own():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_uid(a) == os.geteuid()


@pytest.mark.parametrize("uid, own, ok", [(1000, 1000, True), (0, 1000, True),
                                          (1001, 1000, False), (None, 1000, True)])
def test_peer_allowed(uid, own, ok):
    assert peer_allowed(uid, own) is ok


def connect_as(uid: int, path: str) -> bytes:
    """Fork; the child drops to ``uid``, sends a ping to ``path`` and reports what it read
    (b"" when the daemon closed or reset the connection). The interpreter's own file may not
    be executable by that user, so no exec."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on
        try:
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(path)
            s.sendall(frame({"op": "ping"}))
            os.write(w, b"ok:" + s.recv(100))
        except (ConnectionResetError, BrokenPipeError):  # closed before or after our ping
            os.write(w, b"ok:")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(w, f"error:{exc!r}".encode())
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 1024):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    assert out.startswith(b"ok:"), out
    return out[3:]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_another_user_is_refused_even_if_the_socket_mode_lets_them_in(engine, caplog):
    caplog.set_level(logging.INFO, logger="sam2_service")
    srv = ServerThread(engine)
    try:
        os.chmod(srv.dir, 0o755)
        os.chmod(srv.config.socket_path, 0o666)  # a mistake the uid check must still catch
        assert connect_as(65534, srv.config.socket_path) == b""  # closed, no answer
        assert "Refused connection from another user" in caplog.text
        mine = srv.connect()
        mine.sendall(frame({"op": "ping", "requestId": "me"}))
        assert read_frame(mine) == {"requestId": "me", "ok": True}
    finally:
        srv.stop()


# --- systemd watchdog -------------------------------------------------------------------------


def test_watchdog_pings_stop_while_the_inference_thread_hangs(engine, monkeypatch):
    tmp = Path(short_tmp_socket_dir())
    notify_path = str(tmp / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s; stuck after 0.4 s

    def pings(seconds: float) -> list[str]:
        out, until = [], time.monotonic() + seconds
        while time.monotonic() < until:
            try:
                out.append(listener.recv(100).decode())
            except socket.timeout:
                pass
        return out

    srv = ServerThread(engine)
    try:
        assert pings(0.1)[0].startswith("READY=1")
        assert pings(0.6).count("WATCHDOG=1") >= 2
        conn = hold_one_running(srv, engine)
        pings(0.5)  # the job becomes "stuck" once it has run longer than the interval
        assert pings(1.0).count("WATCHDOG=1") == 0
        engine.gate.set()
        assert is_mask_reply(read_frame(conn), "running")
        assert pings(0.6).count("WATCHDOG=1") >= 2
    finally:
        srv.stop()
        listener.close()
